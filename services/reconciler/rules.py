"""What the reconciler decides about one invoice, as pure functions of its ledger row, what the tax store
showed and the clock. No I/O here: ledger.py applies the decisions, the tests pin them down.

The episode clock: an invoice has `stuck_after` from its issue (or from the moment a confirmed invoice was
found missing again) to become visible and identical at the authority. Within that time the reconciler
checks, waits out the visibility SLA after each acknowledgement, and requests resyncs (补录) with backoff.
Past it — or after `stuck_after_resyncs` resyncs that did not help — the invoice is stuck: a case, an alert.
Stuck invoices are still checked and resynced (at a slower pace) until they appear.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from shared.backoff import backoff
from shared.events import InvoiceRejected, InvoiceSubmissionFailed, InvoiceSubmitted, SyncResult

__all__ = ["Decision", "FormDecision", "Policy", "Seen", "decide", "decide_form", "human_duration", "resync_delay"]

UNCONFIRMED = frozenset({"pending", "awaiting", "gap", "stuck"})


@dataclass(frozen=True)
class Policy:
    visibility_sla: float
    first_check_after: float
    stuck_after: float
    stuck_after_resyncs: int
    resync_base: float
    resync_cap: float
    stuck_recheck: float
    review_sla: float = 2 * 86_400  # a cross-region review longer than this is overdue (alerted once)

    @classmethod
    def of(cls, settings: Any) -> Policy:
        return cls(settings.visibility_sla, settings.first_check_after, settings.stuck_after,
                   settings.stuck_after_resyncs, settings.resync_base, settings.resync_cap, settings.stuck_recheck,
                   settings.review_sla)


@dataclass(frozen=True)
class Seen:
    """What the tax store showed for one invoice."""

    kind: Literal["visible", "absent", "unreachable"]
    content_hash: str | None = None
    receipt_no: str | None = None
    error: str | None = None
    review_status: str | None = None  # under_review | approved | denied (cross-region review), None: none
    review_due_at: datetime | None = None
    retry_in: float = 0.0  # unreachable: seconds until the checker asks the store again (its back-off after failures)


@dataclass
class Decision:
    changes: dict[str, Any] = field(default_factory=dict)  # ledger columns to set
    confirm: bool = False
    recovered: bool = False  # confirmed after having been stuck
    resync: bool = False
    gap_event: bool = False  # tell the issuer: a gap (new, changed kind, or a new resync)
    announce: bool = False  # tell the issuer: acknowledged, awaiting visibility
    escalate: bool = False  # becomes stuck now
    stuck_reason: str | None = None
    review: bool = False  # tell the issuer: held for review now (or denied)
    review_overdue: bool = False  # held longer than the review SLA: alert once
    note: str = ""  # one line for the case history: what the check saw and what follows


def resync_delay(n: int, *, policy: Policy, rng: random.Random | None = None) -> float:
    """Least time after resync n before resync n+1: doubling from resync_base, capped, with equal jitter."""
    return backoff(n - 1, base=policy.resync_base, cap=policy.resync_cap, jitter="equal", rng=rng)


def human_duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 120:
        return f"{seconds:.1f} s" if seconds < 10 and seconds != int(seconds) else f"{s} s"
    if s < 7200:
        return f"{s // 60} min" + (f" {s % 60} s" if s % 60 and s < 600 else "")
    if s < 172_800:
        return f"{s // 3600} h" + (f" {(s % 3600) // 60} min" if (s % 3600) // 60 else "")
    return f"{s // 86400} d"


def _clock_start(row: Any) -> datetime:
    return row.since or row.accepted_at


def decide(row: Any, seen: Seen, now: datetime, policy: Policy, rng: random.Random | None = None) -> Decision:
    """The outcome of one check of one invoice (unconfirmed, or confirmed and checked again)."""
    p = policy
    d = Decision(changes={"last_checked_at": now, "checks": row.checks + 1, "check_requested_by": None})
    if row.content_hash is None or row.accepted_at is None:
        d.changes["next_check_at"] = now + timedelta(seconds=max(p.first_check_after, 5))
        d.note = "Not checked yet: the issued invoice has not reached the reconciler."
        return d

    if seen.kind == "visible" and seen.content_hash == row.content_hash and seen.review_status in (
            "under_review", "denied"):
        return _reviewed(row, seen, now, p, d)
    if seen.kind == "visible" and seen.content_hash == row.content_hash:
        d.confirm = True
        d.recovered = row.state == "stuck"
        d.changes.update(state="confirmed", confirmed_at=now, receipt_no=seen.receipt_no or row.receipt_no,
                         gap_kind=None, next_check_at=None, held=False, stuck_at=None, last_error=None)
        d.note = f"Visible at the tax authority with identical content (receipt {seen.receipt_no})."
        return d

    state, resyncs, last_resync_at, since = row.state, row.resyncs, row.last_resync_at, row.since or row.accepted_at
    reopening = state not in UNCONFIRMED
    if reopening:
        # Confirmed before, not confirmed now: a new episode, with its own clock and resync count.
        state, resyncs, last_resync_at, since = "gap", 0, None, now
        d.changes.update(since=now, reopened=True, resyncs=0, held=False, last_resync_at=None)
    deadline = since + timedelta(seconds=p.stuck_after)
    gap_kind: str | None = None
    if seen.kind == "visible":
        gap_kind = "mismatch"
        d.note = "Visible at the tax authority, but with different content than issued."
    elif seen.kind == "absent":
        # Once seen, an acknowledgement's SLA is spent: a confirmed invoice that is gone is lost, not lagging.
        sla_end = row.acked_at + timedelta(seconds=p.visibility_sla) if row.acked_at and not reopening else None
        if state == "pending" and row.sync_state != "gave_up":
            # The sync service is still submitting it (never acknowledged): not a visibility gap; only the
            # time limit matters here.
            d.note = "Not acknowledged by the tax authority yet; the sync service is still submitting it."
            d.changes["next_check_at"] = deadline if now < deadline else now + timedelta(seconds=p.stuck_recheck)
        elif sla_end is not None and now < sla_end:
            backoff = timedelta(seconds=p.first_check_after * 2 ** min(row.checks, 10))
            d.changes["next_check_at"] = max(min(sla_end, now + backoff), now + timedelta(milliseconds=50))
            if row.announced_ack_at != row.acked_at and state in ("pending", "awaiting"):
                d.announce = True
                d.changes["announced_ack_at"] = row.acked_at
            if state == "pending":
                d.changes["state"] = state = "awaiting"
            d.note = (f"Not visible yet, {human_duration((now - row.acked_at).total_seconds())} after "
                      f"acknowledgement (SLA {human_duration(p.visibility_sla)}).")
        else:
            gap_kind = "missing"
            d.note = "Not visible at the tax authority" + (
                f", {human_duration((now - row.acked_at).total_seconds())} after acknowledgement"
                f" (SLA {human_duration(p.visibility_sla)})." if row.acked_at else
                "; the sync service gave up submitting it." if row.sync_state == "gave_up" else ".")
    else:
        # A failed read says nothing about this invoice: look again when the checker asks the store again (its
        # back-off after failed reads spares a store that is down), not later because of this invoice's earlier
        # checks. Before, the wait doubled with every check: under a flaky store, an invoice checked six times
        # in its visibility SLA waited a full stuck_recheck after one failed read.
        wait = min(p.stuck_recheck, max(p.first_check_after, seen.retry_in))
        d.changes["next_check_at"] = now + timedelta(seconds=wait)
        d.changes["last_error"] = f"the tax store could not be checked: {seen.error}"
        d.note = f"Could not check: {seen.error}."

    if gap_kind is not None:
        d.changes["gap_kind"] = gap_kind
        if state != "stuck":
            d.changes["state"] = "gap"
        d.gap_event = state != "gap" or row.gap_kind != gap_kind
        earliest = last_resync_at + timedelta(seconds=_min_gap(resyncs, p)) if last_resync_at else now
        may_resync = now >= earliest
        if gap_kind == "missing" and row.held:
            # A resubmission was answered "already held": replication lag at the store, not loss.
            may_resync = False
            d.note += " The tax store says it already holds it: waiting for replication, not resubmitting."
            earliest = now + timedelta(seconds=min(p.stuck_recheck, _min_gap(resyncs, p) * 2))
        if may_resync:
            n = resyncs + 1
            d.resync = d.gap_event = True
            d.changes.update(resyncs=n, last_resync_at=now)
            d.changes["next_check_at"] = now + timedelta(seconds=resync_delay(n, policy=p, rng=rng))
            d.note += f" Resync {n} requested."
        else:
            d.changes["next_check_at"] = max(earliest, now + timedelta(milliseconds=50))

    # Escalation: past the time limit, or the resyncs did not help.
    if state != "stuck":
        reason = None
        if now >= deadline:
            reason = _stuck_reason(row, seen, gap_kind, resyncs, p)
        elif gap_kind is not None and resyncs >= p.stuck_after_resyncs:
            what = "different" if gap_kind == "mismatch" else "not visible"
            reason = f"still {what} at the tax authority after {resyncs} resyncs"
        if reason is not None:
            d.escalate = True
            d.stuck_reason = reason
            d.changes.update(state="stuck", stuck_at=now)
            d.note += f" Stuck: {reason}."
            state = "stuck"
    if state == "stuck":
        cap = now + timedelta(seconds=p.stuck_recheck)
        d.changes["next_check_at"] = min(d.changes.get("next_check_at") or cap, cap)
    return d


def _reviewed(row: Any, seen: Seen, now: datetime, p: Policy, d: Decision) -> Decision:
    """Held for cross-region review: not a gap (it is there; nothing to resubmit), not stuck either — watched
    against the review SLA until the bureau decides. Denied: final, it does not count."""
    d.changes.update(receipt_no=seen.receipt_no or row.receipt_no, gap_kind=None, held=False, last_error=None,
                     review_due_at=seen.review_due_at)
    if seen.review_status == "denied":
        d.review = row.state != "denied"
        d.changes.update(state="denied", next_check_at=None, stuck_at=None)
        d.note = "Denied in cross-region review by the tax bureau: it does not count."
        return d
    since = row.review_since or now
    d.review = row.state != "review"
    d.changes.update(state="review", review_since=since)
    recheck = now + timedelta(seconds=min(p.stuck_recheck, p.review_sla))
    due = seen.review_due_at
    d.changes["next_check_at"] = max(min(due, recheck), now + timedelta(seconds=0.5)) if due else recheck
    if row.review_overdue_at is None and (now - since).total_seconds() >= p.review_sla:
        d.review_overdue = True
        d.changes["review_overdue_at"] = now
    d.note = ("Held for cross-region review by the tax bureau"
              + (f", decision expected by {due.isoformat()}" if due else "") + "; not resubmitted.")
    return d


def _min_gap(n: int, p: Policy) -> float:
    """Least time after resync n before the next one (the lower edge of the jittered delay)."""
    return min(p.resync_cap, p.resync_base * 2 ** min(max(n - 1, 0), 30)) / 2


def _stuck_reason(row: Any, seen: Seen, gap_kind: str | None, resyncs: int, p: Policy) -> str:
    """Why it is stuck past the time limit, in words that follow "not confirmed after <age>:"."""
    if seen.kind == "unreachable":
        return f"the tax authority cannot be reached ({seen.error})"
    if gap_kind == "mismatch":
        return f"the tax authority still shows different content after {resyncs} resyncs"
    if row.acked_at is None:
        why = f"; last error: {row.last_error}" if row.last_error else ""
        return f"the tax authority has not acknowledged it{why}"
    return f"still not visible at the tax authority after {resyncs} resyncs"


def after_sync_result(row: Any, event: SyncResult, now: datetime, policy: Policy) -> tuple[dict[str, Any], bool]:
    """Ledger changes for one sync result, and whether the invoice was just rejected (alert once)."""
    terminal = row.state in ("confirmed", "rejected", "voided")
    if isinstance(event, InvoiceSubmitted):
        how = event.how
        changes: dict[str, Any] = {"sync_state": "submitted", "receipt_no": event.receipt_no or row.receipt_no,
                                   "duplicate_acks": row.duplicate_acks + (how == "duplicate")}
        if terminal:
            return changes, False
        changes.update(acked_at=event.at or now, checks=0,
                       next_check_at=now + timedelta(seconds=policy.first_check_after))
        if how == "duplicate" and row.state in ("gap", "stuck") and row.gap_kind == "missing" and row.resyncs:
            changes["held"] = True  # our resubmission found it already there: it is lag, not loss
        if row.state == "pending":
            changes["state"] = "awaiting"
        return changes, False
    if isinstance(event, InvoiceRejected):
        if row.state in ("confirmed", "voided", "rejected"):
            return {"sync_state": "rejected"}, False
        reason = f"[{event.reason_code or 'REJECTED'}] {event.reason or 'rejected by the tax authority'}"
        return {"sync_state": "rejected", "state": "rejected", "last_error": reason, "next_check_at": None,
                "gap_kind": None}, True
    assert isinstance(event, InvoiceSubmissionFailed)
    changes = {"sync_state": "gave_up" if event.gave_up else "failed", "last_error": event.error}
    if event.gave_up and not terminal:
        changes["next_check_at"] = now  # look now; absent -> resync (补录)
    return changes, False


# --- red-letter forms -------------------------------------------------------------------------

@dataclass
class FormDecision:
    """What one check of a confirmed form's red invoice decides (forms.py writes it)."""

    changes: dict[str, Any] = field(default_factory=dict)  # red_letter_forms columns to set
    met: bool = False  # the red invoice is in the ledger now
    gap: bool = False  # a gap now (new, or of another kind): case note, and the alert once per case
    reason: str = ""
    next_action: str | None = None


def decide_form(form: Any, *, red_invoice_id: Any, at_authority: bool | None, store_error: str | None,
                now: datetime, policy: Policy) -> FormDecision:
    """A confirmed form past its grace: met once its red invoice's issued event reached the ledger
    (`red_invoice_id`); else a gap — red_unrecorded when the authority holds the red invoice (the issuer never
    recorded it), red_missing when it does not either. `at_authority` None: the authority could not be asked
    (`store_error`); the kind stays what it was, red_unrecorded at first."""
    d = FormDecision(changes={"checks": form.checks + 1})
    red = form.red_number or "(no number)"
    if red_invoice_id is not None:
        d.met = True
        d.changes.update(state="met", red_invoice_id=red_invoice_id, met_at=now, next_check_at=None, gap_kind=None)
        d.reason = f"Red invoice {red} of form {form.form_no} is in the ledger; it is reconciled like any invoice."
        return d
    if at_authority is None:
        kind = form.gap_kind or "red_unrecorded"
    else:
        kind = "red_unrecorded" if at_authority else "red_missing"
    age = human_duration((now - form.confirmed_at).total_seconds())
    d.gap = form.state != "gap" or form.gap_kind != kind
    d.changes.update(state="gap", gap_kind=kind, gap_at=form.gap_at or now,
                     next_check_at=now + timedelta(seconds=policy.stuck_recheck))
    head = f"Red-letter form {form.form_no} on invoice {form.blue_number} was confirmed {age} ago"
    if kind == "red_unrecorded":
        held = (f"the tax authority holds its red invoice {red}" if at_authority else
                f"the tax authority could not be checked ({store_error})")
        d.reason = f"{head} and {held}, but the issuer never recorded the red invoice: it is not in the ledger."
        d.next_action = (f"Open the form (GET /v1/red-letter-forms/{form.form_id}): its confirmed update did not "
                         "reach the issuer; look for it among the dead letters of the sync results and replay "
                         "it. The reconciler keeps checking and closes the case when the red invoice arrives.")
    else:
        d.reason = (f"{head}, but its red invoice {red} is neither in the ledger nor held by the tax "
                    "authority.")
        d.next_action = (f"Ask the tax authority to issue the red invoice of form {form.form_no}; the reconciler "
                         "keeps checking and closes the case when it appears.")
    return d
