"""Kafka door into the issuer: sync results, the reconciler's findings and the notifier's deliveries -> the
invoice's status and timeline.

All three topics feed one status view, so one consumer group reads them: one partition slice per transaction
(ConsumeLoop's batch mode), offsets committed after it commits. Each event is handed to its type's handler
(`HANDLERS`) as its model; malformed events go to the dead-letter topic of the topic they came from (e.g.
invoice.reconciliation.v1.dlq); the loop keeps going.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.issuer.feeds.notifications import apply_notifications
from services.issuer.feeds.reconciliation import apply_reconciliation
from services.issuer.feeds.sync_results import apply_sync_results
from services.issuer.invoices.redletter import apply_form_updates
from services.issuer.settings import IssuerSettings
from shared.consumers import ISSUER_STATUS_FEED
from shared.db import transaction
from shared.envelope import Received
from shared.events import (
    CaseUpdated,
    InvoiceAwaitingVisibility,
    InvoiceConfirmed,
    InvoiceGapFound,
    InvoiceRejected,
    InvoiceReviewUpdated,
    InvoiceStuck,
    InvoiceSubmissionFailed,
    InvoiceSubmitted,
    NotificationFailed,
    NotificationSent,
    RedLetterFormUpdated,
)
from shared.kafka import HandlerTable
from shared.loops import consume_forever
from shared.topics import ALERTS, INVOICE_EVENTS

__all__ = ["run_status_feed_consumer"]

log = logging.getLogger(__name__)


async def run_status_feed_consumer(settings: IssuerSettings, sessions: async_sessionmaker[AsyncSession],
                                   stopping: asyncio.Event) -> None:
    """Consume sync results, reconciliation events and delivery notices until `stopping`."""
    group = ISSUER_STATUS_FEED.qualified(settings.topic_prefix)

    async def sync_results(session: AsyncSession, items: list[Received[Any]]) -> None:
        await apply_sync_results(session=session, events=items)

    async def findings(session: AsyncSession, items: list[Received[Any]]) -> None:
        await apply_reconciliation(session=session, events=items)

    async def forms(session: AsyncSession, items: list[Received[Any]]) -> None:
        await apply_form_updates(session=session, events=items,
                                 topic=INVOICE_EVENTS.qualified(settings.topic_prefix),
                                 alerts_topic=ALERTS.qualified(settings.topic_prefix),
                                 expiry_warning=settings.form_expiry_warning)

    async def notices(session: AsyncSession, items: list[Received[Any]]) -> None:
        await apply_notifications(session=session, events=items, group=group)

    handlers: HandlerTable[AsyncSession] = HandlerTable({
        InvoiceSubmitted: sync_results, InvoiceSubmissionFailed: sync_results, InvoiceRejected: sync_results,
        InvoiceConfirmed: findings, InvoiceAwaitingVisibility: findings, InvoiceGapFound: findings,
        InvoiceStuck: findings, CaseUpdated: findings, InvoiceReviewUpdated: findings,
        NotificationSent: notices, NotificationFailed: notices, RedLetterFormUpdated: forms,
    })

    async def apply(items: list[Received[Any]]) -> None:
        async with transaction(sessions) as session:
            await handlers.dispatch(session, items)

    await consume_forever(group=ISSUER_STATUS_FEED, prefix=settings.topic_prefix, bootstrap=settings.kafka_bootstrap,
                          table=handlers, batch_handler=apply, stopping=stopping,
                          request_timeout_ms=settings.kafka_request_timeout_ms, max_poll_records=2000,
                          database_url=settings.database_url)
