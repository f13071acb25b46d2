"""The issuer's status, derived from the latest facts (lifecycle.derive), and why a late fact cannot lie."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.issuer.lifecycle import (
    FINAL,
    SETTLED,
    VOIDABLE,
    Facts,
    Status,
    derive,
    describe,
    finding_of,
    sync_status_of,
)
from shared.events import (
    CASE_UPDATED,
    INVOICE_AWAITING_VISIBILITY,
    INVOICE_CONFIRMED,
    INVOICE_GAP_FOUND,
    INVOICE_REJECTED,
    INVOICE_REVIEW_UPDATED,
    INVOICE_STUCK,
    INVOICE_SUBMISSION_FAILED,
    INVOICE_SUBMITTED,
)

S = Status


def test_status_values() -> None:
    assert {s.value for s in Status} == {"accepted", "published", "submitted", "confirmed", "retrying", "rejected",
                                         "stuck", "voided", "red_lettered", "under_review", "review_denied"}
    assert VOIDABLE == {S.REJECTED, S.STUCK}
    assert FINAL == {S.VOIDED, S.RED_LETTERED} and SETTLED == {S.CONFIRMED, *FINAL}


# --- the rules one by one -------------------------------------------------------------------

def test_with_no_facts_the_issuers_own_word_stands() -> None:
    assert derive(Facts()) == (S.ACCEPTED, "own")
    assert derive(Facts(own=S.PUBLISHED)) == (S.PUBLISHED, "own")


def test_a_sync_result_decides_while_the_reconciler_has_said_nothing() -> None:
    assert derive(Facts(own=S.PUBLISHED, sync=S.SUBMITTED, sync_seq=1)) == (S.SUBMITTED, "sync")
    assert derive(Facts(own=S.PUBLISHED, sync=S.RETRYING, sync_seq=3)) == (S.RETRYING, "sync")


def test_the_regression_late_sync_results_after_confirmed_change_nothing() -> None:
    # The drill: confirmed at sync seq 7; attempt 8 failed, attempt 9 found it -> it stayed "submitted" for good.
    confirmed = Facts(own=S.PUBLISHED, sync=S.RETRYING, sync_seq=7, finding=S.CONFIRMED, finding_sync_seq=7)
    for late in (S.RETRYING, S.SUBMITTED, S.REJECTED):
        for seq in (8, 9, 50):
            assert derive(replace(confirmed, sync=late, sync_seq=seq)) == (S.CONFIRMED, "reconciler"), (late, seq)


def test_only_a_later_finding_reopens_a_confirmed_invoice() -> None:
    base = Facts(own=S.PUBLISHED, sync=S.SUBMITTED, sync_seq=2, finding=S.CONFIRMED, finding_sync_seq=2)
    assert derive(replace(base, finding=S.RETRYING)) == (S.RETRYING, "reconciler")  # the sweep found it gone
    assert derive(replace(base, finding=S.STUCK)) == (S.STUCK, "reconciler")


def test_stuck_ends_only_by_confirmation_or_a_rejection_the_reconciler_had_not_seen() -> None:
    stuck = Facts(own=S.PUBLISHED, sync=S.RETRYING, sync_seq=4, finding=S.STUCK, finding_sync_seq=4)
    assert derive(replace(stuck, sync=S.SUBMITTED, sync_seq=5)) == (S.STUCK, "reconciler")
    assert derive(replace(stuck, sync=S.RETRYING, sync_seq=5)) == (S.STUCK, "reconciler")
    assert derive(replace(stuck, sync=S.REJECTED, sync_seq=5)) == (S.REJECTED, "sync")
    assert derive(replace(stuck, sync=S.REJECTED, sync_seq=4)) == (S.STUCK, "reconciler")  # it knew, and said stuck
    assert derive(replace(stuck, finding=S.CONFIRMED)) == (S.CONFIRMED, "reconciler")


def test_a_sync_result_the_finding_already_took_into_account_is_history() -> None:
    gap = Facts(own=S.PUBLISHED, sync=S.SUBMITTED, sync_seq=3, finding=S.RETRYING, finding_sync_seq=3)
    assert derive(gap) == (S.RETRYING, "reconciler")
    # the resync it asked for: acknowledged again, which the reconciler has not seen yet
    assert derive(replace(gap, sync_seq=4)) == (S.SUBMITTED, "sync")


def test_awaiting_visibility_explains_an_acknowledged_invoice() -> None:
    # the finding can be applied before the sync result it follows (two topics): same words either way
    assert derive(Facts(own=S.PUBLISHED, finding=S.SUBMITTED, finding_sync_seq=1)) == (S.SUBMITTED, "reconciler")
    assert derive(Facts(own=S.PUBLISHED, sync=S.SUBMITTED, sync_seq=1, finding=S.SUBMITTED,
                        finding_sync_seq=1)) == (S.SUBMITTED, "reconciler")


def test_a_held_invoice_is_under_review_until_the_bureau_decides() -> None:
    held = Facts(own=S.PUBLISHED, sync=S.SUBMITTED, sync_seq=1, finding=S.UNDER_REVIEW, finding_sync_seq=1)
    assert derive(held) == (S.UNDER_REVIEW, "reconciler")
    # An acknowledgement the reconciler had seen is no approval; one it had not seen yet is newer news.
    assert derive(replace(held, sync_seq=1)) == (S.UNDER_REVIEW, "reconciler")
    assert derive(replace(held, finding=S.CONFIRMED)) == (S.CONFIRMED, "reconciler")  # approved
    assert finding_of(INVOICE_REVIEW_UPDATED, "review") == (True, S.UNDER_REVIEW)
    assert finding_of(INVOICE_REVIEW_UPDATED, "denied") == (True, S.REVIEW_DENIED)


def test_a_denied_review_stands_against_late_sync_results() -> None:
    denied = Facts(own=S.PUBLISHED, sync=S.SUBMITTED, sync_seq=1, finding=S.REVIEW_DENIED, finding_sync_seq=1)
    for late in (S.SUBMITTED, S.RETRYING, S.REJECTED):
        assert derive(replace(denied, sync=late, sync_seq=5)) == (S.REVIEW_DENIED, "reconciler")
    # ... but a red-letter or a void of the seller's own is final, whatever the bureau said.
    assert derive(replace(denied, own=S.RED_LETTERED)) == (S.RED_LETTERED, "own")


def test_a_final_status_of_the_issuers_own_is_never_overridden() -> None:
    for own in FINAL:
        for finding in (None, S.CONFIRMED, S.STUCK, S.RETRYING):
            assert derive(Facts(own=own, sync=S.SUBMITTED, sync_seq=9, finding=finding)) == (own, "own")


def test_the_issuers_own_word_is_only_its_own() -> None:
    with pytest.raises(ValueError):
        Facts(own=S.CONFIRMED)


def test_what_each_event_says() -> None:
    assert sync_status_of(INVOICE_SUBMITTED) is S.SUBMITTED
    assert sync_status_of(INVOICE_SUBMISSION_FAILED) is S.RETRYING
    assert sync_status_of(INVOICE_REJECTED) is S.REJECTED
    with pytest.raises(ValueError):
        sync_status_of(INVOICE_CONFIRMED)
    # the ledger state sent with the event is the finding: a gap found while stuck stays stuck
    assert finding_of(INVOICE_GAP_FOUND, "stuck") == (True, S.STUCK)
    assert finding_of(INVOICE_AWAITING_VISIBILITY, "pending") == (True, None)
    assert finding_of(CASE_UPDATED, "confirmed") == (True, S.CONFIRMED)
    # older events without it: their type
    assert finding_of(INVOICE_CONFIRMED, None) == (True, S.CONFIRMED)
    assert finding_of(INVOICE_STUCK, None) == (True, S.STUCK)
    assert finding_of(CASE_UPDATED, None) == (False, None)
    with pytest.raises(ValueError):
        finding_of(INVOICE_CONFIRMED, "lost")


@pytest.mark.parametrize("status", list(Status))
def test_describe_gives_a_reason_for_every_status(status: Status) -> None:
    reason, next_action = describe(status)
    assert reason.strip() and reason.endswith(".")
    assert (next_action is None) == (status in SETTLED)


# --- every interleaving -----------------------------------------------------------------------
# A history is what happened, in the order the facts were made: sync results numbered 1..n, and findings,
# each made knowing the sync results before it. Kafka delivers each topic in order but the two topics
# interleave arbitrarily, and anything may be delivered again. Whatever the delivery, the issuer must end on
# what the last authoritative fact implies — computed here by walking the history in the order it was made.

@dataclass(frozen=True)
class SyncResult:
    seq: int
    status: Status


@dataclass(frozen=True)
class Finding:
    seq: int            # the reconciler's own sequence
    status: Status
    sync_seen: int      # the sync results it had taken into account


_SYNC = st.sampled_from([S.SUBMITTED, S.RETRYING, S.REJECTED])
# A ledger's path: awaiting/gap until confirmed or stuck; stuck only ends confirmed; confirmed may reopen.
_NEXT_FINDING = {None: [S.SUBMITTED, S.RETRYING, S.CONFIRMED, S.STUCK], S.SUBMITTED: [S.RETRYING, S.CONFIRMED, S.STUCK],
                 S.RETRYING: [S.RETRYING, S.CONFIRMED, S.STUCK], S.STUCK: [S.STUCK, S.CONFIRMED],
                 S.CONFIRMED: [S.RETRYING, S.STUCK, S.CONFIRMED]}


@st.composite
def random_history(draw: st.DrawFn) -> list[SyncResult | Finding]:
    history: list[SyncResult | Finding] = []
    n_sync = n_finding = 0
    last_finding: Status | None = None
    rejected = False
    for _ in range(draw(st.integers(1, 14))):
        if not rejected and draw(st.booleans()):
            n_sync += 1
            status = draw(_SYNC)
            rejected = status is S.REJECTED  # the sync service stops there
            history.append(SyncResult(n_sync, status))
        else:
            last_finding = draw(st.sampled_from(_NEXT_FINDING[last_finding]))
            n_finding += 1
            history.append(Finding(n_finding, last_finding, n_sync))
    return history


def truth(history: list[SyncResult | Finding]) -> Status:
    """The status walking the facts in the order they were made, by the plain-language rules."""
    status = S.PUBLISHED
    for fact in history:
        if isinstance(fact, Finding):
            status = fact.status
        elif status is S.CONFIRMED:
            continue  # nothing the sync service says undoes what the reconciler saw
        elif status is S.STUCK and fact.status is not S.REJECTED:
            continue  # a case stays open until the invoice is seen (or refused)
        else:
            status = fact.status
    return status


@st.composite
def deliveries(draw: st.DrawFn, history: list[SyncResult | Finding]) -> list[SyncResult | Finding]:
    syncs = [f for f in history if isinstance(f, SyncResult)]
    findings = [f for f in history if isinstance(f, Finding)]
    out: list[SyncResult | Finding] = []
    i = j = 0
    while i < len(syncs) or j < len(findings):
        take_sync = j >= len(findings) or (i < len(syncs) and draw(st.booleans()))
        if take_sync:
            out.append(syncs[i])
            i += 1
        else:
            out.append(findings[j])
            j += 1
        if out and draw(st.integers(0, 4)) == 0:  # a redelivery of something already seen
            out.append(draw(st.sampled_from(out)))
    return out


def apply(delivered: list[SyncResult | Finding]) -> Status:
    """What the issuer's two handlers do with the registers (feeds/sync_results.py, feeds/reconciliation.py)."""
    facts, recon_seq = Facts(own=S.PUBLISHED), 0
    for fact in delivered:
        if isinstance(fact, SyncResult):
            if fact.seq > facts.sync_seq:
                facts = replace(facts, sync=fact.status, sync_seq=fact.seq)
        elif fact.seq > recon_seq:
            recon_seq = fact.seq
            facts = replace(facts, finding=fact.status, finding_sync_seq=fact.sync_seen)
    return derive(facts)[0]


@settings(max_examples=3000, deadline=None)
@given(st.data())
def test_any_delivery_order_ends_on_what_the_last_authoritative_fact_implies(data: st.DataObject) -> None:
    history = data.draw(random_history())
    delivered = data.draw(deliveries(history))
    assert apply(delivered) is truth(history), (history, delivered)


@settings(max_examples=1000, deadline=None)
@given(random_history())
def test_once_confirmed_and_not_reopened_any_number_of_late_results_leave_it_confirmed(history: list) -> None:
    findings = [f for f in history if isinstance(f, Finding)]
    if not findings or findings[-1].status is not S.CONFIRMED:
        history = [*history, Finding(len(findings) + 1, S.CONFIRMED,
                                     sum(isinstance(f, SyncResult) for f in history))]
    n = sum(isinstance(f, SyncResult) for f in history)
    late = [SyncResult(n + k, s) for k, s in enumerate((S.RETRYING, S.SUBMITTED, S.RETRYING), start=1)]
    assert apply([*history, *late]) is S.CONFIRMED
