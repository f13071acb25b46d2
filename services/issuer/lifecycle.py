"""The invoice lifecycle as the issuer shows it: what each status means, and which fact decides it.

The status is not moved step by step by whichever event arrives last. It is derived, every time a fact
arrives, from the three registers the issuer keeps per invoice:

- its own word (`accepted`, `published`, and the final `voided` / `red_lettered`);
- the sync service's latest result (`submitted`, `retrying`, `rejected`), numbered by the sync sequence;
- the reconciler's latest finding (`confirmed`, `stuck`, `retrying` for a gap, `submitted` while it waits
  for visibility, `under_review` while the tax bureau holds a cross-region invoice, `review_denied` once it
  refused it), together with the sync sequence the reconciler had seen when it found it.

The rules, first match wins:

1. a final status of the issuer's own (voided, red-lettered) stays;
2. the reconciler's `confirmed` and `review_denied` stand until the reconciler itself says otherwise (a sweep
   or a check reopening it): no sync result, however late, is proof that the authority changed its mind, and
   `under_review` stands against a sync result the reconciler had seen (an acknowledgement is no approval);
3. a `rejected` from the authority that the reconciler had not seen ends a `stuck` case;
4. otherwise `stuck` stands until the reconciler confirms it (or the seller voids it);
5. a sync result newer than the reconciler's latest finding (the reconciler had not seen it) decides;
6. otherwise the finding decides, and sync results it had already seen are history;
7. with neither, the issuer's own word.

`derive` is pure and total, so a property test can check it over every interleaving of facts.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from shared.events import (
    INVOICE_AWAITING_VISIBILITY,
    INVOICE_CONFIRMED,
    INVOICE_GAP_FOUND,
    INVOICE_REJECTED,
    INVOICE_STUCK,
    INVOICE_SUBMISSION_FAILED,
    INVOICE_SUBMITTED,
)

__all__ = ["FINAL", "SETTLED", "VOIDABLE", "Facts", "Source", "Status", "derive", "describe", "finding_of",
           "sync_status_of"]


class Status(StrEnum):
    ACCEPTED = "accepted"        # stored here with its event in the outbox
    PUBLISHED = "published"      # the event is on Kafka
    SUBMITTED = "submitted"      # the authority acknowledged it (receipt number)
    CONFIRMED = "confirmed"      # seen visible and identical at the authority
    RETRYING = "retrying"        # a submission attempt failed, or the reconciler found a gap; more is scheduled
    REJECTED = "rejected"        # the authority refused it, with its reason
    STUCK = "stuck"              # past the SLA: a case is open and the tenant alerted
    VOIDED = "voided"            # discarded by the tenant before the authority accepted it
    RED_LETTERED = "red_lettered"  # cancelled by a credit note
    UNDER_REVIEW = "under_review"  # held by the tax bureau for cross-region review (跨区域审核)
    REVIEW_DENIED = "review_denied"  # the bureau denied it in review: it does not count


Source = Literal["own", "sync", "reconciler"]

FINAL = frozenset({Status.VOIDED, Status.RED_LETTERED})
"""Statuses no later fact changes."""

SETTLED = frozenset({Status.CONFIRMED, Status.VOIDED, Status.RED_LETTERED})
"""Statuses that need nothing more from anyone."""

VOIDABLE = frozenset({Status.REJECTED, Status.STUCK})
"""What the seller may void: what the authority has not accepted."""

_OWN = frozenset({Status.ACCEPTED, Status.PUBLISHED, *FINAL})

# What each sync result type says, and what each reconciler ledger state says (None: nothing about visibility
# yet, so the sync result or the issuer's own word decides).
_SYNC_SAYS = {
    INVOICE_SUBMITTED: Status.SUBMITTED,
    INVOICE_SUBMISSION_FAILED: Status.RETRYING,
    INVOICE_REJECTED: Status.REJECTED,
}
_LEDGER_SAYS: dict[str, Status | None] = {
    "confirmed": Status.CONFIRMED,
    "stuck": Status.STUCK,
    "gap": Status.RETRYING,
    "awaiting": Status.SUBMITTED,
    "pending": None,
    "rejected": None,
    "voided": None,
    "review": Status.UNDER_REVIEW,
    "denied": Status.REVIEW_DENIED,
}
_FINDING_TYPE_SAYS = {
    INVOICE_CONFIRMED: Status.CONFIRMED,
    INVOICE_STUCK: Status.STUCK,
    INVOICE_GAP_FOUND: Status.RETRYING,
    INVOICE_AWAITING_VISIBILITY: Status.SUBMITTED,
}


@dataclass(frozen=True)
class Facts:
    """The latest word from each register about one invoice."""

    own: Status = Status.ACCEPTED            # accepted | published | voided | red_lettered
    sync: Status | None = None               # the latest sync result's status
    sync_seq: int = 0                        # its sequence
    finding: Status | None = None            # the reconciler's latest finding
    finding_sync_seq: int = 0                # the sync sequence the reconciler had seen when it found it

    def __post_init__(self) -> None:
        if self.own not in _OWN:
            raise ValueError(f"'{self.own}' is not the issuer's own word")


def derive(facts: Facts) -> tuple[Status, Source]:
    """(status, which register decides it) — the rules in the module docstring, in order."""
    f = facts
    if f.own in FINAL:
        return f.own, "own"
    if f.finding in (Status.CONFIRMED, Status.REVIEW_DENIED):
        return f.finding, "reconciler"
    unseen = f.sync is not None and f.sync_seq > f.finding_sync_seq
    if f.finding is Status.STUCK:
        if unseen and f.sync is Status.REJECTED:
            return Status.REJECTED, "sync"
        return Status.STUCK, "reconciler"
    if f.sync is not None and (f.finding is None or unseen):
        return f.sync, "sync"
    if f.finding is not None:
        return f.finding, "reconciler"
    return f.own, "own"


def sync_status_of(event_type: str) -> Status:
    """What a sync result says; ValueError for anything that is not one."""
    try:
        return _SYNC_SAYS[event_type]
    except KeyError:
        raise ValueError(f"not a sync result type: {event_type}") from None


def finding_of(event_type: str, ledger_state: str | None) -> tuple[bool, Status | None]:
    """(does this event state a finding, what it is). The reconciler's ledger state, sent with each of its
    events, is the finding; an older event without one says what its type says (a case update, nothing)."""
    if ledger_state is not None:
        if ledger_state not in _LEDGER_SAYS:
            raise ValueError(f"unknown ledger state: {ledger_state}")
        return True, _LEDGER_SAYS[ledger_state]
    if event_type in _FINDING_TYPE_SAYS:
        return True, _FINDING_TYPE_SAYS[event_type]
    return False, None


_MEANING: dict[Status, tuple[str, str | None]] = {
    Status.ACCEPTED: ("Accepted and stored; its event is queued for the event bus.",
                      "Publish to invoice.events.v1 (automatic, normally within a second)."),
    Status.PUBLISHED: ("On the event bus; waiting for the sync service to submit it to the tax authority.",
                       "Submit to the tax authority (automatic)."),
    Status.SUBMITTED: ("Acknowledged by the tax authority; not yet seen visible there.",
                       "Check visibility at the authority (automatic)."),
    Status.CONFIRMED: ("Visible at the tax authority with identical content.", None),
    Status.RETRYING: ("The last submission attempt failed; another is scheduled.", "Resubmit (automatic)."),
    Status.REJECTED: ("The tax authority refused this invoice.", "Correct and issue a new invoice, or void this one."),
    Status.STUCK: ("Not visible at the tax authority past the agreed time; a case is open.",
                   "Follow the case; the system keeps retrying."),
    Status.VOIDED: ("Voided by the seller before the authority accepted it.", None),
    Status.RED_LETTERED: ("Cancelled by a red-letter credit note.", None),
    Status.UNDER_REVIEW: ("Held by the tax bureau for cross-region review; it counts once approved.",
                          "Wait for the bureau's decision (watched automatically; never resubmitted)."),
    Status.REVIEW_DENIED: ("Denied in cross-region review by the tax bureau: it does not count.",
                           "Check the sale with the buyer; issue a corrected invoice if it stands."),
}


def describe(status: Status) -> tuple[str, str | None]:
    """(reason, next action) shown for a status when no more specific explanation is recorded."""
    return _MEANING[status]
