"""The reconciler's loops: the Kafka door (issued invoices and sync results into the ledger), the check
round (due invoices against the tax store), the sweeper (confirmed invoices, one window at a time) and a
metrics refresher. Each loop survives a database or broker outage by backing off and starting again;
nothing they decide is lost, because every decision commits with its events (service.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import date

from aiokafka import ConsumerRecord
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.reconciler import service
from services.reconciler.metrics import (
    CHECK_ROUND,
    CHECKS,
    GAPS,
    OLDEST_UNCONFIRMED,
    ORPHANS,
    RESYNCS,
    STUCK,
    SWEEPS,
    SYNC_RESULTS_TAKEN,
    TRANSITIONS,
)
from services.reconciler.rules import Policy, Seen
from services.reconciler.service import Issued, Topics
from services.reconciler.settings import ReconcilerSettings
from services.reconciler.store import StoreUnavailable, StoreView, TaxstoreReader
from shared.db import transaction
from shared.envelope import Envelope
from shared.events import INVOICE_ISSUED, INVOICE_VOIDED, SYNC_RESULT_TYPES
from shared.kafka import ConsumeLoop, backoff_delay, make_consumer, make_producer
from shared.metrics import DEAD_LETTERS
from shared.topics import INVOICE_EVENTS, SYNC_RESULTS, dlq_name

__all__ = ["Reconciler"]

log = logging.getLogger(__name__)


class Reconciler:
    def __init__(self, *, settings: ReconcilerSettings, sessions: async_sessionmaker[AsyncSession],
                 reader: TaxstoreReader) -> None:
        self.settings = settings
        self.sessions = sessions
        self.reader = reader
        self.policy = Policy.of(settings)
        self.topics = Topics.of(settings.topic_prefix)
        self.group_id = f"{settings.topic_prefix}reconciler.ledger"
        self._stopping = asyncio.Event()
        self._wake_checker = asyncio.Event()
        self._wake_sweeper = asyncio.Event()
        self._in_flight = asyncio.Semaphore(settings.max_in_flight)
        self._store_down_until = 0.0
        self._store_failures = 0
        self.last_store_error: str | None = None
        self.last_round: dict[str, object] = {}

    def stop(self) -> None:
        self._stopping.set()
        self._wake_checker.set()
        self._wake_sweeper.set()

    def wake_checker(self) -> None:
        self._wake_checker.set()

    def wake_sweeper(self) -> None:
        self._wake_sweeper.set()

    async def _sleep(self, seconds: float, wake: asyncio.Event | None = None) -> None:
        waiter = wake or self._stopping
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(waiter.wait(), max(seconds, 0))

    async def _forever(self, name: str, round_: Callable[[], Awaitable[bool]], wake: asyncio.Event,
                       idle: Callable[[], float]) -> None:
        """Run rounds until stopped: again at once after a busy round, else after `idle()` or a wake-up."""
        failures = 0
        while not self._stopping.is_set():
            try:
                busy = await round_()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the database may be away; keep going
                failures += 1
                log.warning("%s round failed (%s: %s)", name, type(exc).__name__, exc)
                await self._sleep(backoff_delay(failures, base=0.5, cap=15))
                continue
            if busy:
                await asyncio.sleep(0)
                continue
            wake.clear()
            await self._sleep(idle(), wake)

    # --- the Kafka door ---------------------------------------------------------------------------

    async def _apply(self, items: list[tuple[Envelope, ConsumerRecord]]) -> None:
        issued: list[Issued] = []
        voided: list[uuid.UUID] = []
        results: list[Envelope] = []
        for env, _ in items:
            if env.type == INVOICE_ISSUED:
                event = Issued.model_validate(env.data)
                if str(event.invoice_id) != env.subject:
                    raise ValueError("data.invoice_id differs from the envelope subject")
                issued.append(event)
            elif env.type == INVOICE_VOIDED:
                voided.append(uuid.UUID(env.subject))
            elif env.type in SYNC_RESULT_TYPES:
                uuid.UUID(env.subject), uuid.UUID(env.tenant)
                if not isinstance(env.data.get("seller_tax_id"), str) or not isinstance(env.data.get("number"), str):
                    raise ValueError("a sync result needs data.seller_tax_id and data.number")
                results.append(env)
        if not (issued or voided or results):
            return
        async with transaction(self.sessions) as session:
            await service.intake_issued(session=session, issued=issued, policy=self.policy,
                                        sweep_interval=self.settings.sweep_interval)
            await service.apply_voided(session=session, invoice_ids=voided, topics=self.topics)
            applied = await service.apply_sync_results(session=session, events=results, policy=self.policy,
                                                       topics=self.topics)
        for kind, n in applied.items():  # after the commit: a rolled-back slice is not counted
            SYNC_RESULTS_TAKEN.labels(kind).inc(n)
        if results:
            self._wake_checker.set()

    async def run_consumer(self) -> None:
        s = self.settings
        topics = [INVOICE_EVENTS.qualified(s.topic_prefix), SYNC_RESULTS.qualified(s.topic_prefix)]
        attempt = 0
        while not self._stopping.is_set():
            consumer = make_consumer(s.kafka_bootstrap, group_id=self.group_id, max_poll_records=2000,
                                     request_timeout_ms=s.kafka_request_timeout_ms)
            producer = make_producer(s.kafka_bootstrap, request_timeout_ms=s.kafka_request_timeout_ms)
            loop = ConsumeLoop(consumer=consumer, producer=producer, topics=topics, batch_handler=self._apply,
                               dlq_topic=dlq_name, group_id=self.group_id,
                               on_dead_letter=lambda t: DEAD_LETTERS.labels("reconciler", t).inc())
            watch = asyncio.create_task(self._stop_when_stopping(loop))
            try:
                await asyncio.wait_for(consumer.start(), 30)
                await asyncio.wait_for(producer.start(), 30)
                attempt = 0
                await loop.run()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Kafka or the DB failed: start again from committed offsets
                delay = backoff_delay(attempt, base=0.5, cap=15)
                attempt += 1
                log.warning("ledger consumer failed (%s: %s); restarting in %.1fs", type(exc).__name__, exc, delay)
                await self._sleep(delay)
            finally:
                watch.cancel()
                for client in (consumer, producer):
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(client.stop(), 10)

    async def _stop_when_stopping(self, loop: ConsumeLoop) -> None:
        await self._stopping.wait()
        loop.stop()

    # --- the check round --------------------------------------------------------------------------

    def _store_usable(self) -> bool:
        return time.monotonic() >= self._store_down_until

    def _store_failed(self, error: str) -> None:
        self._store_failures += 1
        self.last_store_error = error
        self._store_down_until = time.monotonic() + backoff_delay(self._store_failures, base=0.5, cap=30)

    def _store_ok(self) -> None:
        self._store_failures = 0
        self.last_store_error = None

    async def _look(self, seller: str, numbers: list[str]) -> dict[str, StoreView] | str:
        """The store's view of these numbers, or why it could not be read."""
        if not self._store_usable():
            return f"tax store unavailable ({self.last_store_error})"
        async with self._in_flight:
            try:
                found = await self.reader.lookup(seller, numbers)
            except StoreUnavailable as exc:
                self._store_failed(str(exc))
                return str(exc)
        self._store_ok()
        return found

    async def check_round(self) -> bool:
        """Check the due invoices once. True when the round was full (look again at once)."""
        s = self.settings
        started = time.perf_counter()
        async with transaction(self.sessions) as session:
            due = await service.claim_due(session=session, limit=s.check_batch_size, lease_seconds=s.check_lease)
        if not due:
            return False
        groups: dict[str, list[str]] = {}
        for r in due:
            if r.content_hash is not None:
                groups.setdefault(r.seller_tax_id, []).append(r.number)
        sellers = list(groups)
        answers = await asyncio.gather(*(self._look(seller, groups[seller]) for seller in sellers))
        by_seller = dict(zip(sellers, answers, strict=True))
        seen: dict[uuid.UUID, Seen] = {}
        for r in due:
            answer = by_seller.get(r.seller_tax_id)
            if r.content_hash is None or answer is None:
                seen[r.invoice_id] = Seen("absent")
            elif isinstance(answer, str):
                seen[r.invoice_id] = Seen("unreachable", error=answer)
            elif (v := answer.get(r.number)) is not None:
                seen[r.invoice_id] = Seen("visible", content_hash=v.content_hash, receipt_no=v.receipt_no)
            else:
                seen[r.invoice_id] = Seen("absent")
        async with transaction(self.sessions) as session:
            stats = await service.apply_checks(session=session, seen=seen, policy=self.policy, topics=self.topics,
                                               timezone=s.timezone)
        for kind, n in stats.results.items():
            CHECKS.labels(kind).inc(n)
        for kind, n in stats.resyncs.items():
            RESYNCS.labels(kind).inc(n)
        for kind, n in stats.gaps.items():
            TRANSITIONS.labels(f"gap_{kind}").inc(n)
        TRANSITIONS.labels("confirmed").inc(stats.confirmed)
        TRANSITIONS.labels("recovered").inc(stats.recovered)
        TRANSITIONS.labels("stuck").inc(stats.stuck)
        elapsed = time.perf_counter() - started
        CHECK_ROUND.observe(elapsed)
        self.last_round = {"checked": len(due), "seconds": round(elapsed, 3), "confirmed": stats.confirmed,
                           "resyncs": sum(stats.resyncs.values()), "stuck": stats.stuck,
                           "recovered": stats.recovered, "results": stats.results}
        return len(due) >= s.check_batch_size

    async def run_checker(self) -> None:
        await self._forever("check", self.check_round, self._wake_checker, lambda: self.settings.check_interval)

    # --- the sweeper ------------------------------------------------------------------------------

    async def sweep_round(self) -> bool:
        s = self.settings
        async with transaction(self.sessions) as session:
            windows = await service.claim_sweep_windows(session=session, limit=s.sweep_windows_per_round,
                                                        interval=s.sweep_interval)
        rechecks = 0
        for w in windows:
            result = await self.sweep_window(w.seller_tax_id, w.issue_date, w.tenant_id)
            if result is not None:
                rechecks += result["vanished"] + result["changed"] + result["seen_unconfirmed"]
        if rechecks:
            self._wake_checker.set()
        return len(windows) >= s.sweep_windows_per_round

    async def sweep_window(self, seller: str, issue_date: date, tenant_id: uuid.UUID) -> dict[str, int] | None:
        store: dict[str, StoreView] = {}
        try:
            async with self._in_flight:
                async for page in self.reader.listing(seller, issue_date, issue_date):
                    store.update((v.number, v) for v in page)
        except StoreUnavailable as exc:
            SWEEPS.labels("unreachable").inc()
            log.info("sweep of %s %s postponed: %s", seller, issue_date, exc)
            return None
        async with transaction(self.sessions) as session:
            result = await service.apply_sweep(session=session, seller_tax_id=seller, issue_date=issue_date,
                                               tenant_id=tenant_id, store=store,
                                               orphan_grace=self.settings.orphan_grace, topics=self.topics)
        SWEEPS.labels("done").inc()
        ORPHANS.inc(result["orphans"])
        if result["vanished"] or result["changed"]:
            log.warning("sweep of %s %s: %d confirmed invoices vanished, %d changed at the tax store",
                        seller, issue_date, result["vanished"], result["changed"])
        return result

    async def run_sweeper(self) -> None:
        await self._forever("sweep", self.sweep_round, self._wake_sweeper,
                            lambda: min(self.settings.sweep_interval, 5.0))

    # --- metrics ----------------------------------------------------------------------------------

    async def refresh_metrics(self) -> bool:
        async with transaction(self.sessions) as session:
            report = await service.gap_report(session=session)
        GAPS.clear()
        for (kind, age), n in report["by_kind_age"].items():
            GAPS.labels(kind, age).set(n)
        STUCK.set(report["stuck"])
        OLDEST_UNCONFIRMED.set(report["oldest_unconfirmed_seconds"])
        return False

    async def run_metrics(self) -> None:
        await self._forever("metrics", self.refresh_metrics, asyncio.Event(), lambda: 5.0)
