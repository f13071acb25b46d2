"""The checker's window of not asking the tax store after failed reads: while it is open no read is made, and an
answer from the store ends it, also one that arrives after a concurrent read has failed and opened it."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from services.reconciler.settings import ReconcilerSettings
from services.reconciler.store import StoreUnavailable, StoreView
from services.reconciler.worker import Reconciler


class Store:
    """A tax store reader that runs `during` while a lookup is in flight, then answers it (or fails it)."""

    def __init__(self, *, fail: bool = False, during: Callable[[], None] | None = None) -> None:
        self.fail, self.during, self.asked = fail, during, 0

    async def lookup(self, seller_tax_id: str, numbers: Sequence[str]) -> dict[str, StoreView]:
        self.asked += 1
        if self.during is not None:
            self.during()
        if self.fail:
            raise StoreUnavailable("HTTP 503")
        return {}


def reconciler(store: Store) -> Reconciler:
    settings = ReconcilerSettings(database_url="postgresql://x@h/db", admin_token="t" * 20, kafka_bootstrap="k:9092")
    return Reconciler(settings=settings, sessions=None, reader=store)  # type: ignore[arg-type]


def open_window(r: Reconciler, seconds: float = 60.0) -> None:
    """What a failed read does, with the back-off's jitter taken out: no read for `seconds`."""
    r._store_failed("timeout")
    r._store_down_until = time.monotonic() + seconds


async def test_an_answer_ends_the_window_a_concurrent_failure_opened() -> None:
    store = Store()
    r = reconciler(store)
    store.during = lambda: open_window(r)  # another seller's read fails while this one is in flight
    assert await r._look("S", ["1"]) == {}
    assert r._store_retry_in() == 0.0 and r._store_usable() and r.last_store_error is None
    assert await r._look("S", ["2"]) == {} and store.asked == 2  # and the next read is made at once


async def test_while_the_window_is_open_the_store_is_not_asked() -> None:
    store = Store(fail=True)
    r = reconciler(store)
    assert await r._look("S", ["1"]) == "HTTP 503"
    open_window(r, 30.0)
    answer = await r._look("S", ["1"])
    assert isinstance(answer, str) and "unavailable" in answer and store.asked == 1
    assert 29.0 < r._store_retry_in() <= 30.0  # what an unreachable invoice is told to wait (rules.decide)
