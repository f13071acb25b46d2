"""create_app(settings) -> FastAPI. The lifespan owns the engine; the fault generator and the
counters belong to the app object, so each app (and each process) simulates on its own."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from services.taxstore import models
from services.taxstore.api import admin_router, router
from services.taxstore.faults import FaultInjector, Faults
from services.taxstore.policy import Policy
from services.taxstore.schemas import SubmissionDoc
from services.taxstore.settings import TaxstoreSettings
from services.taxstore.stats import Stats
from shared.apidocs import service_app
from shared.audit import audit_router
from shared.db import engine_for, ping, session_factory
from shared.http import (
    BodyLimitMiddleware,
    RequestContextMiddleware,
    health_router,
    install_problem_handlers,
)
from shared.logging import configure_logging
from shared.migrate import upgrade_async

SERVICE = "taxstore"
MIGRATIONS = Path(__file__).parent / "migrations"
log = logging.getLogger(__name__)


async def migrate(settings: TaxstoreSettings) -> None:
    await upgrade_async(migrations_dir=MIGRATIONS, database_url=settings.database_url, schema=models.SCHEMA)


def create_app(settings: TaxstoreSettings | None = None) -> FastAPI:
    settings = settings or TaxstoreSettings()
    configure_logging(service=SERVICE, level=settings.log_level, json_output=settings.log_json)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.auto_migrate:
            await migrate(settings)
        engine = engine_for(settings, service=SERVICE)
        app.state.engine = engine
        app.state.sessions = session_factory(engine)
        app.state.checks["database"] = lambda: ping(engine)
        log.info("taxstore ready on %s:%d with faults %s", settings.host, settings.port, app.state.faults.faults)
        try:
            yield
        finally:
            await engine.dispose()

    app = service_app(
        title="Fapiao Sync — simulated tax store",
        version="1",
        description="A stand-in for the central tax authority's invoice store, with fault injection.",
        lifespan=lifespan,
        documented=(SubmissionDoc,),
    )
    app.state.settings = settings
    app.state.checks = {}
    app.state.faults = FaultInjector(Faults.from_settings(settings))
    app.state.policy = Policy.from_settings(settings)
    app.state.stats = Stats()
    install_problem_handlers(app)
    app.include_router(audit_router(SERVICE))
    app.include_router(router)
    app.include_router(admin_router)

    app.include_router(health_router("database"))
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestContextMiddleware, service=SERVICE)
    return app
