"""The fault generator must be reproducible and its knobs independent, or a failing fault scenario
cannot be replayed and tuning one fault would silently reshuffle all the others."""

from __future__ import annotations

import random
from dataclasses import asdict

import pytest

from services.taxstore.faults import DRAWS_PER_ITEM, DRAWS_PER_REQUEST, FaultInjector, Faults
from services.taxstore.settings import TaxstoreSettings

MIXED = Faults(error_rate=0.2, timeout_rate=0.2, drop_rate=0.3, corrupt_rate=0.1, latency_ms=5,
               latency_jitter_ms=10, seed=1234)
SIZES = [0, 3, 1, 0, 10, 2, 0, 0, 7, 1] * 5  # reads (0) and writes of several sizes, interleaved


def plans(faults: Faults, sizes: list[int] = SIZES) -> list:  # type: ignore[type-arg]
    injector = FaultInjector(faults)
    return [injector.plan(items=n) for n in sizes]


def test_same_seed_same_decisions() -> None:
    assert plans(MIXED) == plans(MIXED)
    assert plans(MIXED) != plans(Faults(**{**asdict(MIXED), "seed": 4321}))


def test_changing_one_rate_does_not_move_the_others() -> None:
    base = plans(MIXED)
    more_drops = plans(Faults(**{**asdict(MIXED), "drop_rate": 0.9}))
    assert [p.error for p in more_drops] == [p.error for p in base]
    assert [p.timeout for p in more_drops] == [p.timeout for p in base]
    assert [[i.corrupt for i in p.items] for p in more_drops] == [[i.corrupt for i in p.items] for p in base]
    assert [p.latency_s for p in more_drops] == [p.latency_s for p in base]
    assert [[i.drop for i in p.items] for p in more_drops] != [[i.drop for i in p.items] for p in base]

    no_errors = plans(Faults(**{**asdict(MIXED), "error_rate": 0.0}))
    assert [[i.drop for i in p.items] for p in no_errors] == [[i.drop for i in p.items] for p in base]
    assert [[i.applied_on_timeout for i in p.items] for p in no_errors] == \
        [[i.applied_on_timeout for i in p.items] for p in base]


def test_a_fixed_number_of_draws_per_request_and_item() -> None:
    # After a 4-item write the next request's first draw (its latency jitter) is the sequence's
    # (3 + 4 x 3 + 1)th value, whatever the rates.
    for rates in ({}, {"error_rate": 1.0, "drop_rate": 0.5, "corrupt_rate": 1.0, "timeout_rate": 0.3}):
        injector = FaultInjector(Faults(seed=99, latency_jitter_ms=1000, **rates))
        injector.plan(items=4)
        reference = random.Random(99)
        for _ in range(DRAWS_PER_REQUEST + 4 * DRAWS_PER_ITEM):
            reference.random()
        assert injector.plan().latency_s == pytest.approx(reference.random())


def test_outage_refuses_without_drawing() -> None:
    injector = FaultInjector(MIXED)
    expected = plans(MIXED, [2, 0, 5])
    first = injector.plan(items=2)
    injector.update(outage=True)
    refused = injector.plan(items=5)
    assert refused.outage and refused.items == () and not refused.error and not refused.timeout
    injector.update(outage=False)
    assert [first, injector.plan(items=0), injector.plan(items=5)] == expected


def test_rate_zero_never_and_rate_one_always() -> None:
    never = plans(Faults(seed=5))
    assert not any(p.error or p.timeout or any(i.drop or i.corrupt for i in p.items) for p in never)
    always = plans(Faults(seed=5, error_rate=1, timeout_rate=1, drop_rate=1, corrupt_rate=1))
    assert all(p.error and p.timeout and all(i.drop and i.corrupt for i in p.items) for p in always)


def test_latency_is_fixed_plus_bounded_jitter() -> None:
    latencies = [p.latency_s for p in plans(Faults(seed=3, latency_ms=100, latency_jitter_ms=50), [0] * 200)]
    assert all(0.1 <= s <= 0.15 for s in latencies)
    assert len(set(latencies)) > 100
    assert {p.latency_s for p in plans(Faults(seed=3, latency_ms=100), [0] * 20)} == {0.1}


def test_about_half_the_items_of_a_timed_out_write_are_applied() -> None:
    [plan] = plans(Faults(seed=8, timeout_rate=1), [2000])
    applied = sum(i.applied_on_timeout for i in plan.items)
    assert plan.timeout and 850 < applied < 1150


def test_naming_the_seed_restarts_the_sequence() -> None:
    injector = FaultInjector(MIXED)
    first = [injector.plan(items=3) for _ in range(5)]
    injector.update(drop_rate=MIXED.drop_rate)  # no seed: the sequence continues
    assert [injector.plan(items=3) for _ in range(5)] != first
    injector.update(seed=MIXED.seed)
    assert [injector.plan(items=3) for _ in range(5)] == first
    with pytest.raises(TypeError):
        injector.update(colour="red")


def test_plans_carry_the_knobs_they_were_taken_with() -> None:
    injector = FaultInjector(Faults(visibility_delay_ms=250, timeout_hang_ms=1500))
    plan = injector.plan()
    assert (plan.visibility_delay_ms, plan.hang_s) == (250, 1.5)


def test_faults_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAPIAO_FAULT_ERROR_RATE", "0.25")
    monkeypatch.setenv("FAPIAO_FAULT_OUTAGE", "true")
    monkeypatch.setenv("FAPIAO_FAULT_SEED", "17")
    settings = TaxstoreSettings(database_url="postgresql://u@localhost/db", admin_token="x" * 20, env="test")
    faults = Faults.from_settings(settings)
    assert (faults.error_rate, faults.outage, faults.seed, faults.timeout_hang_ms) == (0.25, True, 17, 30_000)
    assert set(faults.as_dict()) == {n.removeprefix("fault_") for n in TaxstoreSettings.model_fields
                                     if n.startswith("fault_")}
