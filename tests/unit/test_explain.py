"""The words an invoice's view shows, rendered from the reconciler's findings as of `now` (explain.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from services.issuer.explain import at, clock, describe_event, explain, span
from services.issuer.lifecycle import Status, describe
from shared.events import (
    CASE_UPDATED,
    INVOICE_AWAITING_VISIBILITY,
    INVOICE_CONFIRMED,
    INVOICE_GAP_FOUND,
    INVOICE_STUCK,
)

NOW = datetime(2026, 11, 25, 10, 42, 0, tzinfo=UTC)
CASE = "CASE-20261125-000012"


def iso(delta_seconds: float) -> str:
    return (NOW + timedelta(seconds=delta_seconds)).isoformat()


def by_reconciler(status: Status, recon: dict[str, Any], now: datetime = NOW) -> tuple[str, str | None, Any]:
    return explain(status=status, recon=recon, reason="stored reason", next_action="stored next",
                   next_action_at=None, reason_source="reconciler", now=now)


# --- formatting ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("seconds", "text"), [
    (0, "00:00:00"), (4, "00:00:04"), (4.9, "00:00:04"), (252, "00:04:12"), (3661, "01:01:01"),
    (86_399, "23:59:59"), (93_784, "1 d 02:03:04"), (-3, "00:00:00"),
])
def test_clock(seconds: float, text: str) -> None:
    assert clock(seconds) == text


@pytest.mark.parametrize(("seconds", "text"), [
    (2, "2 s"), (1.5, "1.5 s"), (30, "30 s"), (60, "1 min"), (90, "1 min 30 s"), (600, "10 min"),
    (3600, "1 h"), (5400, "1 h 30 min"), (86_400, "1 d"), (90_061, "1 d 1 h"),
])
def test_span(seconds: float, text: str) -> None:
    assert span(seconds) == text


def test_times_show_the_date_only_when_it_is_not_today() -> None:
    assert at(NOW + timedelta(seconds=7), NOW) == "10:42:07 UTC"
    assert at(NOW - timedelta(days=1), NOW) == "2026-11-24 10:42:00 UTC"
    beijing = timezone(timedelta(hours=8))
    assert at(datetime(2026, 11, 25, 18, 42, 7, tzinfo=beijing), NOW) == "10:42:07 UTC", "always shown in UTC"


# --- submitted: acknowledged, not visible yet ----------------------------------------------------

AWAITING = {"type": INVOICE_AWAITING_VISIBILITY, "receipt_no": "R-778", "acked_at": iso(-4), "sla_seconds": 2,
            "deadline": iso(-2), "next_check_at": iso(7), "checks": 1}


def test_awaiting_visibility_counts_from_the_acknowledgement() -> None:
    reason, nxt, nxt_at = by_reconciler(Status.SUBMITTED, dict(AWAITING, deadline=iso(60)))
    assert reason == ("Acknowledged by the tax authority 00:00:04 ago (receipt R-778) but not visible there yet; "
                      "visibility SLA 2 s.")
    assert nxt == "Check visibility at 10:42:07 UTC (automatic)."
    assert nxt_at == NOW + timedelta(seconds=7)


def test_awaiting_visibility_says_by_how_much_the_sla_is_exceeded() -> None:
    reason, _, _ = by_reconciler(Status.SUBMITTED, AWAITING)
    assert "visibility SLA 2 s, exceeded by 00:00:02." in reason


def test_durations_are_live() -> None:
    later = NOW + timedelta(minutes=3)
    assert "00:03:04 ago" in by_reconciler(Status.SUBMITTED, AWAITING, now=later)[0]


# --- retrying: a gap and its resync --------------------------------------------------------------

MISSING = {"type": INVOICE_GAP_FOUND, "kind": "missing", "detail": "not found", "reopened": False,
           "acked_at": iso(-252), "sla_seconds": 30, "resync": 2, "max_resyncs": 5, "resync_at": iso(7),
           "next_check_at": iso(67), "case_no": None}


def test_missing_gap() -> None:
    reason, nxt, nxt_at = by_reconciler(Status.RETRYING, MISSING)
    assert reason == ("Not visible at the tax authority 00:04:12 after acknowledgement (SLA 30 s); "
                      "resync 2 of 5 requested at 10:42:07 UTC.")
    assert nxt == "Check again at 10:43:07 UTC (automatic); a case opens after 5 resyncs."
    assert nxt_at == NOW + timedelta(seconds=67)


def test_missing_gap_names_the_time_limit_when_known() -> None:
    _, nxt, _ = by_reconciler(Status.RETRYING, dict(MISSING, stuck_after_seconds=600))
    assert nxt.endswith("; a case opens after 5 resyncs or 10 min after issue.")


def test_reopened_gap_says_it_had_been_confirmed() -> None:
    reason, _, _ = by_reconciler(Status.RETRYING, dict(MISSING, reopened=True, resync=1))
    assert "resync 1 of 5 requested" in reason
    assert reason.endswith("It was visible and confirmed before, then vanished.")


def test_mismatch_gap_shows_what_differs() -> None:
    recon = dict(MISSING, kind="mismatch", detail="total 226.00 here, 262.00 there")
    reason, _, _ = by_reconciler(Status.RETRYING, recon)
    assert reason == ("The tax authority shows different content than issued (total 226.00 here, 262.00 there); "
                      "resync 2 of 5 requested at 10:42:07 UTC.")


def test_gap_never_acknowledged() -> None:
    reason, _, _ = by_reconciler(Status.RETRYING, dict(MISSING, acked_at=None))
    assert reason.startswith("Not visible at the tax authority, which never acknowledged it; resync 2 of 5")


def test_gap_with_an_open_case_points_at_the_case() -> None:
    reason, nxt, _ = by_reconciler(Status.RETRYING, dict(MISSING, case_no=CASE))
    assert reason.endswith(f"Case {CASE} is open.")
    assert nxt == f"Check again at 10:43:07 UTC (automatic); follow case {CASE} (GET /v1/cases/{CASE})."


# --- stuck ------------------------------------------------------------------------------------------

STUCK = {"type": INVOICE_STUCK, "case_no": CASE, "reason": "resyncs exhausted", "accepted_at": iso(-3723),
         "stuck_at": iso(-60), "stuck_after_seconds": 3600, "resyncs": 5, "max_resyncs": 5,
         "last_error": "not found at the authority", "next_check_at": iso(300), "alert_id": "a-1"}


def test_stuck_names_the_case_the_age_and_the_last_error() -> None:
    reason, nxt, nxt_at = by_reconciler(Status.STUCK, STUCK)
    assert reason == (f"Not confirmed at the tax authority 01:02:03 after issue (limit 1 h): resyncs exhausted; "
                      f"case {CASE}; 5 resyncs so far. Last error: not found at the authority.")
    assert nxt == f"Follow case {CASE} (GET /v1/cases/{CASE}); the system keeps checking, next at 10:47:00 UTC."
    assert nxt_at == NOW + timedelta(seconds=300)


def test_stuck_does_not_repeat_an_error_its_reason_names() -> None:
    unreachable = {**STUCK, "reason": "the tax authority cannot be reached (HTTP 503 from the tax store)",
                   "last_error": "the tax store could not be checked: HTTP 503 from the tax store", "resyncs": 0}
    reason, _, _ = by_reconciler(Status.STUCK, unreachable)
    assert reason == ("Not confirmed at the tax authority 01:02:03 after issue (limit 1 h): the tax authority cannot "
                      f"be reached (HTTP 503 from the tax store); case {CASE}; 0 resyncs so far.")


def test_stuck_counts_a_later_resync_too() -> None:
    merged = {**STUCK, **MISSING, "case_no": CASE, "resync": 6, "type": INVOICE_GAP_FOUND}
    reason, _, _ = by_reconciler(Status.STUCK, merged)
    assert "; 6 resyncs so far." in reason


# --- confirmed ------------------------------------------------------------------------------------

CONFIRMED = {"type": INVOICE_CONFIRMED, "receipt_no": "R-778", "acked_at": iso(-60), "confirmed_at": iso(-58.6),
             "visible_after_seconds": 1.4, "how": "check", "recovered": False, "case_no": None, "case_status": None}


def test_confirmed() -> None:
    assert by_reconciler(Status.CONFIRMED, CONFIRMED) == (
        "Visible at the tax authority with identical content since 10:41:01 UTC (receipt R-778).", None, None)


def test_confirmed_yesterday_shows_the_date() -> None:
    reason, _, _ = by_reconciler(Status.CONFIRMED, dict(CONFIRMED, confirmed_at=iso(-86_400)))
    assert "since 2026-11-24 10:42:00 UTC" in reason


def test_recovered_mentions_the_resolved_case() -> None:
    reason, nxt, _ = by_reconciler(Status.CONFIRMED, dict(CONFIRMED, recovered=True, case_no=CASE,
                                                          case_status="resolved"))
    assert reason.endswith(f"It had been stuck and recovered; case {CASE} resolved.")
    assert nxt is None


def test_confirmed_while_a_case_was_open_mentions_its_resolution() -> None:
    reason, _, _ = by_reconciler(Status.CONFIRMED, dict(CONFIRMED, case_no=CASE, case_status="resolved"))
    assert reason.endswith(f"(receipt R-778). Case {CASE} resolved.")


# --- when the reconciler does not explain the status -------------------------------------------

def test_sync_explanations_are_shown_as_stored() -> None:
    got = explain(status=Status.RETRYING, recon=MISSING, reason="Submission attempt 2 failed: timeout.",
                  next_action="Attempt 3 at 10:43:00 UTC (automatic).", next_action_at=NOW, reason_source="sync",
                  now=NOW)
    assert got == ("Submission attempt 2 failed: timeout.", "Attempt 3 at 10:43:00 UTC (automatic).", NOW)


def test_findings_that_cannot_be_rendered_fall_back_to_the_lifecycle_never_to_other_words() -> None:
    # e.g. recon holds an awaiting-visibility finding but the status says retrying: the stored words may be
    # another register's (a sync result that did not decide), so they are not shown for this status
    got = by_reconciler(Status.RETRYING, AWAITING)
    assert got == (*describe(Status.RETRYING), None)


def test_a_sync_next_action_past_due_says_the_sync_service_has_been_silent() -> None:
    due_at = NOW - timedelta(seconds=125)
    reason, nxt, at_ = explain(status=Status.RETRYING, recon=None, reason="Submission attempt 2 failed: timeout.",
                               next_action="Attempt 3 at 10:40:55 UTC (automatic).", next_action_at=due_at,
                               reason_source="sync", now=NOW)
    assert nxt == ("Attempt 3 at 10:40:55 UTC (automatic); that was 00:02:05 ago, and the sync service has not "
                   "reported since.")
    assert at_ == due_at
    # a moment late is not news
    _, nxt, _ = explain(status=Status.RETRYING, recon=None, reason="r", next_action="Attempt 3 (automatic).",
                        next_action_at=NOW - timedelta(seconds=2), reason_source="sync", now=NOW)
    assert nxt == "Attempt 3 (automatic)."


def test_the_live_schedule_wins_over_the_time_stored_with_the_finding() -> None:
    stored = dict(AWAITING, next_check_at=(NOW - timedelta(seconds=120)).isoformat())
    _, nxt, at_ = by_reconciler(Status.SUBMITTED, stored)
    assert nxt.startswith("Check visibility now (it was due at ") and at_ == NOW - timedelta(seconds=120)
    live = {"next_check_at": (NOW + timedelta(seconds=30)).isoformat()}
    _, nxt, at_ = explain(status=Status.SUBMITTED, recon=stored, reason=None, next_action=None,
                          next_action_at=None, reason_source="reconciler", now=NOW, live=live)
    assert nxt == f"Check visibility at {(NOW + timedelta(seconds=30)).strftime('%H:%M:%S')} UTC (automatic)."
    assert at_ == NOW + timedelta(seconds=30)


def test_nothing_stored_falls_back_to_the_lifecycle() -> None:
    for status in Status:
        got = explain(status=status, recon=None, reason=None, next_action=None, next_action_at=None,
                      reason_source=None, now=NOW)
        assert got == (*describe(status), None)


GARBAGE = {"type": "x", "acked_at": "yesterday", "kind": "missing", "resync": "two", "confirmed_at": 17,
           "case_no": 5, "accepted_at": None, "next_check_at": "soon"}


@pytest.mark.parametrize("status", [s for s in Status if s not in (Status.CONFIRMED, Status.VOIDED,
                                                                   Status.RED_LETTERED)])
@pytest.mark.parametrize("recon", [None, {}, AWAITING, MISSING, STUCK, CONFIRMED, GARBAGE])
@pytest.mark.parametrize(("reason", "next_action"), [(None, None), ("stored", None), ("stored", "next")])
@pytest.mark.parametrize("source", [None, "sync", "reconciler"])
def test_an_unsettled_invoice_always_has_a_reason_and_a_next_action(
        status: Status, recon: dict[str, Any] | None, reason: str | None, next_action: str | None,
        source: str | None) -> None:
    got_reason, got_next, _ = explain(status=status, recon=recon, reason=reason, next_action=next_action,
                                      next_action_at=None, reason_source=source, now=NOW)
    assert got_reason and got_reason.strip()
    assert got_next and got_next.strip()


# --- timeline entries -----------------------------------------------------------------------------

def test_timeline_confirmed() -> None:
    assert describe_event(INVOICE_CONFIRMED, CONFIRMED, at_time=NOW) == (
        "confirmed", "Visible at the tax authority with identical content, 1.4 s after acknowledgement "
                     "(receipt R-778)")
    _, swept = describe_event(INVOICE_CONFIRMED, dict(CONFIRMED, how="sweep"), at_time=NOW)
    assert swept.endswith("; found by the periodic sweep")


def test_timeline_recovered() -> None:
    assert describe_event(INVOICE_CONFIRMED, dict(CONFIRMED, recovered=True, case_no=CASE), at_time=NOW) == (
        "recovered", f"Recovered: now visible; case {CASE} resolved (receipt R-778)")


def test_timeline_awaiting() -> None:
    assert describe_event(INVOICE_AWAITING_VISIBILITY, AWAITING, at_time=NOW) == (
        "awaiting_visibility", "Acknowledged (receipt R-778) but not visible at the tax authority yet; "
                               "visibility SLA 2 s, next check at 10:42:07 UTC")


def test_timeline_gap_measures_at_the_moment_it_was_found() -> None:
    data = dict(MISSING, acked_at=iso(-2), sla_seconds=2, resync=1)
    assert describe_event(INVOICE_GAP_FOUND, data, at_time=NOW) == (
        "gap_found", "Gap found: not visible 2.0 s after acknowledgement (SLA 2 s); resync 1 of 5 requested")
    _, reopened = describe_event(INVOICE_GAP_FOUND, dict(data, reopened=True), at_time=NOW)
    assert reopened == "Gap found: no longer visible at the tax authority (it had been confirmed); " \
                       "resync 1 of 5 requested"
    _, mismatch = describe_event(INVOICE_GAP_FOUND, dict(data, kind="mismatch", detail="total differs"),
                                 at_time=NOW)
    assert mismatch == "Gap found: the tax authority shows different content (total differs); resync 1 of 5 requested"


def test_timeline_stuck() -> None:
    kind, message = describe_event(INVOICE_STUCK, STUCK, at_time=NOW)
    assert kind == "stuck"
    assert message == (f"Stuck: case {CASE} opened; alert raised (5 of 5 resyncs; limit 1 h; "
                       "last error: not found at the authority)")


@pytest.mark.parametrize(("data", "kind", "message"), [
    ({"status": "open", "opened_by": "tenant"}, "case_opened",
     f"Case {CASE} opened at the seller's request; the authority is being checked now"),
    ({"status": "open", "opened_by": "system"}, "case_opened", f"Case {CASE} opened by the system"),
    ({"status": "resolved", "resolution": "visible again"}, "case_resolved", f"Case {CASE} resolved: visible again"),
    ({"status": "closed", "resolution": None}, "case_closed", f"Case {CASE} closed"),
])
def test_timeline_case_updates(data: dict[str, Any], kind: str, message: str) -> None:
    assert describe_event(CASE_UPDATED, {"case_no": CASE, **data}, at_time=NOW) == (kind, message)


def test_timeline_refuses_other_types() -> None:
    with pytest.raises(ValueError, match="not a reconciliation event type"):
        describe_event("cn.fapiao.invoice.issued.v1", {}, at_time=NOW)
