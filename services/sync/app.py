"""create_app(settings) -> FastAPI. The lifespan owns the engine, the Kafka loop, the retry scheduler and
the outbox relay that carries sync results to Kafka. The HTTP side is for operators: health, metrics and
what the service knows about one submission."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from services.sync import models
from services.sync.api import router
from services.sync.client import TaxstoreClient
from services.sync.settings import SyncSettings
from services.sync.worker import Syncer
from shared.apidocs import service_app
from shared.audit import audit_router
from shared.http import RequestContextMiddleware, health_router, install_problem_handlers
from shared.kafka import ensure_topics_forever
from shared.logging import configure_logging
from shared.migrate import upgrade_async
from shared.runtime import service_runtime
from shared.topics import ALL_TOPICS

SERVICE = "sync"
MIGRATIONS = Path(__file__).parent / "migrations"
log = logging.getLogger(__name__)


async def migrate(settings: SyncSettings) -> None:
    await upgrade_async(migrations_dir=MIGRATIONS, database_url=settings.database_url, schema=models.SCHEMA)


async def _run_syncer(app: FastAPI, settings: SyncSettings, stopping: asyncio.Event) -> None:
    """Once Kafka has the topics (it may still be coming up), the consumer and the scheduler."""
    await ensure_topics_forever(settings.kafka_bootstrap, ALL_TOPICS, prefix=settings.topic_prefix,
                                partitions=settings.kafka_partitions,
                                replication_factor=settings.kafka_replication_factor)
    if stopping.is_set():
        return
    syncer = Syncer(settings=settings, sessions=app.state.worker_sessions, client=app.state.client)
    app.state.syncer = syncer
    try:
        await asyncio.gather(syncer.run_consumer(), syncer.run_scheduler(), syncer.run_health_probe(),
                             syncer.run_forms())
    finally:
        syncer.stop()


def create_app(settings: SyncSettings | None = None) -> FastAPI:
    settings = settings or SyncSettings()
    configure_logging(service=SERVICE, level=settings.log_level, json_output=settings.log_json)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with service_runtime(app, settings, service=SERVICE, migrate=migrate, outbox=models.outbox):
            client = TaxstoreClient(settings.taxstore_url, connect_timeout=settings.connect_timeout,
                                    submit_timeout=settings.submit_timeout, read_timeout=settings.read_timeout,
                                    max_connections=settings.max_in_flight * 4)
            app.state.client = client
            app.state.syncer = None
            stopping = asyncio.Event()
            task = asyncio.create_task(_run_syncer(app, settings, stopping), name="syncer")
            log.info("sync ready on %s:%d, submitting to %s", settings.host, settings.port, settings.taxstore_url)
            try:
                yield
            finally:
                stopping.set()
                if app.state.syncer is not None:
                    app.state.syncer.stop()
                task.cancel()
                done, _ = await asyncio.wait({task}, timeout=20)
                if not done:  # bounded: never hang a shutdown
                    log.error("the syncer did not stop within 20 s; cancelling it again")
                    task.cancel()
                    await asyncio.wait({task}, timeout=5)
                await client.close()

    app = service_app(title="Fapiao Sync — sync", version="1", lifespan=lifespan,
                  description="Mirrors issued invoices into the tax store. Operator endpoints only.")
    app.state.settings = settings
    app.state.checks = {}
    install_problem_handlers(app)
    app.include_router(audit_router(SERVICE))
    app.include_router(router)

    app.include_router(health_router("database", "kafka"))
    app.add_middleware(RequestContextMiddleware, service=SERVICE)
    return app
