"""Operator endpoints of the sync service (admin token): where the pipeline stands, and one submission's
full story (every attempt, with status and latency)."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Depends, Request

from services.sync import service
from shared.db import transaction
from shared.errors import NotFound
from shared.http import require_admin

router = APIRouter(prefix="/admin", tags=["operations"], dependencies=[Depends(require_admin)])


@router.get("/status")
async def status(request: Request) -> dict[str, Any]:
    """Submissions by status, the circuit to the tax store, and whether the consumer is paused."""
    st = request.app.state
    async with transaction(st.sessions) as session:
        counts = await service.counts(session=session)
    syncer = st.syncer
    breaker = syncer.breaker if syncer else None
    return {
        "submissions": counts,
        "taxstore_url": st.settings.taxstore_url,
        "circuit": None if breaker is None else {
            "state": breaker.state.value, "consecutive_failures": breaker.failures, "probes": breaker.probes,
            "early_probes": breaker.early_probes,
            "retry_in_seconds": round(breaker.wait_time(), 3), "last_error": breaker.last_error,
        },
        "consumer_paused": bool(syncer and syncer.paused),
    }


@router.get("/submissions/{invoice_id}")
async def submission(invoice_id: str, request: Request) -> dict[str, Any]:
    try:
        iid = uuid.UUID(invoice_id)
    except ValueError:
        raise NotFound(f"no submission for invoice {invoice_id}") from None
    async with transaction(request.app.state.sessions) as session:
        found = await service.get_submission(session=session, invoice_id=iid)
    if found is None:
        raise NotFound(f"no submission for invoice {invoice_id}")
    return found
