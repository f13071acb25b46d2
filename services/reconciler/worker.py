"""The reconciler's loops: the Kafka door (issued invoices and sync results into the ledger), the check
round (due invoices against the tax store), the sweeper (confirmed invoices, one window at a time) and a
metrics refresher. Each loop survives a database or broker outage by backing off and starting again;
nothing they decide is lost, because every decision commits with its events (writes.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter, deque
from datetime import date
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.reconciler import forms, ledger, reports, sweeps
from services.reconciler.metrics import (
    CHECK_ROUND,
    CHECKS,
    CONFIRMATION_LATENCY,
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
from services.reconciler.settings import ReconcilerSettings
from services.reconciler.store import StoreUnavailable, StoreView, TaxstoreReader
from services.reconciler.sweeps import Swept
from services.reconciler.writes import Topics
from shared.backoff import backoff
from shared.consumers import RECONCILER_LEDGER
from shared.db import transaction
from shared.events import (
    InvoiceIssued,
    InvoiceRejected,
    InvoiceSubmissionFailed,
    InvoiceSubmitted,
    InvoiceVoided,
    RedLetterDecisionRequested,
    RedLetterFormUpdated,
    RedLetterRequested,
)
from shared.kafka import HandlerTable, Received
from shared.loops import consume_forever, run_rounds
from shared.recovery import database_addresses

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
        self.group_id = RECONCILER_LEDGER.qualified(settings.topic_prefix)
        self._stopping = asyncio.Event()
        self._wake_checker = asyncio.Event()
        self._wake_sweeper = asyncio.Event()
        self._in_flight = asyncio.Semaphore(settings.max_in_flight)
        self._store_down_until = 0.0
        self._store_failures = 0
        self.last_store_error: str | None = None
        self.last_round: dict[str, object] = {}
        self._latencies: deque[tuple[float, float]] = deque(maxlen=50_000)  # (when, acceptance -> confirmation)
        self.handlers: HandlerTable[AsyncSession] = HandlerTable({
            InvoiceIssued: self._take_issued, InvoiceVoided: self._take_voided,
            InvoiceSubmitted: self._take_results, InvoiceSubmissionFailed: self._take_results,
            InvoiceRejected: self._take_results,
            RedLetterFormUpdated: self._take_forms,
        }, ignore=(RedLetterRequested, RedLetterDecisionRequested))
        # A confirmed form owes a red invoice: held as an expectation (forms.py) until its issued event arrives.
        self._wake_forms = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()
        self._wake_forms.set()
        self._wake_checker.set()
        self._wake_sweeper.set()

    def wake_checker(self) -> None:
        self._wake_checker.set()

    def wake_sweeper(self) -> None:
        self._wake_sweeper.set()

    # --- the Kafka door ---------------------------------------------------------------------------

    async def _apply(self, items: list[Received[Any]]) -> None:
        async with transaction(self.sessions) as session:
            done = await self.handlers.dispatch(session, items)
        applied: Counter[str] = done.get(self._take_results) or Counter()
        for kind, n in applied.items():  # after the commit: a rolled-back slice is not counted
            SYNC_RESULTS_TAKEN.labels(kind).inc(n)
        if self._take_results in done:
            self._wake_checker.set()

    async def _take_issued(self, session: AsyncSession, items: list[Received[InvoiceIssued]]) -> None:
        issued = [i.event for i in items]
        await ledger.intake_issued(session=session, issued=issued, policy=self.policy,
                                   sweep_interval=self.settings.sweep_interval)
        if reds := forms.red_numbers(issued):
            await forms.red_issued(session=session, keys=reds)
            self._wake_forms.set()

    async def _take_forms(self, session: AsyncSession, items: list[Received[RedLetterFormUpdated]]) -> None:
        await forms.intake_forms(session=session, updates=items, grace=self.settings.red_invoice_grace)

    async def _take_voided(self, session: AsyncSession, items: list[Received[InvoiceVoided]]) -> None:
        await ledger.apply_voided(session=session, invoice_ids=[uuid.UUID(i.envelope.subject) for i in items],
                                  topics=self.topics)

    async def _take_results(self, session: AsyncSession, items: list[Received[Any]]) -> Counter[str]:
        for i in items:
            # A placeholder row needs them (ValueError: dead-lettered).
            uuid.UUID(i.envelope.subject), uuid.UUID(i.envelope.tenant)
            if i.event.seller_tax_id is None or i.event.number is None:
                raise ValueError("a sync result needs data.seller_tax_id and data.number")
        return await ledger.apply_sync_results(session=session, results=items, policy=self.policy,
                                               topics=self.topics)

    async def run_consumer(self) -> None:
        s = self.settings
        await consume_forever(group=RECONCILER_LEDGER, prefix=s.topic_prefix, bootstrap=s.kafka_bootstrap,
                              table=self.handlers, batch_handler=self._apply, stopping=self._stopping,
                              request_timeout_ms=s.kafka_request_timeout_ms, max_poll_records=2000,
                              database_url=s.database_url)

    # --- the check round --------------------------------------------------------------------------

    def _store_usable(self) -> bool:
        return time.monotonic() >= self._store_down_until

    def _store_failed(self, error: str) -> None:
        self._store_failures += 1
        self.last_store_error = error
        self._store_down_until = time.monotonic() + backoff(self._store_failures, base=0.5, cap=30)

    def _store_ok(self) -> None:
        """The store answered: it is usable now, whatever back-off an earlier (or concurrent) failure set."""
        self._store_failures = 0
        self._store_down_until = 0.0
        self.last_store_error = None

    def _store_retry_in(self) -> float:
        return max(0.0, self._store_down_until - time.monotonic())

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
            due = await ledger.claim_due(session=session, limit=s.check_batch_size, lease_seconds=s.check_lease)
        if not due:
            return False
        groups: dict[str, list[str]] = {}
        for r in due:
            if r.content_hash is not None:
                groups.setdefault(r.seller_tax_id, []).append(r.number)
        sellers = list(groups)
        answers = await asyncio.gather(*(self._look(seller, groups[seller]) for seller in sellers))
        by_seller = dict(zip(sellers, answers, strict=True))
        retry_in = self._store_retry_in()
        seen: dict[uuid.UUID, Seen] = {}
        for r in due:
            answer = by_seller.get(r.seller_tax_id)
            if r.content_hash is None or answer is None:
                seen[r.invoice_id] = Seen("absent")
            elif isinstance(answer, str):
                seen[r.invoice_id] = Seen("unreachable", error=answer, retry_in=retry_in)
            elif (v := answer.get(r.number)) is not None:
                seen[r.invoice_id] = Seen("visible", content_hash=v.content_hash, receipt_no=v.receipt_no,
                                          review_status=v.review_status, review_due_at=v.review_due_at)
            else:
                seen[r.invoice_id] = Seen("absent")
        async with transaction(self.sessions) as session:
            stats = await ledger.apply_checks(session=session, seen=seen, policy=self.policy, topics=self.topics,
                                              timezone=s.timezone,
                                              hot_sweep=((self.hot_interval, s.sweep_hot_for)
                                                         if s.sweep_hot_for else None))
        for kind, n in stats.results.items():
            CHECKS.labels(kind).inc(n)
        for kind, n in stats.resyncs.items():
            RESYNCS.labels(kind).inc(n)
        for kind, n in stats.gaps.items():
            TRANSITIONS.labels(f"gap_{kind}").inc(n)
        TRANSITIONS.labels("confirmed").inc(stats.confirmed)
        for seconds in stats.latencies:
            CONFIRMATION_LATENCY.observe(seconds)
            self._latencies.append((time.time(), seconds))
        TRANSITIONS.labels("recovered").inc(stats.recovered)
        TRANSITIONS.labels("stuck").inc(stats.stuck)
        elapsed = time.perf_counter() - started
        CHECK_ROUND.observe(elapsed)
        self.last_round = {"checked": len(due), "seconds": round(elapsed, 3), "confirmed": stats.confirmed,
                           "resyncs": sum(stats.resyncs.values()), "stuck": stats.stuck,
                           "recovered": stats.recovered, "results": stats.results}
        return len(due) >= s.check_batch_size

    async def run_checker(self) -> None:
        await run_rounds("check", self.check_round, stopping=self._stopping, wake=self._wake_checker,
                         idle=lambda: self.settings.check_interval,
                         needs=[database_addresses(self.settings.database_url)])

    def confirmation_latency(self, window: float = 300.0) -> dict[str, float | int | None]:
        """Acceptance-to-confirmation times of the invoices confirmed in the last `window` seconds."""
        since = time.time() - window
        values = sorted(v for t, v in self._latencies if t >= since)
        if not values:
            return {"window_seconds": window, "count": 0, "p50": None, "p95": None, "max": None}

        def pct(q: float) -> float:
            return round(values[min(len(values) - 1, int(q * len(values)))], 3)

        return {"window_seconds": window, "count": len(values), "p50": pct(0.5), "p95": pct(0.95),
                "max": round(values[-1], 3)}

    # --- confirmed red-letter forms -----------------------------------------------------------------

    async def form_round(self) -> bool:
        """Look at the confirmed forms due (past their grace, or their red invoice just arrived): met, or a gap
        (the store says whether it holds the red invoice). True when the round was full."""
        s = self.settings
        async with transaction(self.sessions) as session:
            due = await forms.claim_due_forms(session=session, limit=s.check_batch_size, lease_seconds=s.check_lease)
        if not due:
            return False
        groups: dict[str, list[str]] = {}
        for r in due:
            if r.red_number:
                groups.setdefault(r.seller_tax_id, []).append(r.red_number)
        sellers = list(groups)
        answers = dict(zip(sellers, await asyncio.gather(*(self._look(x, groups[x]) for x in sellers)), strict=True))
        held: dict[uuid.UUID, bool | None] = {}
        errors: dict[uuid.UUID, str] = {}
        for r in due:
            answer = answers.get(r.seller_tax_id) if r.red_number else {}
            if isinstance(answer, str):
                held[r.form_id], errors[r.form_id] = None, answer
            else:
                held[r.form_id] = r.red_number in (answer or {})
        async with transaction(self.sessions) as session:
            done = await forms.apply_form_checks(session=session, at_authority=held, store_errors=errors,
                                                 policy=self.policy, topics=self.topics, timezone=s.timezone)
        for kind, n in (done.gaps or {}).items():
            TRANSITIONS.labels(f"gap_{kind}").inc(n)
        return len(due) >= s.check_batch_size

    async def run_forms(self) -> None:
        await run_rounds("forms", self.form_round, stopping=self._stopping, wake=self._wake_forms,
                         idle=lambda: self.settings.check_interval,
                         needs=[database_addresses(self.settings.database_url)])

    # --- the sweeper ------------------------------------------------------------------------------

    async def sweep_round(self) -> bool:
        s = self.settings
        async with transaction(self.sessions) as session:
            windows = await sweeps.claim_sweep_windows(session=session, limit=s.sweep_windows_per_round,
                                                       interval=s.sweep_interval, hot_interval=self.hot_interval)
        rechecks = 0
        for w in windows:
            result = await self.sweep_window(w.seller_tax_id, w.issue_date, w.tenant_id)
            if result is not None:
                rechecks += result.rechecks
        if rechecks:
            self._wake_checker.set()
        return len(windows) >= s.sweep_windows_per_round

    async def sweep_window(self, seller: str, issue_date: date, tenant_id: uuid.UUID) -> Swept | None:
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
            result = await sweeps.apply_sweep(session=session, seller_tax_id=seller, issue_date=issue_date,
                                              tenant_id=tenant_id, store=store,
                                              orphan_grace=self.settings.orphan_grace, topics=self.topics)
        SWEEPS.labels("done").inc()
        ORPHANS.inc(result.orphans)
        if result.vanished or result.changed:
            log.warning("sweep of %s %s: %d confirmed invoices vanished, %d changed at the tax store",
                        seller, issue_date, result.vanished, result.changed)
        return result

    @property
    def hot_interval(self) -> float:
        """How often a hot window is swept: never less often than any other window."""
        return min(self.settings.sweep_after_confirm, self.settings.sweep_interval)

    async def run_sweeper(self) -> None:
        await run_rounds("sweep", self.sweep_round, stopping=self._stopping, wake=self._wake_sweeper,
                         idle=lambda: min(self.settings.sweep_interval, 5.0),
                         needs=[database_addresses(self.settings.database_url)])

    # --- metrics ----------------------------------------------------------------------------------

    async def refresh_metrics(self) -> bool:
        async with transaction(self.sessions) as session:
            report = await reports.gap_report(session=session)
        GAPS.clear()
        for (kind, age), n in report.by_kind_age.items():
            GAPS.labels(kind, age).set(n)
        STUCK.set(report.stuck)
        OLDEST_UNCONFIRMED.set(report.oldest_unconfirmed_seconds)
        return False

    async def run_metrics(self) -> None:
        await run_rounds("metrics", self.refresh_metrics, stopping=self._stopping, idle=lambda: 5.0)
