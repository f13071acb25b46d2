"""What one transaction of the reconciler reads and writes besides its queries: the ledger rows it locks and
saves, and everything else it adds (`Writes`): events through the outbox (findings for the issuer, resync
commands for the sync service, alerts for the notifier) and case history.

Every state change and the events announcing it are written in the caller's transaction: a crash either keeps
all of it or none. Alert ids are derived from (invoice, transition, case), so even a re-sent alert is
recognisably the same one. Callers own the transaction; nothing here commits.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import ValidationError
from sqlalchemy import bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.reconciler import models as m
from shared.envelope import Envelope, encode, new_envelope
from shared.events import RECONCILER_SOURCE, AlertRaised, Event, ReconciliationEvent, ResyncRequested
from shared.outbox import notify_outbox
from shared.topics import ALERTS, RECONCILIATION, RESYNC_REQUESTS

__all__ = ["ALERT_NS", "Row", "Topics", "Writes", "iso", "jsonable", "lock", "save"]

log = logging.getLogger(__name__)

ALERT_NS = uuid.UUID("6f1c1f7e-5d0b-4c35-9a57-2f3f0c6a9b11")
_MUTABLE = (
    "state", "gap_kind", "reopened", "since", "acked_at", "receipt_no", "confirmed_at", "checks", "announced_ack_at",
    "resyncs", "last_resync_at", "held", "duplicate_acks", "sync_state", "last_error", "next_check_at",
    "check_requested_by", "last_checked_at", "stuck_at", "case_no", "sync_seq", "recon_seq", "review_since",
    "review_due_at", "review_overdue_at",
)


@dataclass(frozen=True)
class Topics:
    reconciliation: str
    resync: str
    alerts: str

    @classmethod
    def of(cls, prefix: str) -> Topics:
        return cls(RECONCILIATION.qualified(prefix), RESYNC_REQUESTS.qualified(prefix), ALERTS.qualified(prefix))


class Writes:
    """Everything one transaction will add besides the ledger updates: outbox rows and case history."""

    def __init__(self, topics: Topics) -> None:
        self.topics = topics
        self.outbox: list[dict[str, Any]] = []
        self.history: list[dict[str, Any]] = []

    def event(self, state: dict[str, Any], model: type[ReconciliationEvent], data: dict[str, Any]) -> None:
        """An event about one invoice for the issuer, numbered by the invoice's own reconciler sequence."""
        state["recon_seq"] += 1
        payload = jsonable({
            "invoice_id": state["invoice_id"], "seller_tax_id": state["seller_tax_id"], "number": state["number"],
            **data,
            # What the issuer derives its status from: the finding as of this event, and the sync results it
            # already took into account.
            "ledger_state": state["state"], "sync_seq": state["sync_seq"]})
        env = _envelope(model, payload, subject=str(state["invoice_id"]), tenant=str(state["tenant_id"]),
                        sequence=state["recon_seq"])
        self._add(self.topics.reconciliation, str(state["invoice_id"]), env)

    def resync(self, state: dict[str, Any], reason: str, *,
               by: Literal["reconciler", "operator"] = "reconciler") -> None:
        event = ResyncRequested(invoice_id=state["invoice_id"], seller_tax_id=state["seller_tax_id"],
                                number=state["number"], reason=reason, requested_by=by, resync=state["resyncs"])
        env = new_envelope(source=RECONCILER_SOURCE, event=event, subject=str(state["invoice_id"]),
                           tenant=str(state["tenant_id"]), sequence=max(1, state["resyncs"]))
        self._add(self.topics.resync, str(state["invoice_id"]), env)

    def alert(self, state: dict[str, Any], model: type[AlertRaised], kind: str, *, reason: str,
              next_action: str | None, case_no: str | None, now: datetime) -> str:
        """One alert about an invoice; its id names the transition, so it is the same id if ever re-sent."""
        alert_id = str(uuid.uuid5(ALERT_NS, f"{kind}:{state['invoice_id']}:{case_no or ''}"))
        self.raw_alert(model, alert_id, subject=str(state["invoice_id"]), tenant=str(state["tenant_id"]), data={
            "kind": kind, "tenant_id": str(state["tenant_id"]), "seller_tax_id": state["seller_tax_id"],
            "invoice_id": str(state["invoice_id"]), "number": state["number"],
            "issue_date": state.get("issue_date"), "total": state.get("total"), "buyer_name": state.get("buyer_name"),
            "buyer_tax_id": state.get("buyer_tax_id"), "reason": reason, "next_action": next_action,
            "case_no": case_no, "at": now})
        return alert_id

    def raw_alert(self, model: type[AlertRaised], alert_id: str, *, subject: str, tenant: str,
                  data: dict[str, Any]) -> None:
        """One alert for the notifier, keyed by `subject`; `data` is its payload but for the id."""
        env = _envelope(model, jsonable({"alert_id": alert_id, **data}), id=alert_id, subject=subject, tenant=tenant,
                        sequence=1)
        self._add(self.topics.alerts, subject, env)

    def note(self, case_no: str | None, kind: str, message: str, at: datetime, **detail: Any) -> None:
        if case_no:
            self.history.append({"case_no": case_no, "kind": kind, "message": message, "at": at,
                                 "detail": jsonable(detail) or None})

    def _add(self, topic: str, key: str, env: Envelope) -> None:
        self.outbox.append({"topic": topic, "key": key, "event_id": env.id, "event_type": env.type,
                            "payload": encode(env)})

    async def flush(self, session: AsyncSession) -> None:
        if self.history:
            await session.execute(m.case_history.insert(), self.history)
        if self.outbox:
            await session.execute(m.outbox.insert(), self.outbox)
            await notify_outbox(session, m.outbox)


def _envelope(model: type[Event], data: dict[str, Any], **envelope: Any) -> Envelope:
    """The event as `model`. Text from outside (the store's errors, the invoice's words) that the consumers would
    refuse is sent as it is all the same, for them to dead-letter: it must not hold up this transaction."""
    try:
        return new_envelope(source=RECONCILER_SOURCE, event=model.model_validate(data), **envelope)
    except ValidationError as exc:
        log.error("sending a %s payload its consumers will refuse: %s", model.TYPE, exc.errors()[0])
        return new_envelope(source=RECONCILER_SOURCE, type=model.TYPE, data=data, **envelope)


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return f"{value:.2f}"
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


async def lock(session: AsyncSession, ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, dict[str, Any]]:
    """The ledger rows, locked, as mutable dicts (always in id order: no deadlocks between the doors)."""
    ids = sorted(set(ids))
    if not ids:
        return {}
    rows = (await session.execute(
        select(m.ledger).where(m.ledger.c.invoice_id.in_(ids)).order_by(m.ledger.c.invoice_id).with_for_update()
    )).all()
    return {r.invoice_id: dict(r._mapping) for r in rows}


_SAVE = update(m.ledger).where(m.ledger.c.invoice_id == bindparam("b_invoice_id")).values(
    {c: bindparam(f"b_{c}") for c in _MUTABLE} | {"updated_at": func.now()})


async def save(session: AsyncSession, states: Iterable[dict[str, Any]]) -> None:
    params = [{f"b_{c}": s[c] for c in ("invoice_id", *_MUTABLE)} for s in states]
    if params:
        await session.execute(_SAVE, params)


class Row:
    """Attribute access over a ledger dict, for the pure rules."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
