"""Kafka door into the issuer: sync results, the reconciler's findings and the notifier's deliveries -> the
invoice's status and timeline.

All three topics feed one status view, so one consumer group reads them: one partition slice per transaction
(ConsumeLoop's batch mode), offsets committed after it commits. Malformed events go to the dead-letter topic
of the topic they came from (e.g. invoice.reconciliation.v1.dlq); the loop keeps going.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import ConsumerRecord
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.issuer import service
from services.issuer.settings import IssuerSettings
from shared.db import transaction
from shared.envelope import Envelope
from shared.events import NOTIFICATION_TYPES, RECONCILIATION_TYPES, SYNC_RESULT_TYPES
from shared.loops import consume_forever
from shared.topics import NOTIFICATIONS, RECONCILIATION, SYNC_RESULTS

__all__ = ["run_status_feed_consumer"]

log = logging.getLogger(__name__)


async def run_status_feed_consumer(settings: IssuerSettings, sessions: async_sessionmaker[AsyncSession],
                                   stopping: asyncio.Event) -> None:
    """Consume sync results, reconciliation events and delivery notices until `stopping`."""
    group = f"{settings.topic_prefix}issuer.status-feed"
    topics = [t.qualified(settings.topic_prefix) for t in (SYNC_RESULTS, RECONCILIATION, NOTIFICATIONS)]

    async def apply(items: list[tuple[Envelope, ConsumerRecord]]) -> None:
        # A slice comes from one partition of one topic, but dispatch on the type, not the topic: the type
        # says what the payload is.
        sync_results = [env for env, _ in items if env.type in SYNC_RESULT_TYPES]
        findings = [env for env, _ in items if env.type in RECONCILIATION_TYPES]
        notices = [env for env, _ in items if env.type in NOTIFICATION_TYPES]
        unknown = len(items) - len(sync_results) - len(findings) - len(notices)
        if unknown:
            log.info("ignoring %d events of types the issuer does not handle", unknown)
        if sync_results or findings or notices:
            async with transaction(sessions) as session:
                if sync_results:
                    await service.apply_sync_results(session=session, events=sync_results)
                if findings:
                    await service.apply_reconciliation(session=session, events=findings)
                if notices:
                    await service.apply_notifications(session=session, events=notices, group=group)

    await consume_forever(service="issuer", bootstrap=settings.kafka_bootstrap, topics=topics, group_id=group,
                          batch_handler=apply, stopping=stopping, request_timeout_ms=settings.kafka_request_timeout_ms,
                          max_poll_records=2000)
