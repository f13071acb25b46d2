"""A circuit breaker in front of the tax store, so an outage costs a probe every few seconds instead of
a hot retry loop: after `threshold` consecutive failed requests it opens for a jittered, growing interval;
then exactly one probe goes through; success closes it, failure opens it again for longer.

While it is open, the worker also asks the store a cheap read every second or so (`health`): once the store has
been seen down and answers again, the probe may go at once instead of after the rest of the open interval, so a
backlog starts draining within about a second of an outage's end, however long the interval had grown. A store that
stays reachable while its writes fail (errors, timeouts) does not shorten the interval."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from enum import StrEnum

from shared.backoff import backoff

__all__ = ["Breaker", "State"]


class State(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Breaker:
    def __init__(self, *, threshold: int, base: float, cap: float,
                 clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None) -> None:
        self.threshold = threshold
        self.base = base
        self.cap = cap
        self.clock = clock
        self.rng = rng or random.Random()
        self.state = State.CLOSED
        self.failures = 0  # consecutive
        self.openings = 0  # consecutive openings without a success in between
        self.open_until = 0.0
        self.probes = 0
        self.early_probes = 0  # probes let through early because the store was seen down, then up again
        self.seen_down = False
        self.last_error: str | None = None

    def _interval(self) -> float:
        # "Equal jitter": never shorter than half the step, so an open circuit cannot turn into a hot loop.
        return backoff(self.openings, base=self.base, cap=self.cap, jitter="equal", rng=self.rng)

    def allow(self) -> bool:
        """May a request go out now? In the open state, the first caller after the interval is the probe."""
        if self.state is State.CLOSED:
            return True
        if self.state is State.OPEN and self.clock() >= self.open_until:
            self.state = State.HALF_OPEN
            self.probes += 1
            return True
        return False

    def wait_time(self) -> float:
        """Seconds until a request may be tried (0 when closed)."""
        if self.state is State.CLOSED:
            return 0.0
        if self.state is State.HALF_OPEN:
            return 0.1  # a probe is out; its outcome decides
        return max(0.0, self.open_until - self.clock())

    def health(self, reachable: bool) -> bool:
        """A health read's answer while open. True when it lets the probe go now (the store was seen down and
        answers again)."""
        if self.state is not State.OPEN:
            return False
        if not reachable:
            self.seen_down = True
            return False
        if self.seen_down and self.clock() < self.open_until:
            self.seen_down = False
            self.open_until = self.clock()
            self.early_probes += 1
            return True
        return False

    def success(self) -> bool:
        """A request went through. True when that ends an opening of the circuit (the store is back)."""
        recovered = self.state is not State.CLOSED
        self.seen_down = False
        self.state = State.CLOSED
        self.failures = 0
        self.openings = 0
        self.last_error = None
        return recovered

    def failure(self, error: str = "") -> None:
        self.failures += 1
        self.last_error = error or self.last_error
        if self.state is State.HALF_OPEN or self.failures >= self.threshold:
            self.open_until = self.clock() + self._interval()
            self.openings += 1
            self.state = State.OPEN
