"""The CloudEvents 1.0 envelope every event travels in (structured JSON mode)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.events import EVENT_TYPES, Event, PayloadError, parse_payload

__all__ = ["CONTENT_TYPE", "Envelope", "EnvelopeError", "PayloadError", "Received", "UnknownEventType", "decode",
           "decode_event", "encode", "new_envelope"]

CONTENT_TYPE = "application/cloudevents+json; charset=utf-8"


class EnvelopeError(ValueError):
    """The bytes on the topic are not a valid envelope: dead-letter them."""


class UnknownEventType(EnvelopeError):
    """A valid envelope of a type no model (or no consumer of this topic) knows: dead-letter it."""


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


def new_envelope(*, source: str, subject: str, tenant: str, sequence: int, event: Event | None = None,
                 type: str | None = None, data: dict[str, Any] | None = None, id: str | None = None,
                 time: datetime | None = None) -> Envelope:
    """The envelope of `event` (its type and payload from the model; fields the producer left unset stay off
    the wire). `type` and `data` instead: an envelope of any shape, for tests and tools."""
    if event is not None:
        if type is not None or data is not None:
            raise ValueError("give either event, or type and data")
        type, data = event.TYPE, event.model_dump(mode="json", exclude_unset=True)
    if type is None or data is None:
        raise ValueError("an envelope needs an event (or a type and data)")
    return Envelope(id=id or str(uuid.uuid4()), source=source, type=type, subject=subject, tenant=tenant,
                    sequence=sequence, data=data, time=time or datetime.now(UTC))


def decode_event(envelope: Envelope, models: dict[str, type[Event]] | None = None) -> Event:
    """The envelope's payload as its type's model (from `models`, by default every type there is).
    UnknownEventType for a type not among them; PayloadError (field named) for a payload that does not fit."""
    model = (EVENT_TYPES if models is None else models).get(envelope.type)
    if model is None:
        raise UnknownEventType(f"unknown event type {envelope.type!r}")
    return parse_payload(model, envelope.data, subject=envelope.subject, tenant=envelope.tenant)



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


E = TypeVar("E", bound=Event)


@dataclass(frozen=True)
class Received(Generic[E]):
    """One event as a handler gets it: the typed payload, its envelope (id, subject, sequence, ...) and the Kafka
    record it came in (None when handed over directly, as tests do)."""

    event: E
    envelope: Envelope
    record: Any = None

    @classmethod
    def of(cls, envelope: Envelope, record: Any = None) -> Received[Any]:
        """The envelope with its payload decoded by its type (shared.events.EVENT_TYPES)."""
        return Received(decode_event(envelope), envelope, record)
