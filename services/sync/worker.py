"""The two doors into the sync service's use cases: the Kafka loop (new events) and the retry scheduler
(due rows in the ledger). Both submit through `attempt()`, behind one circuit breaker, so an outage at the
tax store pauses everything at once: the consumer stops fetching (Kafka keeps the backlog; lag shows it),
the scheduler stops claiming, and one probe at a time tests whether the store is back.

Offsets are committed only after the outcomes of a poll are durable in the ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from datetime import UTC, datetime, timedelta

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.sync import service
from services.sync.breaker import Breaker, State
from services.sync.client import ItemResult, RequestFailed, TaxstoreClient
from services.sync.metrics import BREAKER_STATE, OUTCOMES, REQUEST_LATENCY, RETRY_BACKLOG
from services.sync.service import Outcome, Pending
from services.sync.settings import SyncSettings
from shared.db import transaction
from shared.envelope import Envelope, EnvelopeError, decode
from shared.events import INVOICE_ISSUED, INVOICE_VOIDED, RESYNC_INVOICE, Issued
from shared.kafka import CommitOnRevoke, backoff_delay, consumer_lag, dead_letter, make_consumer
from shared.metrics import CONSUMER_LAG, DEAD_LETTERS
from shared.topics import INVOICE_EVENTS, RESYNC_REQUESTS, SYNC_RESULTS, dlq_name

__all__ = ["Syncer"]

log = logging.getLogger(__name__)


class Syncer:
    def __init__(self, *, settings: SyncSettings, sessions: async_sessionmaker[AsyncSession], client: TaxstoreClient,
                 producer: AIOKafkaProducer, breaker: Breaker | None = None) -> None:
        self.settings = settings
        self.sessions = sessions
        self.client = client
        self.producer = producer
        self.breaker = breaker or Breaker(threshold=settings.breaker_threshold, base=settings.breaker_base,
                                          cap=settings.breaker_cap)
        prefix = settings.topic_prefix
        self.events_topic = INVOICE_EVENTS.qualified(prefix)
        self.resync_topic = RESYNC_REQUESTS.qualified(prefix)
        self.results_topic = SYNC_RESULTS.qualified(prefix)
        self.group_id = f"{prefix}sync.submit"
        self.lease = 2 * (settings.submit_timeout + settings.read_timeout + settings.connect_timeout) + 10
        self._in_flight = asyncio.Semaphore(settings.max_in_flight)
        self._wake_scheduler = asyncio.Event()
        self._stopping = asyncio.Event()
        self._done: dict[TopicPartition, int] = {}
        self.consumer: AIOKafkaConsumer | None = None
        self.paused = False

    def stop(self) -> None:
        self._stopping.set()
        self._wake_scheduler.set()

    # --- submitting ---------------------------------------------------------------------------

    def _deferred(self, p: Pending) -> Outcome:
        wait = self.breaker.wait_time() + random.uniform(0, 1)  # spread the restart
        return Outcome(
            p.invoice_id, "deferred", p.attempts, ambiguous=p.ambiguous,
            error=f"not sent: the tax store is unavailable (circuit open: {self.breaker.last_error or 'failures'})",
            next_attempt_at=datetime.now(UTC) + timedelta(seconds=wait),
        )

    def _failed(self, p: Pending, exc: RequestFailed, *, ambiguous: bool) -> Outcome:
        attempt = p.attempts + 1
        delay = service.retry_delay(attempt, base=self.settings.retry_base, cap=self.settings.retry_cap)
        return Outcome(p.invoice_id, "failed", attempt, http_status=exc.http_status, latency_ms=exc.latency_ms,
                       error=str(exc), ambiguous=ambiguous,
                       next_attempt_at=datetime.now(UTC) + timedelta(seconds=delay))

    async def attempt(self, pending: list[Pending]) -> list[Outcome]:
        """One attempt for each invoice: read back the ambiguous ones, submit the rest in batches."""
        outcomes: list[Outcome] = []
        to_submit = [p for p in pending if not p.ambiguous]
        groups: dict[tuple[str, str], list[Pending]] = {}
        for p in pending:
            if p.ambiguous:
                groups.setdefault((p.seller_tax_id, str(p.content.get("issue_date", ""))), []).append(p)
        if groups:
            for settled, resubmit in await asyncio.gather(*(self._read_back(g) for g in groups.values())):
                outcomes.extend(settled)
                to_submit.extend(resubmit)
        size = self.settings.submit_batch_size
        chunks = [to_submit[i:i + size] for i in range(0, len(to_submit), size)]
        for chunk_outcomes in await asyncio.gather(*(self._submit_chunk(c) for c in chunks)):
            outcomes.extend(chunk_outcomes)
        for o in outcomes:
            OUTCOMES.labels(o.how if o.kind == "submitted" else o.kind).inc()
        return outcomes

    async def _read_back(self, group: list[Pending]) -> tuple[list[Outcome], list[Pending]]:
        """Read back one seller's ambiguous invoices of one issue date: (settled outcomes, to resubmit).

        A few are looked up one by one; many at once (after a timed-out batch) through the bulk listing,
        one request per thousand. Found with our content hash -> submitted; absent or different -> resubmit
        (identical content is idempotent at the store and repairs a damaged copy).
        """
        seller, issue_date = group[0].seller_tax_id, str(group[0].content.get("issue_date", ""))
        async with self._in_flight:
            if not self.breaker.allow():
                return [self._deferred(p) for p in group], []
            try:
                with REQUEST_LATENCY.labels("read_back").time():
                    if len(group) <= 3 or not issue_date:
                        found = {p.number: rb for p in group
                                 if (rb := await self.client.read_back(seller, p.number)) is not None}
                    else:
                        found = await self.client.read_back_listing(seller, issue_date)
            except RequestFailed as exc:
                self.breaker.failure(str(exc))
                return [self._failed(p, exc, ambiguous=True) for p in group], []
            self.breaker.success()
        settled, resubmit = [], []
        for p in group:
            rb = found.get(p.number)
            if rb is not None and rb.content_hash == p.content_hash:
                settled.append(Outcome(p.invoice_id, "submitted", p.attempts + 1, how="read_back",
                                       receipt_no=rb.receipt_no))
            else:
                resubmit.append(p)
        return settled, resubmit

    async def _submit_chunk(self, chunk: list[Pending]) -> list[Outcome]:
        async with self._in_flight:
            if not self.breaker.allow():
                return [self._deferred(p) for p in chunk]
            try:
                with REQUEST_LATENCY.labels("submit_batch").time():
                    results, latency = await self.client.submit_batch([{"invoice": p.content} for p in chunk])
            except RequestFailed as exc:
                self.breaker.failure(str(exc))
                log.warning("submission of %d invoices failed: %s", len(chunk), exc)
                return [self._failed(p, exc, ambiguous=exc.ambiguous) for p in chunk]
            self.breaker.success()
        return [self._settle(p, r, latency) for p, r in zip(chunk, results, strict=True)]

    def _settle(self, p: Pending, r: ItemResult, latency: int) -> Outcome:
        attempt = p.attempts + 1
        if r.status in (200, 201) and r.receipt_no:
            how = "repaired" if r.repaired else "duplicate" if r.duplicate or r.status == 200 else "created"
            return Outcome(p.invoice_id, "submitted", attempt, how=how, receipt_no=r.receipt_no,
                           http_status=r.status, latency_ms=latency)
        if r.status == 422:
            return Outcome(p.invoice_id, "rejected", attempt, http_status=422, latency_ms=latency,
                           reason_code=r.reason_code or "REJECTED", error=r.reason or "rejected by the tax store",
                           reasons=r.reasons)
        if r.status == 409:
            return Outcome(p.invoice_id, "rejected", attempt, http_status=409, latency_ms=latency,
                           reason_code="NUMBER_CONFLICT", receipt_no=None,
                           error=f"the tax store already holds number {p.number} with different content"
                                 + (f" (receipt {r.receipt_no})" if r.receipt_no else ""))
        exc = RequestFailed(f"unexpected item status {r.status}", ambiguous=True, http_status=r.status,
                            latency_ms=latency)
        return self._failed(p, exc, ambiguous=True)

    async def _record(self, outcomes: list[Outcome]) -> None:
        if not outcomes:
            return
        async with transaction(self.sessions) as session:
            await service.record_outcomes(session=session, outcomes=outcomes, topic=self.results_topic,
                                          max_attempts=self.settings.retry_max_attempts)
        if any(o.kind in ("failed", "deferred") for o in outcomes):
            self._wake_scheduler.set()

    # --- the Kafka loop -----------------------------------------------------------------------

    async def commit_done(self) -> None:
        if not self._done or self.consumer is None:
            return
        offsets, self._done = self._done, {}
        try:
            await self.consumer.commit(offsets)
        except CommitFailedError:
            log.warning("offset commit failed after a rebalance; the new owner re-reads (harmless: idempotent)")

    async def run_consumer(self) -> None:
        s = self.settings
        attempt = 0
        while not self._stopping.is_set():
            consumer = make_consumer(s.kafka_bootstrap, group_id=self.group_id, max_poll_records=s.max_poll_records,
                                     request_timeout_ms=s.kafka_request_timeout_ms)
            try:
                await asyncio.wait_for(consumer.start(), 30)
                consumer.subscribe([self.events_topic, self.resync_topic], listener=CommitOnRevoke(self))
                self.consumer = consumer
                attempt = 0
                await self._consume(consumer)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Kafka or the DB failed; start over, from committed offsets
                delay = backoff_delay(attempt, base=0.5, cap=15)
                attempt += 1
                log.warning("consumer loop failed (%s: %s); restarting in %.1fs", type(exc).__name__, exc, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
            finally:
                self.consumer = None
                self._done.clear()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(consumer.stop(), 10)

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        polls = 0
        while not self._stopping.is_set():
            BREAKER_STATE.set({State.CLOSED: 0, State.HALF_OPEN: 1, State.OPEN: 2}[self.breaker.state])
            wait = self.breaker.wait_time()
            if wait > 0:
                # The store is down: stop fetching (the backlog stays in Kafka, visible as lag) but keep polling
                # so the group keeps us; resume when the breaker lets a probe through.
                consumer.pause(*consumer.assignment())
                self.paused = True
                await consumer.getmany(timeout_ms=int(min(wait, 0.5) * 1000))
                continue
            if self.paused:
                consumer.resume(*consumer.paused())
                self.paused = False
            batches = await consumer.getmany(timeout_ms=500)
            if batches:
                await self._handle(batches)
                await self.commit_done()
            polls += 1
            if polls % 10 == 0 or not batches:
                for tp, lag in (await consumer_lag(consumer)).items():
                    CONSUMER_LAG.labels(self.group_id, tp.topic, str(tp.partition)).set(lag)

    async def _handle(self, batches: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        issued: list[Issued] = []
        voided: list[uuid.UUID] = []
        resync: list[uuid.UUID] = []
        for records in batches.values():
            for record in records:
                try:
                    envelope = decode(record.value)
                    self._classify(envelope, issued, voided, resync)
                except (EnvelopeError, ValidationError, ValueError) as exc:
                    await dead_letter(self.producer, record, exc, topic=dlq_name(record.topic),
                                      group_id=self.group_id)
                    DEAD_LETTERS.labels("sync", record.topic).inc()
        pending: list[Pending] = []
        if issued or voided or resync:
            async with transaction(self.sessions) as session:
                pending = await service.intake(session=session, issued=issued, lease_seconds=self.lease)
                gone = await service.apply_voided(session=session, invoice_ids=voided)
                await service.apply_resync(session=session, invoice_ids=resync)
            pending = [p for p in pending if p.invoice_id not in gone]
            if resync:
                self._wake_scheduler.set()
        if pending:
            await self._record(await self.attempt(pending))
        for tp, records in batches.items():
            self._done[tp] = records[-1].offset + 1

    def _classify(self, envelope: Envelope, issued: list[Issued], voided: list[uuid.UUID],
                  resync: list[uuid.UUID]) -> None:
        if envelope.type == INVOICE_ISSUED:
            event = Issued.model_validate(envelope.data)
            if str(event.invoice_id) != envelope.subject:
                raise ValueError("data.invoice_id differs from the envelope subject")
            issued.append(event)
        elif envelope.type == INVOICE_VOIDED:
            voided.append(uuid.UUID(str(envelope.data.get("invoice_id") or envelope.subject)))
        elif envelope.type == RESYNC_INVOICE:
            resync.append(uuid.UUID(envelope.subject))
        else:
            log.info("ignoring event type %s (not for the sync service)", envelope.type)

    # --- the retry scheduler ------------------------------------------------------------------

    async def run_scheduler(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                worked = await self.retry_round()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the database may be away; keep going
                failures += 1
                log.warning("retry round failed (%s: %s)", type(exc).__name__, exc)
                worked = False
                await asyncio.sleep(backoff_delay(failures, base=0.5, cap=10))
            if worked:
                continue
            self._wake_scheduler.clear()
            wait = max(self.breaker.wait_time(), self.settings.scheduler_interval)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake_scheduler.wait(), wait)

    async def retry_round(self) -> bool:
        """Attempt the due rows once. True when there was work (look again at once)."""
        if self.breaker.wait_time() > 0:
            return False
        # While the circuit is not closed, one batch is the probe; otherwise as many as we may have in flight.
        closed = self.breaker.state is State.CLOSED
        limit = self.settings.submit_batch_size * (self.settings.max_in_flight if closed else 1)
        async with transaction(self.sessions) as session:
            due = await service.claim_due(session=session, limit=limit, lease_seconds=self.lease)
            if not due:
                RETRY_BACKLOG.set(await service.retry_backlog(session=session))
        if not due:
            return False
        await self._record(await self.attempt(due))
        return True
