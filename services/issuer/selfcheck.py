"""The status self-check: the issuer's statuses against the reconciler's ledger, repaired when they disagree.

The issuer derives each status from facts (lifecycle.derive), so in a healthy run the two never disagree for
long: only while an event is on its way. Anything else — a fact lost, a row edited by hand, a bug — would
leave an invoice saying something the ledger contradicts, possibly for good (the reconciler has no next
check for a confirmed row). So every `self_check_interval` one issuer replica (an advisory lock decides which):

1. pages through its unsettled invoices (not touched for `self_check_grace`) and looks each up in the ledger;
2. pages through the ledger's open rows and looks each up here (a `confirmed` the ledger has reopened);
3. asks the reconciler to restate its finding for every invoice where the two disagree although the issuer
   has applied every event the reconciler sent about it — the repair travels the normal event path and shows
   on the invoice's timeline — and counts the repair in `fapiao_issuer_status_repairs_total`.

The count is 0 in a healthy run; anything else is worth an alert (ops/prometheus).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx
from prometheus_client import Counter
from pydantic import BaseModel, ValidationError
from sqlalchemy import ColumnElement, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.issuer import models as m
from services.issuer.lifecycle import FINAL, Status
from shared.contracts.reconciler import LEDGER_BATCH_MAX, LedgerEntries, LedgerEntry, LedgerIds, LedgerPage, Restated
from shared.db import transaction
from shared.recovery import cancelled_from_outside

__all__ = ["REPAIRS", "LedgerClient", "LedgerUnavailable", "SelfCheck", "disagrees"]

log = logging.getLogger(__name__)

REPAIRS = Counter(
    "fapiao_issuer_status_repairs_total",
    "Invoices whose status disagreed with the reconciler's ledger and were restated, by both sides' word",
    ["issuer_status", "ledger_state"],
)

_LOCK_KEY = 0x5E1FC4EC  # pg advisory lock: one self-check at a time across issuer replicas
_S = Status
_OPEN = frozenset({_S.ACCEPTED, _S.PUBLISHED, _S.SUBMITTED, _S.RETRYING, _S.REJECTED})
# What the issuer may show while the ledger says this (a rejection the ledger has not seen yet included).
_ALLOWED: dict[str, frozenset[Status]] = {
    "confirmed": frozenset({_S.CONFIRMED}),
    "stuck": frozenset({_S.STUCK, _S.REJECTED}),
    "gap": _OPEN,
    "awaiting": _OPEN,
    "pending": _OPEN,
}


def disagrees(issuer_status: Status | str, ledger_state: str) -> bool:
    """Does the issuer's status contradict the ledger's state? (Rejected and voided rows: never.)"""
    status = Status(issuer_status)
    allowed = _ALLOWED.get(ledger_state)
    return allowed is not None and status not in FINAL and status not in allowed


class LedgerUnavailable(Exception):
    pass


A = TypeVar("A", bound=BaseModel)


class LedgerClient:
    """The reconciler's ledger endpoints (admin token in the client's headers)."""

    BACK_OFF = 10.0  # seconds a read does not ask again for the live schedule after a failure

    def __init__(self, http: httpx.AsyncClient, *, timeout: float) -> None:
        self.http, self.timeout = http, timeout
        self._quiet_until = 0.0

    async def schedule(self, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, dict[str, str | None]]:
        """The live schedule of these invoices for a read (service.Schedule); {} when the reconciler cannot
        say within the timeout — the reader then sees the stored times, worded as overdue once past."""
        if time.monotonic() < self._quiet_until:
            return {}
        try:
            rows = await self.lookup(ids)
        except LedgerUnavailable as exc:
            self._quiet_until = time.monotonic() + self.BACK_OFF
            log.warning("live schedule not available (%s); showing stored times for %.0f s", exc, self.BACK_OFF)
            return {}
        return {iid: r.schedule for iid, r in rows.items()}

    async def _call(self, method: str, path: str, answer: type[A], **kwargs: Any) -> A:
        try:
            r = await self.http.request(method, path, timeout=self.timeout, **kwargs)
            r.raise_for_status()
            return answer.model_validate_json(r.content)
        except (httpx.HTTPError, ValidationError) as exc:
            raise LedgerUnavailable(f"{method} {path}: {type(exc).__name__}") from None

    async def lookup(self, ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, LedgerEntry]:
        body = LedgerIds(invoice_ids=list(ids)).model_dump(mode="json")
        found = await self._call("POST", "/admin/ledger/lookup", LedgerEntries, json=body)
        return {r.invoice_id: r for r in found.items}

    async def open_page(self, after: uuid.UUID | None, limit: int) -> tuple[list[LedgerEntry], uuid.UUID | None]:
        params: dict[str, Any] = {"limit": limit} | ({"after": str(after)} if after else {})
        page = await self._call("GET", "/admin/ledger/open", LedgerPage, params=params)
        return page.items, page.next_after

    async def restate(self, ids: Iterable[uuid.UUID]) -> dict[str, int]:
        wanted, counts = list(ids), dict[str, int]()
        for i in range(0, len(wanted), LEDGER_BATCH_MAX):  # a round may find more than one request may carry
            body = LedgerIds(invoice_ids=wanted[i:i + LEDGER_BATCH_MAX]).model_dump(mode="json")
            answer = await self._call("POST", "/admin/ledger/restate", Restated, json=body)
            for state, n in answer.restated.items():
                counts[state] = counts.get(state, 0) + n
        return counts


@dataclass(frozen=True)
class _Ours:
    status: Status
    recon_seq: int
    updated_at: datetime


async def _ours(session: AsyncSession, ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, _Ours]:
    inv = m.invoices
    rows = (await session.execute(select(inv.c.id, inv.c.status, inv.c.recon_seq, inv.c.updated_at)
                                  .where(inv.c.id.in_(list(ids))))).all()
    return {r.id: _Ours(Status(r.status), r.recon_seq, r.updated_at) for r in rows}


async def _unsettled_page(session: AsyncSession, after: uuid.UUID | None, limit: int) -> list[uuid.UUID]:
    inv = m.invoices
    conds: list[ColumnElement[bool]] = [  # ix_invoices_unsettled
        inv.c.status.in_(("accepted", "published", "submitted", "retrying", "stuck"))]
    if after is not None:
        conds.append(inv.c.id > after)
    return list((await session.execute(select(inv.c.id).where(*conds).order_by(inv.c.id).limit(limit))).scalars())


class SelfCheck:
    def __init__(self, *, sessions: async_sessionmaker[AsyncSession], ledger: LedgerClient, interval: float,
                 grace: float, batch: int, max_pages: int = 200) -> None:
        self.sessions, self.ledger = sessions, ledger
        self.interval, self.grace, self.batch, self.max_pages = interval, grace, batch, max_pages
        self.last_round: dict[str, Any] | None = None

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.round()
            except LedgerUnavailable as exc:
                log.warning("status self-check skipped: the reconciler's ledger is not reachable (%s)", exc)
            except (Exception, asyncio.CancelledError) as exc:
                if isinstance(exc, asyncio.CancelledError) and cancelled_from_outside():
                    raise
                log.exception("status self-check round failed")

    async def round(self) -> dict[str, Any]:
        """One comparison of both sides; returns what it found and repaired."""
        async with transaction(self.sessions) as session:
            if not await session.scalar(text("select pg_try_advisory_xact_lock(:k)"), {"k": _LOCK_KEY}):
                return {"skipped": "another issuer replica is checking"}
            found = await self._compare(session)
        repaired: dict[str, int] = {}
        if found:
            repaired = await self.ledger.restate(found)
            for iid, (ours, theirs) in found.items():
                REPAIRS.labels(issuer_status=ours.value, ledger_state=theirs).inc()
                log.warning("status self-check: invoice %s showed '%s' but the ledger says '%s'; restated",
                            iid, ours.value, theirs)
        self.last_round = {"at": datetime.now(UTC).isoformat(), "disagreed": len(found), "restated": repaired}
        return self.last_round

    async def _compare(self, session: AsyncSession) -> dict[uuid.UUID, tuple[Status, str]]:
        found: dict[uuid.UUID, tuple[Status, str]] = {}
        settled_before = datetime.now(UTC) - timedelta(seconds=self.grace)

        def judge(ours: _Ours | None, theirs: LedgerEntry) -> None:
            # Not while an event is on its way: the issuer has not applied all the reconciler sent, or its row
            # changed a moment ago (a sync result the ledger has not seen yet).
            if ours is None or ours.recon_seq < theirs.recon_seq or ours.updated_at > settled_before:
                return
            if disagrees(ours.status, theirs.state):
                found[theirs.invoice_id] = (ours.status, theirs.state)

        after: uuid.UUID | None = None
        for _ in range(self.max_pages):  # ours, unsettled
            ids = await _unsettled_page(session, after, self.batch)
            if not ids:
                break
            ours = await _ours(session, ids)
            for theirs in (await self.ledger.lookup(ids)).values():
                judge(ours.get(theirs.invoice_id), theirs)
            after = ids[-1]
        after = None
        for _ in range(self.max_pages):  # theirs, open
            rows, after = await self.ledger.open_page(after, self.batch)
            ours = await _ours(session, [r.invoice_id for r in rows])
            for theirs in rows:
                judge(ours.get(theirs.invoice_id), theirs)
            if after is None:
                break
        return found
