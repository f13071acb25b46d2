"""An invoice's registers (the sync service's latest word, the reconciler's latest finding) and the status
derived from them (lifecycle.derive), as the feeds read, settle and save them under a row lock."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.issuer import models as m
from services.issuer.explain import explain
from services.issuer.explain import parse_time as explain_time
from services.issuer.lifecycle import FINAL, Facts, Source, Status, derive

__all__ = ["State", "lock_state", "no_move_note", "save_state", "settle"]

State = dict[str, Any]
"""One invoice's registers and status, as locked (`_STATE_COLUMNS`), changed in place."""

_STATE_COLUMNS = ("id", "status", "sync_seq", "recon_seq", "sync_status", "sync_note", "finding_status",
                  "finding_sync_seq", "recon", "receipt_no", "case_no", "reason", "next_action", "next_action_at",
                  "reason_source", "status_since")
_OWN_WORDS = frozenset({Status.ACCEPTED, Status.PUBLISHED, *FINAL})


def _facts(st: State) -> Facts:
    status = Status(st["status"])
    return Facts(own=status if status in _OWN_WORDS else Status.PUBLISHED,
                 sync=Status(st["sync_status"]) if st["sync_status"] else None, sync_seq=st["sync_seq"],
                 finding=Status(st["finding_status"]) if st["finding_status"] else None,
                 finding_sync_seq=st["finding_sync_seq"])


def settle(st: State, now: datetime) -> Source:
    """Derive the status from the registers and let the deciding register explain it (in place)."""
    status, source = derive(_facts(st))
    if status.value != st["status"] or (status is Status.RETRYING and source != st["reason_source"]):
        st["status_since"] = now  # a new stage (a resync after a gap is not the sync retries before it)
    st["status"] = status.value
    if source == "sync":
        note = st["sync_note"] or {}
        st.update(reason=note.get("reason"), next_action=note.get("next_action"),
                  next_action_at=explain_time(note.get("next_action_at")), reason_source="sync")
    elif source == "reconciler":
        # Stored as rendered now for anything reading the row directly; views render it live again.
        reason, nxt, nxt_at = explain(status=status, recon=st["recon"], reason=None, next_action=None,
                                      next_action_at=None, reason_source="reconciler", now=now)
        st.update(reason=reason, next_action=nxt, next_action_at=nxt_at, reason_source="reconciler")
    elif status not in FINAL:  # a final status keeps the words it was given (voided: the seller's reason)
        st.update(reason=None, next_action=None, next_action_at=None, reason_source=None)
    return source


def no_move_note(st: State, source: Source) -> str:
    """Why a fact just recorded did not decide the status."""
    status = Status(st["status"])
    if source == "own":
        return f"recorded; the invoice is {status.value}, which is final"
    if status is Status.CONFIRMED:
        return "recorded; the status stays 'confirmed': the reconciler saw it visible, and only its next " \
               "finding can reopen it"
    if status is Status.STUCK:
        return "recorded; the status stays 'stuck' until the reconciler sees it visible"
    return f"recorded; the status stays '{status.value}': the reconciler's later finding already took this " \
           "result into account"


async def lock_state(session: AsyncSession, ids: set[uuid.UUID]) -> dict[uuid.UUID, State]:
    """These invoices' registers, locked in id order (so two feeds never deadlock); unknown ids are left out."""
    inv = m.invoices
    rows = (await session.execute(
        select(*(inv.c[c] for c in _STATE_COLUMNS)).where(inv.c.id.in_(ids)).order_by(inv.c.id).with_for_update()
    )).all()
    return {r.id: dict(r._mapping) for r in rows}


_SAVE_STATE = update(m.invoices).where(m.invoices.c.id == bindparam("b_id")).values(
    {c: bindparam(f"b_{c}") for c in _STATE_COLUMNS if c != "id"} | {"updated_at": bindparam("b_updated_at")})


async def save_state(session: AsyncSession, states: Sequence[State], now: datetime) -> None:
    if states:
        await session.execute(_SAVE_STATE, [{f"b_{c}": st[c] for c in _STATE_COLUMNS} | {"b_updated_at": now}
                                            for st in states])
