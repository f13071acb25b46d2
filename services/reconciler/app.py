"""create_app(settings) -> FastAPI. The lifespan owns the engine, the ledger consumer, the check round, the
sweeper, the metrics refresher and the outbox relay that carries resyncs, reconciliation events and alerts
to Kafka. The HTTP side is for operators and for the issuer's case and summary endpoints."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from services.reconciler import models
from services.reconciler.api import router
from services.reconciler.settings import ReconcilerSettings
from services.reconciler.store import TaxstoreReader
from services.reconciler.worker import Reconciler
from services.reconciler.writes import Topics
from shared.apidocs import service_app
from shared.audit import audit_router
from shared.http import RequestContextMiddleware, health_router, install_problem_handlers
from shared.kafka import ensure_topics_forever
from shared.logging import configure_logging
from shared.migrate import upgrade_async
from shared.runtime import service_runtime
from shared.topics import ALL_TOPICS

SERVICE = "reconciler"
MIGRATIONS = Path(__file__).parent / "migrations"
log = logging.getLogger(__name__)


async def migrate(settings: ReconcilerSettings) -> None:
    await upgrade_async(migrations_dir=MIGRATIONS, database_url=settings.database_url, schema=models.SCHEMA)


async def _run(reconciler: Reconciler, settings: ReconcilerSettings) -> None:
    await ensure_topics_forever(settings.kafka_bootstrap, ALL_TOPICS, prefix=settings.topic_prefix,
                                partitions=settings.kafka_partitions,
                                replication_factor=settings.kafka_replication_factor)
    await asyncio.gather(reconciler.run_consumer(), reconciler.run_checker(), reconciler.run_sweeper(),
                         reconciler.run_metrics(), reconciler.run_forms())


def create_app(settings: ReconcilerSettings | None = None) -> FastAPI:
    settings = settings or ReconcilerSettings()
    configure_logging(service=SERVICE, level=settings.log_level, json_output=settings.log_json)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with service_runtime(app, settings, service=SERVICE, migrate=migrate, outbox=models.outbox) as rt:
            reader = TaxstoreReader(settings.taxstore_url, connect_timeout=settings.connect_timeout,
                                    read_timeout=settings.read_timeout, max_connections=settings.max_in_flight * 2,
                                    lookup_batch_size=settings.lookup_batch_size)
            reconciler = Reconciler(settings=settings, sessions=rt.worker_sessions, reader=reader)
            app.state.reader = reader
            app.state.reconciler = reconciler
            task = asyncio.create_task(_run(reconciler, settings), name="reconciler")
            log.info("reconciler ready on %s:%d, checking %s (SLA %gs, stuck after %gs or %d resyncs)",
                     settings.host, settings.port, settings.taxstore_url, settings.visibility_sla,
                     settings.stuck_after, settings.stuck_after_resyncs)
            try:
                yield
            finally:
                reconciler.stop()
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await reader.close()

    app = service_app(title="Fapiao Sync — reconciler", version="1", lifespan=lifespan,
                  description="Finds every gap between what was issued and what the tax store shows, resyncs it, "
                              "and opens a case when it is stuck. Operator endpoints only.")
    app.state.settings = settings
    app.state.checks = {}
    app.state.reconciler = None
    app.state.reconciler_topics = Topics.of(settings.topic_prefix)
    install_problem_handlers(app)
    app.include_router(audit_router(SERVICE))
    app.include_router(router)
    app.include_router(health_router("database", "kafka"))
    app.add_middleware(RequestContextMiddleware, service=SERVICE)
    return app
