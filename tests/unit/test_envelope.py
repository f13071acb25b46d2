"""The CloudEvents envelope: encode/decode round trip and clean rejection of bad bytes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import orjson
import pytest

from shared.envelope import Envelope, EnvelopeError, decode, encode, new_envelope


def _envelope(**overrides: object) -> Envelope:
    kwargs: dict = {  # type: ignore[type-arg]
        "source": "/fapiao/issuer", "type": "cn.fapiao.invoice.issued.v1", "subject": str(uuid.uuid4()),
        "tenant": str(uuid.uuid4()), "sequence": 1,
        "data": {"number": "26117000000000012345", "total": "226.00", "lines": [{"amount": "200.00"}]},
    }
    kwargs.update(overrides)
    return new_envelope(**kwargs)


def test_round_trip() -> None:
    env = _envelope(time=datetime(2026, 11, 25, 8, 30, 1, 123456, tzinfo=UTC), id="evt-1")
    raw = encode(env)
    assert isinstance(raw, bytes)
    back = decode(raw)
    assert back == env
    assert back.time == env.time
    assert back.data == env.data
    assert back.specversion == "1.0"
    assert back.datacontenttype == "application/json"


def test_new_envelope_fills_id_and_time() -> None:
    a, b = _envelope(), _envelope()
    assert a.id != b.id
    uuid.UUID(a.id)
    assert a.time.tzinfo is not None
    assert abs((datetime.now(UTC) - a.time).total_seconds()) < 60


def test_encoded_form_is_structured_cloudevents_json() -> None:
    doc = orjson.loads(encode(_envelope()))
    assert {"specversion", "id", "source", "type", "time", "subject", "datacontenttype", "tenant", "sequence",
            "data"} == set(doc)
    assert doc["specversion"] == "1.0"


def test_envelope_is_frozen() -> None:
    env = _envelope()
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises ValidationError for frozen instances
        env.sequence = 2  # type: ignore[misc]


@pytest.mark.parametrize("raw", [b"not json", b"", b"[]", b"{", b"\xff\xfe", b"null"])
def test_decode_rejects_bytes_that_are_not_an_envelope(raw: bytes) -> None:
    with pytest.raises(EnvelopeError, match="not a valid event envelope"):
        decode(raw)


def test_decode_of_none_is_a_tombstone() -> None:
    with pytest.raises(EnvelopeError, match="tombstone"):
        decode(None)


@pytest.mark.parametrize("field", ["subject", "id", "tenant", "sequence", "type", "time", "data", "source"])
def test_decode_rejects_missing_fields_and_names_them(field: str) -> None:
    doc = orjson.loads(encode(_envelope()))
    del doc[field]
    with pytest.raises(EnvelopeError, match=field):
        decode(orjson.dumps(doc))


@pytest.mark.parametrize(("field", "value"), [
    ("specversion", "0.3"), ("type", "cn.fapiao.invoice.issued"), ("sequence", 0), ("subject", ""),
    ("datacontenttype", "text/plain"), ("data", "x"),
])
def test_decode_rejects_bad_values(field: str, value: object) -> None:
    doc = orjson.loads(encode(_envelope()))
    doc[field] = value
    with pytest.raises(EnvelopeError, match=field):
        decode(orjson.dumps(doc))


def test_decode_rejects_unknown_attributes() -> None:
    doc = orjson.loads(encode(_envelope()))
    doc["extra"] = 1
    with pytest.raises(EnvelopeError, match="extra"):
        decode(orjson.dumps(doc))


def test_envelope_error_is_a_value_error() -> None:
    assert issubclass(EnvelopeError, ValueError)
