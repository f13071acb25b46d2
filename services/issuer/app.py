"""create_app(settings) -> FastAPI. The lifespan owns the engine, the outbox relay and the probes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from services.issuer import models, service
from services.issuer.api import admin_router, router
from services.issuer.consumer import run_sync_results_consumer
from services.issuer.settings import IssuerSettings
from shared.db import make_engine, ping, session_factory, transaction
from shared.http import (
    BodyLimitMiddleware,
    RequestContextMiddleware,
    health_router,
    install_problem_handlers,
)
from shared.kafka import KafkaProbe, backoff_delay, ensure_topics
from shared.logging import configure_logging
from shared.metrics import OUTBOX_BACKLOG, OUTBOX_OLDEST_AGE, OUTBOX_PUBLISHED
from shared.migrate import upgrade
from shared.outbox import OutboxRelay
from shared.topics import ALL_TOPICS

SERVICE = "issuer"
MIGRATIONS = Path(__file__).parent / "migrations"
log = logging.getLogger(__name__)


async def migrate(settings: IssuerSettings) -> None:
    await asyncio.to_thread(upgrade, migrations_dir=MIGRATIONS, database_url=settings.database_url,
                            schema=models.SCHEMA)


async def _ensure_topics_forever(settings: IssuerSettings) -> None:
    attempt = 0
    while True:
        try:
            await ensure_topics(settings.kafka_bootstrap, ALL_TOPICS, prefix=settings.topic_prefix,
                                partitions=settings.kafka_partitions,
                                replication_factor=settings.kafka_replication_factor)
            return
        except Exception as exc:  # noqa: BLE001 - Kafka may be down at start; the API works regardless
            delay = backoff_delay(attempt, base=0.5, cap=15)
            log.warning("cannot create topics yet (%s); retrying in %.1fs", type(exc).__name__, delay)
            attempt += 1
            await asyncio.sleep(delay)


async def _housekeeping(app: FastAPI, settings: IssuerSettings) -> None:
    while True:
        await asyncio.sleep(600)
        with contextlib.suppress(Exception):
            async with transaction(app.state.sessions) as session:
                await service.purge_idempotency_keys(session=session, older_than_hours=settings.idempotency_ttl_hours)


def create_app(settings: IssuerSettings | None = None) -> FastAPI:
    settings = settings or IssuerSettings()  # type: ignore[call-arg]
    configure_logging(service=SERVICE, level=settings.log_level, json_output=settings.log_json)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.auto_migrate:
            await migrate(settings)
        engine = make_engine(settings.database_url, pool_size=settings.db_pool_size,
                             statement_timeout_ms=settings.db_statement_timeout_ms, application_name=SERVICE)
        published = OUTBOX_PUBLISHED.labels(SERVICE)

        async def on_published(conn, rows):  # type: ignore[no-untyped-def]
            await service.mark_published(conn, rows)
            published.inc(len(rows))

        def on_round(waiting: int, oldest: float | None) -> None:
            OUTBOX_BACKLOG.labels(SERVICE).set(waiting)
            OUTBOX_OLDEST_AGE.labels(SERVICE).set(time.time() - oldest if oldest else 0)

        relay = OutboxRelay(
            engine=engine, table=models.outbox, bootstrap=settings.kafka_bootstrap, on_published=on_published,
            batch_size=settings.relay_batch_size, poll_interval=settings.relay_poll_interval, on_round=on_round,
            producer_overrides={"request_timeout_ms": settings.kafka_request_timeout_ms},
        )
        probe = KafkaProbe(settings.kafka_bootstrap)
        app.state.settings = settings
        app.state.engine = engine
        app.state.sessions = session_factory(engine)
        app.state.relay = relay
        app.state.checks.update({"database": lambda: ping(engine), "kafka": probe.check})
        stopping = asyncio.Event()
        tasks = [
            asyncio.create_task(_ensure_topics_forever(settings), name="ensure-topics"),
            asyncio.create_task(relay.run(), name="outbox-relay"),
            asyncio.create_task(_housekeeping(app, settings), name="housekeeping"),
            asyncio.create_task(run_sync_results_consumer(settings, app.state.sessions, stopping),
                                name="sync-results"),
        ]
        log.info("issuer ready on %s:%d", settings.host, settings.port)
        try:
            yield
        finally:
            stopping.set()
            relay.stop()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await probe.close()
            await engine.dispose()

    app = FastAPI(
        title="Fapiao Sync — issuer",
        version="1",
        description="Issue invoices from your ERP and follow each one until the tax authority shows it.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.checks = {}
    install_problem_handlers(app)
    app.include_router(router)
    app.include_router(admin_router)

    async def check_db() -> None:
        await app.state.checks["database"]()

    async def check_kafka() -> None:
        await app.state.checks["kafka"]()

    app.include_router(health_router({"database": check_db, "kafka": check_kafka}))
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestContextMiddleware, service=SERVICE)
    return app
