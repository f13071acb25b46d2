"""The reconciler's decisions, pinned down without I/O: one ledger row, one observation, one clock."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from services.reconciler.rules import (
    Policy,
    Seen,
    after_sync_result,
    decide,
    decide_form,
    human_duration,
    resync_delay,
)
from services.reconciler.settings import ReconcilerSettings
from shared.events import InvoiceRejected, InvoiceSubmissionFailed, InvoiceSubmitted, SyncResult
from shared.settings import parse_duration

T0 = datetime(2026, 11, 25, 10, 0, 0, tzinfo=UTC)
P = Policy(visibility_sla=30, first_check_after=1, stuck_after=600, stuck_after_resyncs=3, resync_base=10,
           resync_cap=300, stuck_recheck=60)
HASH = "a" * 64


def row(**over: Any) -> SimpleNamespace:
    base: dict[str, Any] = dict(
        content_hash=HASH, accepted_at=T0, since=T0, state="awaiting", gap_kind=None, acked_at=T0, receipt_no="R1",
        checks=0, announced_ack_at=None, resyncs=0, last_resync_at=None, held=False, duplicate_acks=0,
        sync_state="submitted", last_error=None, reopened=False, case_no=None)
    base.update(over)
    return SimpleNamespace(**base)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_visible_and_identical_confirms() -> None:
    d = decide(row(), Seen("visible", content_hash=HASH, receipt_no="R1"), at(2), P)
    assert d.confirm and not d.recovered and not d.resync
    assert d.changes["state"] == "confirmed" and d.changes["next_check_at"] is None


def test_a_stuck_invoice_that_appears_is_recovered() -> None:
    d = decide(row(state="stuck", gap_kind="missing"), Seen("visible", content_hash=HASH, receipt_no="R1"), at(900), P)
    assert d.confirm and d.recovered


def test_within_the_sla_it_waits_and_announces_once() -> None:
    r = row(state="awaiting")
    d = decide(r, Seen("absent"), at(2), P)
    assert not d.resync and not d.escalate and d.gap_event is False
    assert d.announce and d.changes["announced_ack_at"] == T0
    assert at(2) < d.changes["next_check_at"] <= at(30)
    again = decide(row(state="awaiting", announced_ack_at=T0, checks=1), Seen("absent"), at(4), P)
    assert not again.announce


def test_missing_after_the_sla_is_a_gap_and_resynced() -> None:
    d = decide(row(), Seen("absent"), at(31), P, rng=random.Random(1))
    assert d.resync and d.gap_event
    assert d.changes["state"] == "gap" and d.changes["gap_kind"] == "missing" and d.changes["resyncs"] == 1
    assert "SLA 30 s" in d.note and "Resync 1 requested" in d.note
    # The next resync waits for the backoff: a check in between does not resubmit again.
    r = row(state="gap", gap_kind="missing", resyncs=1, last_resync_at=at(31), acked_at=T0)
    again = decide(r, Seen("absent"), at(33), P)
    assert not again.resync and not again.gap_event
    assert again.changes["next_check_at"] >= at(31 + 5 - 0.001)


def test_a_new_acknowledgement_gets_its_own_sla_before_the_next_resync() -> None:
    r = row(state="gap", gap_kind="missing", resyncs=1, last_resync_at=at(31), acked_at=at(32))
    d = decide(r, Seen("absent"), at(40), P)
    assert not d.resync and d.changes.get("state", "gap") == "gap"


def test_mismatch_is_resynced_even_when_held() -> None:
    d = decide(row(held=True), Seen("visible", content_hash="b" * 64, receipt_no="R1"), at(3), P)
    assert d.resync and d.changes["gap_kind"] == "mismatch"


def test_held_by_the_store_means_lag_not_loss_no_more_resubmissions() -> None:
    r = row(state="gap", gap_kind="missing", resyncs=1, last_resync_at=at(31), acked_at=at(32), held=True)
    d = decide(r, Seen("absent"), at(100), P)
    assert not d.resync and "already holds it" in d.note


def test_pending_while_sync_still_submits_only_waits_for_the_time_limit() -> None:
    r = row(state="pending", acked_at=None, sync_state="failed", last_error="HTTP 503")
    d = decide(r, Seen("absent"), at(100), P)
    assert not d.resync and not d.escalate and d.changes["next_check_at"] == at(600)
    late = decide(r, Seen("absent"), at(601), P)
    assert late.escalate and late.changes["state"] == "stuck"
    assert "not acknowledged" in (late.stuck_reason or "") and "HTTP 503" in (late.stuck_reason or "")


def test_gave_up_means_resync() -> None:
    d = decide(row(state="pending", acked_at=None, sync_state="gave_up"), Seen("absent"), at(100), P)
    assert d.resync and d.changes["gap_kind"] == "missing"


def test_unreachable_store_backs_off_and_still_escalates_past_the_limit() -> None:
    d = decide(row(state="pending", acked_at=None, sync_state="failed"), Seen("unreachable", error="HTTP 503"),
               at(10), P)
    assert not d.escalate and not d.resync and d.changes["next_check_at"] <= at(10 + 60)
    late = decide(row(state="pending", acked_at=None, sync_state="failed"), Seen("unreachable", error="HTTP 503"),
                  at(700), P)
    assert late.escalate and "cannot be reached" in (late.stuck_reason or "")


@pytest.mark.parametrize(("checks", "retry_in", "wait"), [
    (8, 0.0, 1),  # checked eight times already: a failed read is still no reason to wait longer
    (0, 0.0, 1),
    (8, 12.5, 12.5),  # the checker will not ask the store for 12.5 s: look again then
    (2, 1_000.0, 60),  # never longer than stuck_recheck
])
def test_after_a_failed_read_it_is_checked_again_when_the_store_is_asked_again(
        checks: int, retry_in: float, wait: float) -> None:
    d = decide(row(state="awaiting", checks=checks, acked_at=at(0)), Seen("unreachable", error="timeout",
                                                                          retry_in=retry_in), at(20), P)
    assert d.changes["next_check_at"] == at(20 + wait)
    assert not d.resync and not d.escalate and "could not be checked" in d.changes["last_error"]


def test_escalates_after_the_resync_budget() -> None:
    r = row(state="gap", gap_kind="missing", resyncs=3, last_resync_at=at(100), acked_at=at(101))
    d = decide(r, Seen("absent"), at(300), P)
    assert d.escalate and "after 3 resyncs" in (d.stuck_reason or "")
    assert d.changes["next_check_at"] <= at(300 + 60)


def test_stuck_keeps_resyncing_at_a_slower_pace_and_does_not_escalate_again() -> None:
    r = row(state="stuck", gap_kind="missing", resyncs=4, last_resync_at=at(100), acked_at=at(101))
    d = decide(r, Seen("absent"), at(2000), P)
    assert not d.escalate and d.resync and d.changes["resyncs"] == 5
    assert d.changes["next_check_at"] <= at(2000 + 60)


def test_a_confirmed_invoice_that_vanished_starts_a_new_episode() -> None:
    r = row(state="confirmed", resyncs=2, last_resync_at=at(50), since=T0)
    d = decide(r, Seen("absent"), at(5000), P)
    assert d.resync and d.changes["reopened"] is True and d.changes["since"] == at(5000)
    assert d.changes["resyncs"] == 1 and not d.escalate


def test_placeholder_rows_wait_for_the_issued_event() -> None:
    d = decide(row(content_hash=None), Seen("absent"), at(1), P)
    assert not d.resync and not d.confirm and d.changes["next_check_at"] > at(1)


def test_sync_results_move_the_ledger() -> None:
    def result(model: type[SyncResult], **data: Any) -> SyncResult:
        return model(invoice_id=uuid.uuid4(), attempt=1, **data)

    changes, rejected = after_sync_result(row(state="pending", acked_at=None),
                                          result(InvoiceSubmitted, receipt_no="R9", how="created", at=at(5)), at(5), P)
    assert changes["state"] == "awaiting" and changes["acked_at"] == at(5) and not rejected
    held, _ = after_sync_result(row(state="gap", gap_kind="missing", resyncs=1),
                                result(InvoiceSubmitted, receipt_no="R1", how="duplicate", at=at(40)), at(40), P)
    assert held["held"] is True and held["duplicate_acks"] == 1
    changes, rejected = after_sync_result(row(state="awaiting"),
                                          result(InvoiceRejected, reason_code="TOTAL_MISMATCH", reason="totals"),
                                          at(5), P)
    assert rejected and changes["state"] == "rejected" and changes["next_check_at"] is None
    _, again = after_sync_result(row(state="rejected"), result(InvoiceRejected, reason_code="X"), at(6), P)
    assert not again  # alert once
    changes, _ = after_sync_result(row(state="awaiting"),
                                   result(InvoiceSubmissionFailed, error="boom", gave_up=True), at(7), P)
    assert changes["sync_state"] == "gave_up" and changes["next_check_at"] == at(7)


def test_resync_delay_doubles_with_jitter_and_caps() -> None:
    rng = random.Random(3)
    assert 5 <= resync_delay(1, policy=P, rng=rng) <= 10
    assert 10 <= resync_delay(2, policy=P, rng=rng) <= 20
    assert 150 <= resync_delay(20, policy=P, rng=rng) <= 300


@pytest.mark.parametrize(("text", "seconds"), [("30", 30), ("30s", 30), ("10m", 600), ("2h", 7200),
                                               ("500ms", 0.5), (45, 45)])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_settings_take_durations_and_refuse_nonsense() -> None:
    s = ReconcilerSettings(database_url="postgresql://x@h/db", admin_token="t" * 20, kafka_bootstrap="k:9092",
                           stuck_after="10m", visibility_sla="45s")
    assert s.stuck_after == 600 and s.visibility_sla == 45
    with pytest.raises(ValueError, match="duration"):
        ReconcilerSettings(database_url="postgresql://x@h/db", admin_token="t" * 20, kafka_bootstrap="k:9092",
                           stuck_after="soon")


def test_human_durations() -> None:
    assert human_duration(2) == "2 s" and human_duration(1.5) == "1.5 s" and human_duration(600) == "10 min"
    assert human_duration(252) == "4 min 12 s" and human_duration(7200) == "2 h"


def test_a_confirmed_invoice_gone_right_after_its_acknowledgement_is_lost_not_lagging() -> None:
    d = decide(row(state="confirmed", acked_at=at(0)), Seen("absent"), at(1), P)
    assert d.resync and d.changes["gap_kind"] == "missing"


def test_an_orphan_is_lost_by_a_restore_only_inside_its_window() -> None:
    """Issued between a backup and its restore: lost by the restore. Long after: foreign, whatever was restored."""
    from datetime import UTC, date, datetime
    from types import SimpleNamespace

    from services.reconciler.sweeps import _orphan_words

    restore = SimpleNamespace(backup_taken_at=datetime(2026, 11, 30, 2, 0, tzinfo=UTC),
                              restored_at=datetime(2026, 12, 1, 9, 0, tzinfo=UTC))
    lost = SimpleNamespace(number="26000000000000000001", receipt_no="R1", issue_date=date(2026, 11, 30))
    later = SimpleNamespace(number="26000000000000000002", receipt_no="R2", issue_date=date(2026, 12, 20))
    earlier = SimpleNamespace(number="26000000000000000003", receipt_no="R3", issue_date=date(2026, 11, 1))
    assert "restored" in _orphan_words(lost, [restore])[0]
    for foreign in (later, earlier):
        reason, action = _orphan_words(foreign, [restore])
        assert "never issued through Fapiao Sync" in reason and "red-letter" in action
    assert "never issued" in _orphan_words(lost, [])[0]


# --- red-letter forms: a confirmed form owes a red invoice --------------------------------------------------------

def form(**over: Any) -> SimpleNamespace:
    base: dict[str, Any] = dict(form_id=uuid.UUID(int=7), form_no="HZ202612040000000001", blue_number="26113000000001",
                                red_number="26000000000000000042", confirmed_at=T0, state="expected", gap_kind=None,
                                gap_at=None, checks=0)
    base.update(over)
    return SimpleNamespace(**base)


def test_a_confirmed_form_whose_red_invoice_is_in_the_ledger_is_met() -> None:
    red = uuid.uuid4()
    d = decide_form(form(state="gap", gap_kind="red_unrecorded", gap_at=at(5)), red_invoice_id=red,
                    at_authority=True, store_error=None, now=at(70), policy=P)
    assert d.met and not d.gap
    assert d.changes["state"] == "met" and d.changes["red_invoice_id"] == red and d.changes["next_check_at"] is None


def test_a_red_invoice_the_authority_holds_but_the_ledger_lacks_is_unrecorded_then_missing_once_lost() -> None:
    d = decide_form(form(), red_invoice_id=None, at_authority=True, store_error=None, now=at(300), policy=P)
    assert d.gap and not d.met
    assert (d.changes["state"], d.changes["gap_kind"], d.changes["gap_at"]) == ("gap", "red_unrecorded", at(300))
    assert d.changes["next_check_at"] == at(300 + P.stuck_recheck)
    assert "confirmed 5 min ago" in d.reason and "never recorded" in d.reason and "26000000000000000042" in d.reason
    assert "GET /v1/red-letter-forms/" in (d.next_action or "")
    same = form(state="gap", gap_kind="red_unrecorded", gap_at=at(300))
    again = decide_form(same, red_invoice_id=None, at_authority=True, store_error=None, now=at(360), policy=P)
    assert not again.gap and again.changes["gap_at"] == at(300)  # nothing new to say
    # The store could not be asked: the kind stays what it was.
    down = decide_form(same, red_invoice_id=None, at_authority=None, store_error="timeout", now=at(420), policy=P)
    assert not down.gap and down.changes["gap_kind"] == "red_unrecorded" and "timeout" in down.reason
    lost = decide_form(same, red_invoice_id=None, at_authority=False, store_error=None, now=at(480), policy=P)
    assert lost.gap and lost.changes["gap_kind"] == "red_missing"
    assert "neither in the ledger nor held by the tax authority" in lost.reason
