"""Kafka door into the issuer: sync results and the reconciler's findings -> the invoice's status and timeline.

Both topics feed one status view, so one consumer group reads both: one partition slice per transaction
(ConsumeLoop's batch mode), offsets committed after it commits. Malformed events go to the dead-letter
topic of the topic they came from (invoice.sync-results.v1.dlq, invoice.reconciliation.v1.dlq); the loop
keeps going.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka import ConsumerRecord
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.issuer import service
from services.issuer.settings import IssuerSettings
from shared.db import transaction
from shared.envelope import Envelope
from shared.events import RECONCILIATION_TYPES, SYNC_RESULT_TYPES
from shared.kafka import ConsumeLoop, backoff_delay, make_consumer, make_producer
from shared.metrics import DEAD_LETTERS
from shared.topics import RECONCILIATION, SYNC_RESULTS, dlq_name

__all__ = ["run_status_feed_consumer"]

log = logging.getLogger(__name__)


async def run_status_feed_consumer(settings: IssuerSettings, sessions: async_sessionmaker[AsyncSession],
                                   stopping: asyncio.Event) -> None:
    """Consume sync results and reconciliation events until `stopping`; restart from committed offsets after
    any failure."""
    group = f"{settings.topic_prefix}issuer.status-feed"
    topics = [SYNC_RESULTS.qualified(settings.topic_prefix), RECONCILIATION.qualified(settings.topic_prefix)]

    async def apply(items: list[tuple[Envelope, ConsumerRecord]]) -> None:
        # A slice comes from one partition of one topic, but dispatch on the type, not the topic: the type
        # says what the payload is.
        sync_results = [env for env, _ in items if env.type in SYNC_RESULT_TYPES]
        findings = [env for env, _ in items if env.type in RECONCILIATION_TYPES]
        unknown = len(items) - len(sync_results) - len(findings)
        if unknown:
            log.info("ignoring %d events of types the issuer does not handle", unknown)
        if sync_results or findings:
            async with transaction(sessions) as session:
                if sync_results:
                    await service.apply_sync_results(session=session, events=sync_results)
                if findings:
                    await service.apply_reconciliation(session=session, events=findings)

    attempt = 0
    while not stopping.is_set():
        consumer = make_consumer(settings.kafka_bootstrap, *topics, group_id=group,
                                 request_timeout_ms=settings.kafka_request_timeout_ms, max_poll_records=2000)
        producer = make_producer(settings.kafka_bootstrap, request_timeout_ms=settings.kafka_request_timeout_ms)
        loop = ConsumeLoop(consumer=consumer, producer=producer, topics=topics, batch_handler=apply,
                           dlq_topic=dlq_name, group_id=group,
                           on_dead_letter=lambda t: DEAD_LETTERS.labels("issuer", t).inc())
        stop_watch = asyncio.create_task(_stop_when(stopping, loop))
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
            log.warning("status-feed consumer failed (%s: %s); restarting in %.1fs", type(exc).__name__, exc, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), delay)
        finally:
            stop_watch.cancel()
            for client in (consumer, producer):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.stop(), 10)


async def _stop_when(stopping: asyncio.Event, loop: ConsumeLoop) -> None:
    await stopping.wait()
    loop.stop()
