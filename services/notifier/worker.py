"""The notifier's loops: the Kafka door (alerts in), the batcher (waiting alerts -> deliveries once their
digest window closes), the sender (due deliveries -> webhook / e-mail, attempts recorded), the reminder
round and a metrics refresher. Every loop outlives a database or broker outage; the schedule is in the
database, so a restart picks up exactly where the last process stopped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.notifier import deliveries, digests, intake, reminders
from services.notifier.channels import Mailer, Outcome, WebhookSender
from services.notifier.deliveries import Claimed, msg_id
from services.notifier.messages import build_email, webhook_payload
from services.notifier.metrics import (
    ALERTS,
    ATTEMPT_DURATION,
    ATTEMPTS,
    DELIVERIES,
    OLDEST_PENDING,
    PENDING,
    RETRY_QUEUE,
    WAITING,
)
from services.notifier.settings import NotifierSettings
from services.notifier.signing import SecretBox
from shared.consumers import NOTIFIER_ALERTS
from shared.db import transaction
from shared.envelope import Received
from shared.events import (
    AlertRaised,
    CaseClosedAlertRaised,
    CaseResolvedAlertRaised,
    FormAwaitingAlertRaised,
    FormEndedAlertRaised,
    FormExpiringAlertRaised,
    OrphanAlertRaised,
    RecoveredAlertRaised,
    RedInvoiceMissingAlertRaised,
    RejectedAlertRaised,
    ReviewDeniedAlertRaised,
    ReviewOverdueAlertRaised,
    StuckAlertRaised,
)
from shared.kafka import HandlerTable
from shared.loops import consume_forever, run_rounds
from shared.recovery import database_addresses
from shared.topics import NOTIFICATIONS

__all__ = ["Notifier"]

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, *, settings: NotifierSettings, sessions: async_sessionmaker[AsyncSession], box: SecretBox,
                 webhooks: WebhookSender, mailer: Mailer) -> None:
        self.settings = settings
        self.sessions = sessions
        self.box = box
        self.webhooks = webhooks
        self.mailer = mailer
        self.group_id = NOTIFIER_ALERTS.qualified(settings.topic_prefix)
        self.notifications_topic = NOTIFICATIONS.qualified(settings.topic_prefix)
        self.stopping = asyncio.Event()
        self._wake_sender = asyncio.Event()
        self._wake_batcher = asyncio.Event()
        self._slots = asyncio.Semaphore(settings.deliver_concurrency)
        self.handlers: HandlerTable[AsyncSession] = HandlerTable(dict.fromkeys(
            (StuckAlertRaised, RecoveredAlertRaised, RejectedAlertRaised, OrphanAlertRaised, CaseResolvedAlertRaised,
             CaseClosedAlertRaised, ReviewOverdueAlertRaised, ReviewDeniedAlertRaised, FormAwaitingAlertRaised,
             FormEndedAlertRaised, FormExpiringAlertRaised, RedInvoiceMissingAlertRaised), self._intake))

    def stop(self) -> None:
        self.stopping.set()
        self.wake()

    def wake(self) -> None:
        self._wake_sender.set()
        self._wake_batcher.set()

    async def run(self) -> None:
        s = self.settings
        await asyncio.gather(
            consume_forever(group=NOTIFIER_ALERTS, prefix=s.topic_prefix, bootstrap=s.kafka_bootstrap,
                            table=self.handlers, batch_handler=self.take_in, stopping=self.stopping,
                            request_timeout_ms=s.kafka_request_timeout_ms, database_url=s.database_url),
            run_rounds("batch", self.batch_round, stopping=self.stopping, wake=self._wake_batcher,
                       idle=self._batch_idle, needs=[database_addresses(s.database_url)]),
            run_rounds("send", self.send_round, stopping=self.stopping, wake=self._wake_sender,
                       idle=lambda: s.poll_interval, needs=[database_addresses(s.database_url)]),
            run_rounds("remind", self.remind_round, stopping=self.stopping, idle=lambda: max(s.poll_interval, 5.0)),
            run_rounds("metrics", self.refresh_metrics, stopping=self.stopping, idle=lambda: s.metrics_interval),
        )

    def _batch_idle(self) -> float:
        # Look again within the window, so a digest goes out soon after its window closes.
        return min(self.settings.poll_interval, max(self.settings.digest_window / 4, 0.05))

    # --- alerts in ----------------------------------------------------------------------------------

    async def take_in(self, items: list[Received[Any]]) -> None:
        async with transaction(self.sessions) as session:
            done = await self.handlers.dispatch(session, items)
        stats: intake.Intake | None = done.get(self._intake)
        if stats is None:
            return
        for kind, n in stats.new.items():
            ALERTS.labels(kind, "new").inc(n)
        if stats.duplicates:
            ALERTS.labels("any", "duplicate").inc(stats.duplicates)
        if stats.items:
            self._wake_batcher.set()

    async def _intake(self, session: AsyncSession, items: list[Received[AlertRaised]]) -> intake.Intake:
        return await intake.intake_alerts(session=session, alerts=[(i.envelope.type, i.event) for i in items],
                                          remind_after=self.settings.remind_after)

    # --- grouping ------------------------------------------------------------------------------------

    async def batch_round(self) -> bool:
        async with transaction(self.sessions) as session:
            created = await digests.batch_due(session=session, window=self.settings.digest_window)
        if created:
            self._wake_sender.set()
        return created >= 100

    async def remind_round(self) -> bool:
        async with transaction(self.sessions) as session:
            stats = await reminders.due_reminders(session=session, remind_after=self.settings.remind_after, limit=200)
        for kind, n in stats.new.items():
            ALERTS.labels(kind, "new").inc(n)
        if stats.items:
            self._wake_batcher.set()
        return False

    # --- sending -------------------------------------------------------------------------------------

    async def send_round(self) -> bool:
        s = self.settings
        async with transaction(self.sessions) as session:
            claimed = await deliveries.claim_deliveries(session=session, limit=s.deliver_concurrency * 4,
                                                        lease_seconds=s.delivery_lease, box=self.box)
        if not claimed:
            return False
        await asyncio.gather(*(self._deliver(d) for d in claimed))
        return len(claimed) >= s.deliver_concurrency * 4

    async def _deliver(self, d: Claimed) -> None:
        s = self.settings
        if not d.usable:
            async with transaction(self.sessions) as session:
                await deliveries.cancel(session=session, delivery=d, reason="the subscription is inactive or deleted")
            DELIVERIES.labels(d.channel, "cancelled").inc()
            return
        async with self._slots:
            started = time.perf_counter()
            outcome = await self._send(d)
            ATTEMPT_DURATION.labels(d.channel).observe(time.perf_counter() - started)
        async with transaction(self.sessions) as session:
            result = await deliveries.record_attempt(
                session=session, delivery=d, ok=outcome.ok, status_code=outcome.status_code,
                latency_ms=outcome.latency_ms, error=outcome.error, permanent=outcome.permanent,
                max_attempts=s.max_attempts, retry_base=s.retry_base, retry_cap=s.retry_cap,
                notifications_topic=self.notifications_topic)
        if result == "stale":
            return
        ATTEMPTS.labels(d.channel, result).inc()
        if result != "failed":
            DELIVERIES.labels(d.channel, result).inc()
        if result == "exhausted":
            log.warning("delivery %s (%s) exhausted after %d attempts: %s", d.id, d.channel, d.attempts + 1,
                        outcome.error)

    async def _send(self, d: Claimed) -> Outcome:
        s = self.settings
        created = d.created_at.isoformat()
        if d.channel == "webhook":
            if not d.secrets:  # never send unsigned: the receiver could not tell it from a forgery
                return Outcome(False, None, 0, "no signing secret can be decrypted (FAPIAO_SECRETS_KEY changed?); "
                                               "rotate the subscription's secret")
            payload = webhook_payload(kind=d.kind, alerts=d.alerts, created_at=created,
                                      issuer_url=s.issuer_public_url)
            body = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)  # the same bytes on every retry
            return await self.webhooks.send(url=d.url or "", msg_id=msg_id(d.id), body=body,
                                            secrets=d.secrets)
        message = build_email(kind=d.kind, alerts=d.alerts, sender=s.smtp_from, recipients=d.emails,
                              message_id=msg_id(d.id), issuer_url=s.issuer_public_url)
        return await self.mailer.send(message, d.emails)

    # --- metrics -------------------------------------------------------------------------------------

    async def refresh_metrics(self) -> bool:
        async with transaction(self.sessions) as session:
            report = await deliveries.queue_report(session=session)
        for channel in ("webhook", "email"):
            PENDING.labels(channel).set(report["pending"].get(channel, 0))
            RETRY_QUEUE.labels(channel).set(report["retrying"].get(channel, 0))
        OLDEST_PENDING.set(report["oldest_pending_seconds"])
        WAITING.set(report["waiting_for_digest"])
        return False
