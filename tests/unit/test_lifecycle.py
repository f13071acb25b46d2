"""The issuer's status machine (design §6, void and red-letter rules of §4)."""

from __future__ import annotations

import itertools

import pytest

from services.issuer.lifecycle import VOIDABLE, InvalidTransition, Status, can_move, describe, move

S = Status

ALLOWED = [
    (S.ACCEPTED, S.PUBLISHED),
    # a sync result may arrive before the relay has recorded "published": the event was on Kafka anyway
    (S.ACCEPTED, S.SUBMITTED),
    (S.ACCEPTED, S.RETRYING),
    (S.ACCEPTED, S.REJECTED),
    (S.SUBMITTED, S.SUBMITTED),  # a resync read back and found it: acknowledged again
    (S.PUBLISHED, S.SUBMITTED),
    (S.PUBLISHED, S.RETRYING),
    (S.PUBLISHED, S.REJECTED),
    (S.PUBLISHED, S.STUCK),
    (S.SUBMITTED, S.CONFIRMED),
    (S.SUBMITTED, S.STUCK),
    (S.RETRYING, S.RETRYING),
    (S.RETRYING, S.SUBMITTED),
    (S.RETRYING, S.REJECTED),
    (S.STUCK, S.CONFIRMED),  # "a stuck invoice that later appears becomes confirmed"
    (S.STUCK, S.VOIDED),
    (S.REJECTED, S.VOIDED),
    (S.CONFIRMED, S.RED_LETTERED),
]

FORBIDDEN = [
    (S.PUBLISHED, S.VOIDED),
    (S.ACCEPTED, S.VOIDED),
    (S.SUBMITTED, S.VOIDED),
    (S.CONFIRMED, S.VOIDED),
    (S.RETRYING, S.VOIDED),
    (S.ACCEPTED, S.CONFIRMED),
    (S.ACCEPTED, S.STUCK),
    (S.PUBLISHED, S.ACCEPTED),
    (S.SUBMITTED, S.PUBLISHED),
    (S.REJECTED, S.CONFIRMED),
    (S.REJECTED, S.SUBMITTED),
    (S.PUBLISHED, S.RED_LETTERED),
    (S.SUBMITTED, S.RED_LETTERED),
    (S.STUCK, S.RED_LETTERED),
    (S.REJECTED, S.RED_LETTERED),
    (S.CONFIRMED, S.ACCEPTED),
    # a sync result after the case opened is no proof of visibility: only the reconciler's "confirmed" ends it
    (S.STUCK, S.SUBMITTED),
    (S.STUCK, S.RETRYING),
]


def test_status_values() -> None:
    assert {s.value for s in Status} == {"accepted", "published", "submitted", "confirmed", "retrying", "rejected",
                                         "stuck", "voided", "red_lettered"}
    assert Status("red_lettered") is S.RED_LETTERED


@pytest.mark.parametrize(("current", "wanted"), ALLOWED)
def test_allowed_moves(current: Status, wanted: Status) -> None:
    assert can_move(current, wanted)
    assert move(current, wanted) is wanted


@pytest.mark.parametrize(("current", "wanted"), FORBIDDEN)
def test_forbidden_moves(current: Status, wanted: Status) -> None:
    assert not can_move(current, wanted)
    with pytest.raises(InvalidTransition) as info:
        move(current, wanted)
    assert info.value.current is current
    assert info.value.wanted is wanted
    assert f"'{current}'" in str(info.value) and f"'{wanted}'" in str(info.value)


@pytest.mark.parametrize("terminal", [S.VOIDED, S.RED_LETTERED])
def test_terminal_states_go_nowhere(terminal: Status) -> None:
    for wanted in Status:
        assert not can_move(terminal, wanted), wanted
        with pytest.raises(InvalidTransition):
            move(terminal, wanted)


def test_invalid_transition_is_a_value_error() -> None:
    assert issubclass(InvalidTransition, ValueError)


def test_only_rejected_and_stuck_are_voidable_and_both_can_move_to_voided() -> None:
    assert frozenset({S.REJECTED, S.STUCK}) == VOIDABLE
    for status in Status:
        assert can_move(status, S.VOIDED) == (status in VOIDABLE), status


def test_stuck_ends_only_confirmed_or_voided() -> None:
    assert [s for s in Status if can_move(S.STUCK, s)] == [S.CONFIRMED, S.VOIDED]


def test_a_confirmed_invoice_can_vanish_again() -> None:
    # the periodic sweep may find it gone later: a gap (retrying) or, past the limit, stuck
    assert can_move(S.CONFIRMED, S.RETRYING) and can_move(S.CONFIRMED, S.STUCK)


def test_only_confirmed_can_be_red_lettered() -> None:
    assert [s for s in Status if can_move(s, S.RED_LETTERED)] == [S.CONFIRMED]


def test_nothing_goes_back_to_accepted_or_published() -> None:
    for current, wanted in itertools.product(Status, (S.ACCEPTED, S.PUBLISHED)):
        forward = current is S.ACCEPTED and wanted is S.PUBLISHED
        assert can_move(current, wanted) == forward, (current, wanted)


def test_every_non_terminal_state_can_reach_a_terminal_or_confirmed_state() -> None:
    goals = {S.CONFIRMED, S.VOIDED, S.RED_LETTERED}
    for start in Status:
        seen, frontier = {start}, [start]
        while frontier:
            here = frontier.pop()
            for nxt in Status:
                if can_move(here, nxt) and nxt not in seen:
                    seen.add(nxt)
                    frontier.append(nxt)
        assert seen & goals, start


@pytest.mark.parametrize("status", list(Status))
def test_describe_gives_a_reason_for_every_status(status: Status) -> None:
    reason, next_action = describe(status)
    assert isinstance(reason, str) and reason.strip()
    assert reason.endswith(".")
    assert next_action is None or (isinstance(next_action, str) and next_action.strip())


def test_terminal_and_confirmed_states_have_no_next_action() -> None:
    for status in (S.CONFIRMED, S.VOIDED, S.RED_LETTERED):
        assert describe(status)[1] is None
    for status in (S.ACCEPTED, S.PUBLISHED, S.SUBMITTED, S.RETRYING, S.REJECTED, S.STUCK):
        assert describe(status)[1] is not None


def test_descriptions_are_distinct() -> None:
    reasons = [describe(s)[0] for s in Status]
    assert len(set(reasons)) == len(reasons)
