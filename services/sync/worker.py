"""The two doors into the sync service's use cases: the Kafka loop (new events) and the retry scheduler
(due rows in the ledger). Both submit through `attempt()`, behind one circuit breaker, so an outage at the
tax store pauses everything at once: the consumer stops fetching (Kafka keeps the backlog; lag shows it),
the scheduler stops claiming, and one probe at a time tests whether the store is back.

The consumer is the shared consume loop (shared.loops.consume_forever), a whole poll per call, paused while the
circuit is open. Offsets are committed only after the outcomes of a poll are durable in the ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.sync import forms, service
from services.sync.breaker import Breaker, State
from services.sync.client import ItemResult, RequestFailed, TaxstoreClient
from services.sync.metrics import BREAKER_STATE, OUTCOMES, RELEASED, REQUEST_LATENCY, RETRY_BACKLOG
from services.sync.service import Outcome, Pending
from services.sync.settings import SyncSettings
from shared.backoff import backoff
from shared.consumers import SYNC_SUBMIT
from shared.db import transaction
from shared.errors import RetriableError
from shared.events import (
    InvoiceIssued,
    InvoiceVoided,
    RedLetterDecisionRequested,
    RedLetterRequested,
    ResyncRequested,
)
from shared.kafka import HandlerTable, Received
from shared.loops import consume_forever, run_rounds
from shared.recovery import database_addresses
from shared.topics import SYNC_RESULTS

__all__ = ["Syncer"]

log = logging.getLogger(__name__)
HELD_MAX = 200_000  # invoices remembered as held back by the store (≈ 30 MB at most)


class Syncer:
    def __init__(self, *, settings: SyncSettings, sessions: async_sessionmaker[AsyncSession], client: TaxstoreClient,
                 breaker: Breaker | None = None) -> None:
        self.settings = settings
        self.sessions = sessions
        self.client = client
        self.breaker = breaker or Breaker(threshold=settings.breaker_threshold, base=settings.breaker_base,
                                          cap=settings.breaker_cap)
        self.results_topic = SYNC_RESULTS.qualified(settings.topic_prefix)
        self.group_id = SYNC_SUBMIT.qualified(settings.topic_prefix)
        self.lease = 2 * (settings.submit_timeout + settings.read_timeout + settings.connect_timeout) + 10
        self._in_flight = asyncio.Semaphore(settings.max_in_flight)
        self._wake_scheduler = asyncio.Event()
        self._stopping = asyncio.Event()
        self.paused = False  # the consumer is not fetching: the circuit to the tax store is open
        self.handlers: HandlerTable[_Intake] = HandlerTable({
            InvoiceIssued: self._take_issued, InvoiceVoided: self._take_voided, ResyncRequested: self._take_resync,
            RedLetterRequested: self._take_form_requests, RedLetterDecisionRequested: self._take_form_decisions,
        })
        self._wake_forms = asyncio.Event()
        # Invoices this process put off because of the store (failed or not sent): id -> the next try it wrote.
        # When the circuit closes again they are due at once; their backoff was the store's, not theirs.
        self._held: dict[uuid.UUID, datetime] = {}
        self._recovered = False

    def stop(self) -> None:
        self._stopping.set()
        self._wake_scheduler.set()
        self._wake_forms.set()

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
        delay = backoff(attempt - 1, base=self.settings.retry_base, cap=self.settings.retry_cap, jitter="equal")
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
            self._succeeded()
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
                    results, latency = await self.client.submit_batch([p.submission() for p in chunk])
            except RequestFailed as exc:
                self.breaker.failure(str(exc))
                log.warning("submission of %d invoices failed: %s", len(chunk), exc)
                return [self._failed(p, exc, ambiguous=exc.ambiguous) for p in chunk]
            self._succeeded()
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
        for o in outcomes:
            if o.kind in ("failed", "deferred") and o.next_attempt_at is not None and not o.gave_up:
                self._held.pop(o.invoice_id, None)
                self._held[o.invoice_id] = o.next_attempt_at
                if len(self._held) > HELD_MAX:  # the oldest then keep their own backoff
                    self._held.pop(next(iter(self._held)))
            else:
                self._held.pop(o.invoice_id, None)
        if any(o.kind in ("failed", "deferred") for o in outcomes):
            self._wake_scheduler.set()

    def _succeeded(self) -> None:
        """A request to the store went through; when that closes an open circuit, the scheduler releases what the
        outage held back. (So does the health read that sees the store back: the breaker still lets one batch
        out as the probe, and the rest go once it has passed; a probe that fails opens the circuit again.)"""
        if self.breaker.success():
            self._recovered = True
            self._wake_scheduler.set()

    async def _release_held(self) -> None:
        held, self._held = self._held, {}
        if not held:
            return
        async with transaction(self.sessions) as session:
            released = await service.release_held(session=session, held=held)
        RELEASED.inc(released)
        log.info("the tax store is back: %d of %d invoices held back by it are due now", released, len(held))

    # --- the Kafka loop -----------------------------------------------------------------------

    def _hold_off(self) -> float:
        """The consume loop's pause hook: while the store is down, stop fetching (the backlog stays in Kafka,
        visible as lag) until the breaker lets a probe through."""
        BREAKER_STATE.set({State.CLOSED: 0, State.HALF_OPEN: 1, State.OPEN: 2}[self.breaker.state])
        wait = self.breaker.wait_time()
        self.paused = wait > 0
        return wait

    async def run_consumer(self) -> None:
        s = self.settings
        await consume_forever(group=SYNC_SUBMIT, prefix=s.topic_prefix, bootstrap=s.kafka_bootstrap,
                              table=self.handlers, batch_handler=self._handle, stopping=self._stopping,
                              request_timeout_ms=s.kafka_request_timeout_ms, max_poll_records=s.max_poll_records,
                              per_poll=True, pause=self._hold_off, database_url=s.database_url)

    async def _handle(self, items: list[Received[Any]]) -> None:
        """A whole poll: into the ledger in one transaction, then one attempt for each new invoice."""
        try:
            intake = _Intake()
            async with transaction(self.sessions) as session:
                intake.session = session
                await self.handlers.dispatch(intake, items)
            pending = [p for p in intake.pending if p.invoice_id not in intake.gone]
            if intake.resync:
                self._wake_scheduler.set()
            if intake.forms:
                self._wake_forms.set()
            if pending:
                await self._record(await self.attempt(pending))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # The payloads passed their models; what failed is the database or the broker: take the poll
            # again from the committed offsets (rows already taken in are leased, then read back).
            raise RetriableError(f"sync intake failed ({type(exc).__name__}: {exc})") from exc

    async def _take_issued(self, intake: _Intake, items: list[Received[InvoiceIssued]]) -> None:
        intake.pending = await service.intake(session=intake.session, issued=[i.event for i in items],
                                              lease_seconds=self.lease)

    async def _take_voided(self, intake: _Intake, items: list[Received[InvoiceVoided]]) -> None:
        intake.gone = await service.apply_voided(session=intake.session,
                                                 invoice_ids=[i.event.invoice_id for i in items])

    async def _take_resync(self, intake: _Intake, items: list[Received[ResyncRequested]]) -> None:
        await service.apply_resync(session=intake.session, invoice_ids=[uuid.UUID(i.envelope.subject) for i in items])
        intake.resync = True

    async def _take_form_requests(self, intake: _Intake, items: list[Received[RedLetterRequested]]) -> None:
        await forms.intake_requests(session=intake.session,
                                    events=[(i.event, uuid.UUID(i.envelope.tenant)) for i in items])
        intake.forms = True

    async def _take_form_decisions(self, intake: _Intake, items: list[Received[RedLetterDecisionRequested]]) -> None:
        await forms.intake_decisions(session=intake.session,
                                     events=[(i.event, uuid.UUID(i.envelope.tenant)) for i in items])
        intake.forms = True

    # --- red-letter forms: writes retried until answered, pending forms watched --------------------

    async def run_forms(self) -> None:
        await run_rounds("form", self.forms_round, stopping=self._stopping, wake=self._wake_forms,
                         idle=self._round_wait, needs=[database_addresses(self.settings.database_url)],
                         backoff_cap=10)

    async def forms_round(self) -> bool:
        """One call for each due form op (behind the same circuit as submissions). True when there was work."""
        if self.breaker.wait_time() > 0:
            return False
        async with transaction(self.sessions) as session:
            due = await forms.claim_due(session=session, limit=self.settings.submit_batch_size,
                                        lease_seconds=self.lease)
        if not due:
            return False
        results = await asyncio.gather(*(self._form_call(op) for op in due))
        async with transaction(self.sessions) as session:
            await forms.record(session=session, results=list(results), topic=self.results_topic,
                               watch_every=self.settings.form_watch_interval)
        return True

    async def _form_call(self, op: forms.FormOp) -> forms.FormResult:
        method, path, body, params = op.request()
        async with self._in_flight:
            if not self.breaker.allow():
                return forms.FormResult(op, error="not sent: the tax store is unavailable (circuit open)",
                                        retry_at=datetime.now(UTC) + timedelta(seconds=self.breaker.wait_time() + 1))
            try:
                with REQUEST_LATENCY.labels("form").time():
                    status, answer = await self.client.form_call(method, path, body=body, params=params)
            except RequestFailed as exc:
                self.breaker.failure(str(exc))
                if op.status == "watching":
                    retry = datetime.now(UTC) + timedelta(seconds=self.settings.form_watch_interval)
                else:
                    retry = datetime.now(UTC) + timedelta(seconds=backoff(
                        op.attempts, base=self.settings.retry_base, cap=self.settings.retry_cap, jitter="equal"))
                log.info("form %s (%s) failed: %s", op.form_id, op.op, exc)
                return forms.FormResult(op, error=str(exc), http_status=exc.http_status, retry_at=retry)
            self._succeeded()
        if status == 404 and op.op == "create" and self._invoice_may_come(op):
            # The issuer asks only for invoices the authority acknowledged: one it does not show is lagging or
            # lost, and the reconciler resyncs a lost one. Ask again for a while before the form fails for good.
            retry = datetime.now(UTC) + timedelta(seconds=backoff(
                op.attempts, base=self.settings.retry_base, cap=self.settings.retry_cap, jitter="equal"))
            return forms.FormResult(op, error=f"the tax store does not show the invoice yet "
                                              f"({(answer or {}).get('detail') or status}); asked again",
                                    http_status=status, retry_at=retry)
        if status >= 400:
            return forms.FormResult(op, refused=answer, http_status=status)
        return forms.FormResult(op, form=answer, http_status=status)

    def _invoice_may_come(self, op: forms.FormOp) -> bool:
        """Within FAPIAO_FORM_MISSING_INVOICE_RETRY of the form's request."""
        return op.created_at is not None and (datetime.now(UTC) - op.created_at).total_seconds() < \
            self.settings.form_missing_invoice_retry

    # --- the health probe while the circuit is open --------------------------------------------

    async def run_health_probe(self) -> None:
        """While the circuit is open, read the store now and then; when it comes back, let the probe go at once
        (Breaker.health) and wake the scheduler and the consumer's pause hook."""
        while not self._stopping.is_set():
            if self.breaker.state is State.OPEN and self.breaker.health(await self.client.reachable()):
                log.info("the tax store answers again; probing now instead of in %.1fs", self.breaker.wait_time())
                self._recovered = True  # what the outage held back is due: the first batch of it is the probe
                self._wake_scheduler.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.settings.breaker_health_interval)

    # --- the retry scheduler ------------------------------------------------------------------

    async def run_scheduler(self) -> None:
        await run_rounds("retry", self.retry_round, stopping=self._stopping, wake=self._wake_scheduler,
                         idle=self._round_wait, needs=[database_addresses(self.settings.database_url)],
                         backoff_cap=10)

    def _round_wait(self) -> float:
        """Seconds the scheduler and the form rounds wait when idle: at least until the circuit lets calls out."""
        return max(self.breaker.wait_time(), self.settings.scheduler_interval)

    async def retry_round(self) -> bool:
        """Attempt the due rows once. True when there was work (look again at once)."""
        if self.breaker.wait_time() > 0:
            return False
        if self._recovered:
            self._recovered = False
            await self._release_held()
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


class _Intake:
    """What the handlers of one poll took in (their shared transaction, and what to do after it commits)."""

    def __init__(self) -> None:
        self.session: Any = None
        self.pending: list[Pending] = []
        self.gone: set[uuid.UUID] = set()
        self.resync = False
        self.forms = False
