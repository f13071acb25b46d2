"""The circuit breaker in front of the tax store and the retry schedule: pure logic, a fake clock."""

from __future__ import annotations

import random

from services.sync.breaker import Breaker, State
from shared.backoff import backoff


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(threshold: int = 3) -> tuple[Breaker, Clock]:
    clock = Clock()
    return Breaker(threshold=threshold, base=1.0, cap=8.0, clock=clock, rng=random.Random(1)), clock


def test_opens_after_threshold_consecutive_failures_only() -> None:
    b, _ = make()
    b.failure("boom")
    b.failure("boom")
    assert b.state is State.CLOSED and b.allow()
    b.success()
    b.failure()
    b.failure()
    assert b.state is State.CLOSED, "a success in between resets the count"
    b.failure("HTTP 503")
    assert b.state is State.OPEN
    assert not b.allow()
    assert b.wait_time() > 0
    assert b.last_error == "HTTP 503"


def test_one_probe_after_the_interval_and_its_outcome_decides() -> None:
    b, clock = make()
    for _ in range(3):
        b.failure()
    clock.now += b.wait_time() + 0.001
    assert b.allow(), "first caller after the interval is the probe"
    assert b.state is State.HALF_OPEN
    assert not b.allow(), "only one probe at a time"
    b.failure()
    assert b.state is State.OPEN, "a failed probe opens it again at once"
    clock.now += b.wait_time() + 0.001
    assert b.allow()
    b.success()
    assert b.state is State.CLOSED and b.allow() and b.wait_time() == 0


def test_open_intervals_grow_are_capped_and_never_near_zero() -> None:
    b, clock = make(threshold=1)
    intervals = []
    for _ in range(12):
        b.failure()
        intervals.append(b.wait_time())
        clock.now += b.wait_time() + 0.001
        assert b.allow()
    # equal jitter: each interval is at least half its step, so an outage cannot become a hot loop
    steps = [min(8.0, 2.0 ** i) for i in range(12)]
    for got, step in zip(intervals, steps, strict=True):
        assert step / 2 <= got <= step
    assert max(intervals) <= 8.0
    # the number of probes in a long outage is bounded by duration / (cap / 2)
    assert sum(intervals[5:]) >= 7 * 4.0


def test_retry_delay_grows_exponentially_with_equal_jitter_and_a_cap() -> None:
    rng = random.Random(3)
    for attempt in range(1, 15):
        step = min(60.0, 0.5 * 2 ** (attempt - 1))
        for _ in range(20):
            d = backoff(attempt - 1, base=0.5, cap=60.0, jitter="equal", rng=rng)  # the sync service's retries
            assert step / 2 <= d <= step
    assert backoff(1000, base=0.5, cap=60.0, jitter="equal") <= 60.0


def test_a_store_seen_down_then_up_lets_the_probe_go_at_once() -> None:
    b, clock = make(threshold=1)
    for _ in range(4):  # open for long: the interval has grown to the cap
        b.failure("HTTP 503")
        clock.now = b.open_until
        assert b.allow()
    b.failure("HTTP 503")
    assert b.state is State.OPEN and b.wait_time() >= 4.0
    assert not b.health(True), "reachable, but never seen down while open: the interval stands"
    assert b.wait_time() >= 4.0
    assert not b.health(False) and b.wait_time() >= 4.0
    clock.now += 1
    assert b.health(True), "down, then up: probe now"
    assert b.wait_time() == 0 and b.allow() and b.state is State.HALF_OPEN and b.early_probes == 1
    b.failure("HTTP 500")  # the probe failed after all: open again, and the next health answer needs a new "down"
    assert b.state is State.OPEN and not b.health(True) and b.wait_time() > 0
    assert not b.health(False) and b.health(True) and b.early_probes == 2
    b.allow()
    b.success()
    assert b.state is State.CLOSED and not b.health(False) and not b.seen_down, "closed: health reads change nothing"


def test_a_store_that_answers_while_its_writes_fail_keeps_the_backoff() -> None:
    b, clock = make(threshold=1)
    b.failure("HTTP 500")
    until = b.open_until
    for _ in range(5):
        clock.now += 0.1
        assert not b.health(True)
    assert b.open_until == until and b.early_probes == 0
