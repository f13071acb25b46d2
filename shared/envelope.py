"""The CloudEvents 1.0 envelope every event travels in (structured JSON mode)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = ["CONTENT_TYPE", "Envelope", "EnvelopeError", "decode", "encode", "new_envelope"]

CONTENT_TYPE = "application/cloudevents+json; charset=utf-8"


class EnvelopeError(ValueError):
    """The bytes on the topic are not a valid envelope: dead-letter them."""


class Envelope(BaseModel):
    """CloudEvents attributes plus two extensions: `tenant` and per-invoice `sequence`.

    `type` carries the schema version (`cn.fapiao.invoice.issued.v1`); `subject` is the invoice id,
    which is also the Kafka key, so one invoice's events stay in order on one partition.
    `sequence` increases with every event of one invoice, so a consumer can drop stale ones.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    specversion: Literal["1.0"] = "1.0"
    id: str = Field(min_length=1, max_length=64)
    source: str = Field(min_length=1, max_length=200)
    type: str = Field(pattern=r"^[a-z0-9.\-]+\.v\d+$", max_length=200)
    time: datetime
    subject: str = Field(min_length=1, max_length=64)
    datacontenttype: Literal["application/json"] = "application/json"
    tenant: str = Field(min_length=1, max_length=64)
    sequence: int = Field(ge=1)
    data: dict[str, Any]


def new_envelope(*, source: str, type: str, subject: str, tenant: str, sequence: int, data: dict[str, Any],
                 id: str | None = None, time: datetime | None = None) -> Envelope:
    return Envelope(id=id or str(uuid.uuid4()), source=source, type=type, subject=subject, tenant=tenant,
                    sequence=sequence, data=data, time=time or datetime.now(UTC))


def encode(envelope: Envelope) -> bytes:
    return orjson.dumps(envelope.model_dump(mode="json"))


def decode(raw: bytes | None) -> Envelope:
    if raw is None:
        raise EnvelopeError("empty message (tombstone) where an event was expected")
    try:
        return Envelope.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "(root)"
        raise EnvelopeError(f"not a valid event envelope: {where}: {first.get('msg')}") from exc
