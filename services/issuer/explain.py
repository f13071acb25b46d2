"""Why an invoice is where it is, in words, with live numbers.

The reconciler's findings are stored as data (`invoices.recon`) and rendered here at read time, so a
reader sees "not visible 00:04:12 after acknowledgement" as of now, not as of the last event. Pure
functions only: no clock, no database; `now` comes from the caller, which keeps the wording testable.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from services.issuer.lifecycle import Status, describe
from shared.events import (
    CASE_UPDATED,
    INVOICE_AWAITING_VISIBILITY,
    INVOICE_CONFIRMED,
    INVOICE_GAP_FOUND,
    INVOICE_REVIEW_UPDATED,
    INVOICE_STUCK,
    NOTIFICATION_FAILED,
    NOTIFICATION_SENT,
)

__all__ = ["Explanation", "at", "case_opened_message", "clock", "describe_event", "describe_notification", "due",
           "explain", "explain_form", "parse_time", "span"]

Explanation = tuple[str, str | None, datetime | None]
"""(reason, next action, when the next action happens)"""

# Statuses that need nothing more from anyone; every other status always gets a next action.
_SETTLED = frozenset({Status.CONFIRMED, Status.VOIDED, Status.RED_LETTERED})


# --- formatting ---------------------------------------------------------------------------------

def clock(seconds: float) -> str:
    """A duration as HH:MM:SS (days in front past 24 h): 252 -> '00:04:12', 93784 -> '1 d 02:03:04'."""
    total = max(0, int(seconds))
    days, rest = divmod(total, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days} d {text}" if days else text


def span(seconds: float) -> str:
    """A configured limit, the way people say it: 2 -> '2 s', 90 -> '1 min 30 s', 86400 -> '1 d'."""
    if seconds < 60:
        return f"{seconds:g} s"
    total = int(round(seconds))
    parts = []
    for unit, size in (("d", 86_400), ("h", 3600), ("min", 60), ("s", 1)):
        n, total = divmod(total, size)
        if n:
            parts.append(f"{n} {unit}")
    return " ".join(parts[:2])  # "1 d 2 h", never "1 d 2 h 3 min 4 s"


def _elapsed(seconds: float) -> str:
    # Short waits are what the SLA is measured in; they read better with a decimal than as 00:00:01.
    return f"{seconds:.1f} s" if seconds < 60 else clock(seconds)


def at(moment: datetime, now: datetime) -> str:
    """'10:42:07 UTC' on the day of `now` (UTC), '2026-11-24 10:42:07 UTC' on any other day."""
    moment, now = moment.astimezone(UTC), now.astimezone(UTC)
    if moment.date() == now.date():
        return moment.strftime("%H:%M:%S UTC")
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


_OVERDUE_SLACK = 5.0  # seconds past a due time before it reads as overdue (a round takes a moment)


def due(moment: datetime, now: datetime) -> str:
    """'at 10:42:07 UTC' while ahead; 'now (it was due at 10:42:07 UTC)' once it has passed."""
    if (now - moment).total_seconds() > _OVERDUE_SLACK:
        return f"now (it was due at {at(moment, now)})"
    return f"at {at(moment, now)}"


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 string (or a datetime) as an aware datetime; None when it is neither."""
    return _time(value)


def _time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str) and value:
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return None
    else:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _int(value: Any) -> int | None:
    n = _num(value)
    return int(n) if n is not None else None


def _text(value: Any) -> str | None:
    return (value.strip() or None) if isinstance(value, str) else None


def _sentence(text: str) -> str:
    return text.rstrip().rstrip(".") + "."


def _mentions(text: str, error: str) -> bool:
    """Does `text` already say what `error` says? ("...: HTTP 503" is said by "... (HTTP 503)".)"""
    return error in text or error.rsplit(": ", 1)[-1] in text


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


# --- the invoice's current explanation ----------------------------------------------------------

def explain(*, status: Status | str, recon: Mapping[str, Any] | None, reason: str | None, next_action: str | None,
            next_action_at: datetime | None, reason_source: str | None, now: datetime,
            live: Mapping[str, Any] | None = None) -> Explanation:
    """(reason, next action, next action at) to show for an invoice right now.

    When the reconciler's findings explain the current status, they are rendered with durations as of
    `now` and with the reconciler's live schedule (`live`: next_check_at, resync_at, read from it just now)
    where the caller has it; otherwise the stored explanation (from the sync service or the issuer) or the
    lifecycle's default. A time that has passed says so. An invoice that is not settled always gets a reason
    and a next action.
    """
    status = Status(status)
    if reason_source == "reconciler" and recon:
        if live:
            recon = {**recon, **live}
        render = _RENDERERS.get(status)
        rendered = render(recon, now) if render is not None else None
        if rendered is not None:
            return rendered
        reason = None  # never another register's words for a status the reconciler decided
    default_reason, default_next = describe(status)
    if reason:
        nxt = next_action
    else:
        reason, nxt, next_action_at = default_reason, default_next, None
    if not nxt and status not in _SETTLED:
        nxt = default_next
    if (reason_source == "sync" and nxt and next_action_at is not None
            and (now - next_action_at).total_seconds() > _OVERDUE_SLACK):
        nxt = (f"{nxt.rstrip('.')}; that was {clock((now - next_action_at).total_seconds())} ago, and the sync "
               "service has not reported since.")
    return reason, nxt, next_action_at


def _awaiting(r: Mapping[str, Any], now: datetime) -> Explanation | None:
    acked = _time(r.get("acked_at"))
    if acked is None:
        return None
    receipt, sla = _text(r.get("receipt_no")), _num(r.get("sla_seconds"))
    deadline, next_check = _time(r.get("deadline")), _time(r.get("next_check_at"))
    reason = f"Acknowledged by the tax authority {clock((now - acked).total_seconds())} ago"
    reason += f" (receipt {receipt})" if receipt else ""
    reason += " but not visible there yet"
    if sla is not None:
        reason += f"; visibility SLA {span(sla)}"
        if deadline is not None and now > deadline:
            reason += f", exceeded by {clock((now - deadline).total_seconds())}"
    nxt = f"Check visibility {due(next_check, now)} (automatic)." if next_check else \
        "Check visibility at the authority (automatic)."
    return _sentence(reason), nxt, next_check


def _gap(r: Mapping[str, Any], now: datetime) -> Explanation | None:
    kind = r.get("kind")
    if kind not in ("missing", "mismatch"):
        return None
    acked, sla = _time(r.get("acked_at")), _num(r.get("sla_seconds"))
    n, most = _int(r.get("resync")), _int(r.get("max_resyncs"))
    resync_at, next_check = _time(r.get("resync_at")), _time(r.get("next_check_at"))
    case_no, detail = _text(r.get("case_no")), _text(r.get("detail"))
    if kind == "missing":
        if acked is not None:
            head = f"Not visible at the tax authority {clock((now - acked).total_seconds())} after acknowledgement"
            head += f" (SLA {span(sla)})" if sla is not None else ""
        else:
            head = "Not visible at the tax authority, which never acknowledged it"
    else:
        head = "The tax authority shows different content than issued"
        head += f" ({detail})" if detail else ""
    resync = f"resync {n} of {most} requested" if n is not None and most is not None else \
        f"resync {n} requested" if n is not None else "a resync (补录) is requested"
    resync += f" at {at(resync_at, now)}" if resync_at else ""
    reason = f"{head}; {resync}."
    if r.get("reopened") is True:
        reason += " It was visible and confirmed before, then vanished." if kind == "missing" else \
            " It was visible and identical before, then changed."
    if case_no:
        reason += f" Case {case_no} is open."
    check = f"Check again {due(next_check, now)} (automatic)" if next_check else \
        "Check again once the resync is through (automatic)"
    if case_no:
        then = f"follow case {case_no} (GET /v1/cases/{case_no})"
    else:
        stuck_after = _num(r.get("stuck_after_seconds"))
        limits = [_plural(most, "resync")] if most is not None else []
        limits += [f"{span(stuck_after)} after issue"] if stuck_after else []
        then = f"a case opens after {' or '.join(limits)}" if limits else "a case opens if it stays missing"
    return reason, f"{check}; {then}.", next_check


def _stuck(r: Mapping[str, Any], now: datetime) -> Explanation | None:
    case_no, accepted = _text(r.get("case_no")), _time(r.get("accepted_at"))
    if case_no is None and accepted is None:
        return None
    limit, next_check = _num(r.get("stuck_after_seconds")), _time(r.get("next_check_at"))
    # A gap found after the case opened counts its resync too (the data are merged, newest last).
    counts = [c for c in (_int(r.get("resyncs")), _int(r.get("resync"))) if c is not None]
    why = _text(r.get("reason"))  # the reconciler's own words: what it saw when it gave up waiting
    head = "Not confirmed at the tax authority"
    head += f" {clock((now - accepted).total_seconds())} after issue" if accepted is not None else ""
    head += f" (limit {span(limit)})" if limit else ""
    head += f": {why}" if why else ""
    parts = [head]
    parts += [f"case {case_no}"] if case_no else []
    parts += [f"{_plural(max(counts), 'resync')} so far"] if counts else []
    reason = _sentence("; ".join(parts))
    if (last_error := _text(r.get("last_error"))) and not (why and _mentions(why, last_error)):
        reason += f" Last error: {_sentence(last_error)}"
    nxt = f"Follow case {case_no} (GET /v1/cases/{case_no}); the system keeps checking" if case_no else \
        "The system keeps checking"
    nxt += f", next {due(next_check, now)}." if next_check else "."
    return reason, nxt, next_check


def _confirmed(r: Mapping[str, Any], now: datetime) -> Explanation | None:
    confirmed = _time(r.get("confirmed_at"))
    if confirmed is None:
        return None
    receipt, case_no = _text(r.get("receipt_no")), _text(r.get("case_no"))
    reason = f"Visible at the tax authority with identical content since {at(confirmed, now)}"
    reason += f" (receipt {receipt})." if receipt else "."
    if r.get("recovered") is True:
        reason += f" It had been stuck and recovered; case {case_no} resolved." if case_no else \
            " It had been stuck and recovered."
    elif case_no and r.get("case_status") == "resolved":
        reason += f" Case {case_no} resolved."
    return reason, None, None


def _under_review(r: Mapping[str, Any], now: datetime) -> Explanation | None:
    due_at, since = _time(r.get("review_due_at")), _time(r.get("review_since"))
    sla = _num(r.get("review_sla_seconds"))
    reason = "Held by the tax bureau for cross-region review (跨区域审核); it counts once approved"
    if since is not None:
        reason += f", held for {clock((now - since).total_seconds())}"
        if sla is not None and (now - since).total_seconds() > sla:
            reason += f", longer than the agreed {span(sla)}"
    reason += "."
    when = f"; the bureau expects to decide {due(due_at, now)}" if due_at is not None else ""
    return reason, f"Wait for the bureau's decision{when} (watched automatically; never resubmitted).", due_at


def _review_denied(r: Mapping[str, Any], now: datetime) -> Explanation | None:
    note = _text(r.get("review_note"))
    return (f"Denied in cross-region review by the tax bureau{': ' + note if note else ''}; it does not count.",
            "Check the sale with the buyer; issue a corrected invoice if it stands.", None)


_RENDERERS: dict[Status, Callable[[Mapping[str, Any], datetime], Explanation | None]] = {
    Status.SUBMITTED: _awaiting,
    Status.RETRYING: _gap,
    Status.STUCK: _stuck,
    Status.CONFIRMED: _confirmed,
    Status.UNDER_REVIEW: _under_review,
    Status.REVIEW_DENIED: _review_denied,
}


# --- timeline entries ---------------------------------------------------------------------------

def case_opened_message(case_no: str, *, opened_by: str) -> str:
    if opened_by == "tenant":
        return f"Case {case_no} opened at the seller's request; the authority is being checked now"
    return f"Case {case_no} opened by the system"


def describe_event(event_type: str, d: Mapping[str, Any], *, at_time: datetime) -> tuple[str, str]:
    """(timeline kind, message) for one reconciliation event, worded as of the moment it was found."""
    receipt, case_no = _text(d.get("receipt_no")), _text(d.get("case_no"))
    if event_type == INVOICE_CONFIRMED:
        if d.get("recovered") is True:
            message = "Recovered: now visible"
            message += f"; case {case_no} resolved" if case_no else ""
            return "recovered", message + (f" (receipt {receipt})" if receipt else "")
        message = "Visible at the tax authority with identical content"
        if (after := _num(d.get("visible_after_seconds"))) is not None:
            message += f", {_elapsed(after)} after acknowledgement"
        message += f" (receipt {receipt})" if receipt else ""
        if d.get("how") == "sweep":
            message += "; found by the periodic sweep"
        elif d.get("how") == "case" and case_no:
            message += f"; checked for case {case_no}"
        if case_no and d.get("case_status") == "resolved":
            message += f"; case {case_no} resolved"
        return "confirmed", message
    if event_type == INVOICE_REVIEW_UPDATED:
        if d.get("review_status") == "denied":
            return "review_denied", "Denied in cross-region review by the tax bureau; it does not count"
        due_at = _time(d.get("review_due_at"))
        return "under_review", "Held by the tax bureau for cross-region review" + (
            f"; decision expected {at(due_at, at_time)}" if due_at is not None else "")
    if event_type == INVOICE_AWAITING_VISIBILITY:
        message = "Acknowledged"
        message += f" (receipt {receipt})" if receipt else ""
        message += " but not visible at the tax authority yet"
        if (sla := _num(d.get("sla_seconds"))) is not None:
            message += f"; visibility SLA {span(sla)}"
        if next_check := _time(d.get("next_check_at")):
            message += f", next check at {at(next_check, at_time)}"
        return "awaiting_visibility", message
    if event_type == INVOICE_GAP_FOUND:
        acked, sla = _time(d.get("acked_at")), _num(d.get("sla_seconds"))
        reopened = d.get("reopened") is True
        if d.get("kind") == "mismatch":
            what = "the tax authority's copy changed after confirmation" if reopened else \
                "the tax authority shows different content"
            what += f" ({detail})" if (detail := _text(d.get("detail"))) else ""
        elif reopened:
            what = "no longer visible at the tax authority (it had been confirmed)"
        elif acked is not None:
            what = f"not visible {_elapsed((at_time - acked).total_seconds())} after acknowledgement"
            what += f" (SLA {span(sla)})" if sla is not None else ""
        else:
            what = "not visible, and the tax authority never acknowledged it"
        n, most = _int(d.get("resync")), _int(d.get("max_resyncs"))
        resync = f"resync {n} of {most} requested" if n is not None and most is not None else "resync requested"
        return "gap_found", f"Gap found: {what}; {resync}"
    if event_type == INVOICE_STUCK:
        message = f"Stuck: case {case_no} opened; alert raised" if case_no else "Stuck: alert raised"
        facts = []
        if (resyncs := _int(d.get("resyncs"))) is not None:
            most = _int(d.get("max_resyncs"))
            facts.append(f"{resyncs} of {most} resyncs" if most is not None else _plural(resyncs, "resync"))
        if stuck_after := _num(d.get("stuck_after_seconds")):
            facts.append(f"limit {span(stuck_after)}")
        if last_error := _text(d.get("last_error")):
            facts.append(f"last error: {last_error}")
        return "stuck", message + (f" ({'; '.join(facts)})" if facts else "")
    if event_type == CASE_UPDATED:
        status, resolution = d.get("status"), _text(d.get("resolution"))
        case = case_no or "?"
        if status == "open":
            return "case_opened", case_opened_message(case, opened_by=str(d.get("opened_by") or "system"))
        verb = "resolved" if status == "resolved" else "closed"
        return f"case_{verb}", f"Case {case} {verb}" + (f": {resolution}" if resolution else "")
    raise ValueError(f"not a reconciliation event type: {event_type}")


def describe_notification(event_type: str, d: Mapping[str, Any]) -> tuple[str, str]:
    """(timeline kind, message) for the notifier's notice that an alert about the invoice went out, or not."""
    channel = {"webhook": "webhook", "email": "e-mail"}.get(str(d.get("channel")))
    at_time = _time(d.get("at"))
    attempts = _int(d.get("attempts"))
    if channel is None or at_time is None or attempts is None:
        raise ValueError("a notification notice needs channel (webhook|email), at and attempts")
    what = f"Alert ({d.get('alert_kind') or 'alert'}"
    count = _int(d.get("alert_count"))
    what += f", in a digest of {count})" if d.get("digest") is True and count else ")"
    target = _text(d.get("target"))
    via = f"via {channel}" + (f" to {target}" if target else "")
    when = at_time.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    if event_type == NOTIFICATION_SENT:
        return "alert_sent", f"{what} sent {via} at {when} ({_plural(attempts, 'attempt')})"
    if event_type == NOTIFICATION_FAILED:
        error = _text(d.get("error"))
        return "alert_failed", (f"{what} could not be delivered {via}: gave up at {when} after "
                                f"{_plural(attempts, 'attempt')}" + (f"; last error: {error}" if error else ""))
    raise ValueError(f"not a notification event type: {event_type}")


# --- red-letter forms --------------------------------------------------------------------------

def explain_form(*, status: str, form_no: str | None, expires_at: datetime | None, awaiting: str | None,
                 reader_tax_id: str, red_number: str | None, error: str | None,
                 decision: Mapping[str, Any] | None, now: datetime) -> Explanation:
    """(reason, next action, when) of a red-letter form in each of its states, as one party (`reader_tax_id`)
    reads it."""
    no = form_no or "(not numbered yet)"
    if status == "requested":
        return ("Asked for here; on its way to the tax authority, which makes the form and numbers it.",
                "Create the form at the tax authority (automatic; retried until it answers).", None)
    if status == "pending":
        when = due(expires_at, now) if expires_at is not None else "at the end of the authority's window"
        if decision is not None and decision.get("decision"):
            return (f"Form {no} waits for {awaiting}'s decision; this tenant asked to {decision['decision']} it.",
                    "Hand the decision to the tax authority (automatic).", None)
        if awaiting == reader_tax_id:
            return (f"Form {no} waits for this tenant's confirmation: the seller asks to reverse the invoice.",
                    f"Confirm or reject it; it is void {when}.", expires_at)
        return (f"Form {no} is made; the tax authority waits for {awaiting} to confirm it.",
                f"Wait for {awaiting}; unconfirmed, the form is void {when} (then ask again).", expires_at)
    if status == "confirmed":
        return (f"Form {no} is confirmed; the tax authority issued red invoice {red_number or '(unknown)'}.", None,
                None)
    if status == "rejected":
        return (f"Form {no} was rejected by the counterparty; nothing was reversed.",
                "Agree with the buyer, then ask for a new form if the invoice still needs reversing.", None)
    if status == "voided":
        return (f"Form {no} is void: nobody confirmed it within the tax authority's window; nothing was reversed.",
                "Ask for a new form if the invoice still needs reversing.", None)
    return (f"The tax authority refused the form: {error or 'no reason given'}.",
            "Correct the request (lines, amounts) and ask again.", None)
