"""The invoice lifecycle as the issuer shows it: states, allowed moves, and what each means."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["InvalidTransition", "Status", "can_move", "describe", "move"]


class Status(StrEnum):
    ACCEPTED = "accepted"        # stored here with its event in the outbox
    PUBLISHED = "published"      # the event is on Kafka
    SUBMITTED = "submitted"      # the authority acknowledged it (receipt number)
    CONFIRMED = "confirmed"      # seen visible and identical at the authority
    RETRYING = "retrying"        # a submission attempt failed; another is scheduled
    REJECTED = "rejected"        # the authority refused it, with its reason
    STUCK = "stuck"              # past the SLA: a case is open and the tenant alerted
    VOIDED = "voided"            # discarded by the tenant before the authority accepted it
    RED_LETTERED = "red_lettered"  # cancelled by a credit note


_MOVES: dict[Status, frozenset[Status]] = {
    # A sync result can overtake the relay's own "published" bookkeeping: the event was on Kafka regardless.
    Status.ACCEPTED: frozenset({Status.PUBLISHED, Status.SUBMITTED, Status.RETRYING, Status.REJECTED}),
    Status.PUBLISHED: frozenset({Status.SUBMITTED, Status.RETRYING, Status.REJECTED, Status.STUCK,
                                 Status.CONFIRMED}),
    Status.RETRYING: frozenset({Status.RETRYING, Status.SUBMITTED, Status.REJECTED, Status.STUCK,
                                Status.CONFIRMED}),
    Status.SUBMITTED: frozenset({Status.SUBMITTED, Status.CONFIRMED, Status.RETRYING, Status.STUCK}),
    Status.CONFIRMED: frozenset({Status.RETRYING, Status.STUCK, Status.RED_LETTERED}),
    Status.REJECTED: frozenset({Status.VOIDED}),
    # Only the reconciler seeing it visible (or the seller voiding it) ends "stuck": a later sync result
    # ("acknowledged", "attempt failed") is no proof the authority shows it, so the case stays in front.
    Status.STUCK: frozenset({Status.CONFIRMED, Status.VOIDED}),
    Status.VOIDED: frozenset(),
    Status.RED_LETTERED: frozenset(),
}

VOIDABLE = frozenset({Status.REJECTED, Status.STUCK})

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
}


class InvalidTransition(ValueError):
    def __init__(self, current: Status, wanted: Status) -> None:
        super().__init__(f"an invoice in status '{current}' cannot become '{wanted}'")
        self.current, self.wanted = current, wanted


def can_move(current: Status, wanted: Status) -> bool:
    return wanted in _MOVES[current]


def move(current: Status, wanted: Status) -> Status:
    if not can_move(current, wanted):
        raise InvalidTransition(current, wanted)
    return wanted


def describe(status: Status) -> tuple[str, str | None]:
    """(reason, next action) shown for a status when no more specific explanation is recorded."""
    return _MEANING[status]
