"""The reconciler's admin routes the issuer calls: cases (open, read, list), the ledger the issuer's status
self-check compares with (lookup, open rows, restate). The reconciler answers in these models; the issuer
reads the answers with them, so an answer that is not the contract is seen as such, in one place."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from shared.contracts.cases import CaseNo, CaseStatus
from shared.uscc import USCC_PATTERN
from shared.validators import CLEAN_TEXT

__all__ = ["LEDGER_BATCH_MAX", "CaseDetail", "CaseEntry", "CaseList", "CaseOpen", "CaseView", "LedgerEntries",
           "LedgerEntry", "LedgerIds", "LedgerPage", "Restated"]

LEDGER_BATCH_MAX = 1000


class CaseOpen(BaseModel):
    """The issuer opens a case for its tenant's invoice (or gets the open one); the reconciler checks now."""

    model_config = ConfigDict(extra="forbid")
    invoice_id: uuid.UUID
    tenant_id: uuid.UUID
    seller_tax_id: str = Field(pattern=USCC_PATTERN)
    number: str = Field(pattern=r"^[0-9]{20}$")
    note: Annotated[str, StringConstraints(max_length=500), CLEAN_TEXT] | None = None


class _Answer(BaseModel):
    # An answer the reader did not expect a field of is still the contract (the reconciler may add one).
    model_config = ConfigDict(extra="ignore", frozen=True)


class CaseView(_Answer):
    """A case as the reconciler sees it, with its invoice's place in the ledger. Times are ISO 8601."""

    case_no: CaseNo
    status: CaseStatus
    opened_by: str
    opened_at: str | None = None
    resolved_at: str | None = None
    resolution: str | None = None
    note: str | None = None
    invoice_id: uuid.UUID
    tenant_id: uuid.UUID
    seller_tax_id: str
    number: str
    invoice_state: str
    gap_kind: str | None = None
    receipt_no: str | None = None
    resyncs: int = 0
    next_check_at: str | None = None
    last_error: str | None = None


class CaseEntry(_Answer):
    """One step of a case's history."""

    at: str
    kind: str
    message: str
    detail: dict[str, Any] | None = None


class CaseDetail(CaseView):
    history: list[CaseEntry] = []


class CaseList(_Answer):
    items: list[CaseView]


class LedgerIds(BaseModel):
    model_config = ConfigDict(extra="forbid")
    invoice_ids: list[uuid.UUID] = Field(max_length=LEDGER_BATCH_MAX)


class LedgerEntry(_Answer):
    """One invoice in the ledger: its state, the last event sequence the reconciler sent the issuer about it
    (`recon_seq`), the last sync result it took in (`sync_seq`), its live schedule and its case."""

    invoice_id: uuid.UUID
    state: str
    recon_seq: int
    sync_seq: int
    next_check_at: str | None = None
    last_resync_at: str | None = None
    case_no: CaseNo | None = None

    @property
    def schedule(self) -> dict[str, str | None]:
        """The live schedule, in the keys of the reconciler's findings (the issuer's explain.py merges it)."""
        return {"next_check_at": self.next_check_at, "resync_at": self.last_resync_at}


class LedgerEntries(_Answer):
    items: list[LedgerEntry]


class LedgerPage(_Answer):
    """A page of the rows not confirmed yet, in id order; `next_after` is the `after` of the next page."""

    items: list[LedgerEntry]
    next_after: uuid.UUID | None


class Restated(_Answer):
    """The findings sent again, counted by ledger state."""

    restated: dict[str, int]
