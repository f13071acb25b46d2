"""create_app(settings) -> FastAPI. The lifespan owns the engine, the outbox relay, the status-feed consumer,
the HTTP client to the reconciler and the probes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from services.issuer import idempotency, models, row_security
from services.issuer.api import admin, cases, invoices, notifications, redletter
from services.issuer.backends import make_http
from services.issuer.feeds.consumer import run_status_feed_consumer
from services.issuer.invoices import redletter as redletter_use_cases
from services.issuer.invoices.issuing import mark_published
from services.issuer.limits import AdmissionMiddleware, Policy, TenantLimits
from services.issuer.ops.dashboard import OpsSampler
from services.issuer.ops.dashboard import page_router as ops_page_router
from services.issuer.ops.dashboard import router as ops_router
from services.issuer.selfcheck import LedgerClient, SelfCheck
from services.issuer.settings import IssuerSettings
from services.issuer.tenants import KeyCache
from shared.apidocs import service_app
from shared.audit import audit_router
from shared.db import transaction
from shared.http import (
    BodyLimitMiddleware,
    RequestContextMiddleware,
    health_router,
    install_problem_handlers,
)
from shared.kafka import ensure_topics_forever
from shared.logging import configure_logging
from shared.migrate import upgrade_async
from shared.runtime import service_runtime
from shared.topics import ALERTS, ALL_TOPICS

SERVICE = "issuer"
MIGRATIONS = Path(__file__).parent / "migrations"
log = logging.getLogger(__name__)


async def migrate(settings: IssuerSettings) -> None:
    await upgrade_async(migrations_dir=MIGRATIONS, database_url=settings.database_url, schema=models.SCHEMA)


async def _form_expiry_alerts(app: FastAPI, settings: IssuerSettings) -> None:
    """Now and then, the "form expires soon" alerts of pending red-letter forms (any replica; rows are locked)."""
    topic = ALERTS.qualified(settings.topic_prefix)
    while True:
        await asyncio.sleep(min(60.0, settings.form_expiry_warning / 4))
        try:
            async with transaction(app.state.worker_sessions) as session:
                await redletter_use_cases.alert_expiring(session=session, topic=topic,
                                                         warning=settings.form_expiry_warning)
        except Exception as exc:  # noqa: BLE001 - the database may be away; the next round tries again
            log.warning("form expiry alerts skipped (%s: %s)", type(exc).__name__, exc)


async def _purge_idempotency(app: FastAPI, settings: IssuerSettings) -> None:
    while True:
        await asyncio.sleep(600)
        with contextlib.suppress(Exception):
            async with transaction(app.state.worker_sessions) as session:
                await idempotency.purge(session=session, older_than_hours=settings.idempotency_ttl_hours)


async def _forget_idle_tenants(app: FastAPI) -> None:
    while True:
        await asyncio.sleep(600)
        if app.state.limits is not None:
            app.state.limits.forget_idle(now=time.monotonic())


def tenant_limits(settings: IssuerSettings) -> TenantLimits | None:
    """The per-tenant budgets and in-flight cap of this process, or None when FAPIAO_RATE_LIMITS is off.

    Each API worker (FAPIAO_API_WORKERS) holds the whole budget, as each replica does: an ERP on one keep-alive
    connection reaches one worker and gets all of it, and a tenant whose connections spread over N workers can
    get up to N times (docs/security.md). Dividing the budget instead would refuse the one-connection ERP at a
    fraction of its rate."""
    if not settings.rate_limits:
        return None
    return TenantLimits({"read": Policy(settings.read_burst, settings.read_rate),
                         "write": Policy(settings.write_burst, settings.write_rate),
                         "import": Policy(settings.import_burst, settings.import_rate)},
                        concurrency=settings.tenant_concurrency)


def create_app(settings: IssuerSettings | None = None) -> FastAPI:
    settings = settings or IssuerSettings()
    configure_logging(service=SERVICE, level=settings.log_level, json_output=settings.log_json)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        serves, relays = settings.process_role != "background", settings.process_role != "api"
        async with service_runtime(app, settings, service=SERVICE, migrate=migrate, outbox=models.outbox,
                                   on_published=mark_published, session_settings=row_security.SESSION_SETTINGS,
                                   relay=relays) as rt:
            token = settings.admin_token.get_secret_value()
            app.state.reconciler_http = make_http(settings.reconciler_url, token, settings.reconciler_timeout)
            app.state.notifier_http = make_http(settings.notifier_url, token, settings.notifier_timeout)
            app.state.taxstore_http = make_http(settings.taxstore_url, token, settings.taxstore_timeout)
            sampler = OpsSampler(settings=settings, sessions=rt.worker_sessions,
                                 reconciler_http=app.state.reconciler_http)
            app.state.ops_sampler = sampler
            app.state.before_metrics = [sampler.publish]
            app.state.ledger = LedgerClient(app.state.reconciler_http, timeout=settings.reconciler_timeout)
            app.state.schedule = LedgerClient(app.state.reconciler_http, timeout=settings.schedule_timeout)
            self_check = SelfCheck(sessions=rt.worker_sessions, ledger=app.state.ledger,
                                   interval=settings.self_check_interval, grace=settings.self_check_grace,
                                   batch=settings.self_check_batch)
            app.state.self_check = self_check
            stopping = asyncio.Event()
            # What answers requests (every API worker) and what must run in one place (the background process,
            # or this one when it is the only process): see services/issuer/workers.py.
            tasks = [asyncio.create_task(_forget_idle_tenants(app), name="forget-idle-tenants")] if serves else []
            if relays:  # an API worker of several samples only when the dashboard asks (OpsSampler.fresh)
                tasks += [
                    asyncio.create_task(sampler.run(), name="ops-sampler"),
                    asyncio.create_task(ensure_topics_forever(
                        settings.kafka_bootstrap, ALL_TOPICS, prefix=settings.topic_prefix,
                        partitions=settings.kafka_partitions, replication_factor=settings.kafka_replication_factor,
                    ), name="ensure-topics"),
                    asyncio.create_task(_purge_idempotency(app, settings), name="purge-idempotency"),
                    asyncio.create_task(_form_expiry_alerts(app, settings), name="form-expiry-alerts"),
                    asyncio.create_task(run_status_feed_consumer(settings, rt.worker_sessions, stopping),
                                        name="status-feed"),
                    asyncio.create_task(self_check.run(), name="status-self-check"),
                ]
            log.info("issuer (%s) ready on %s:%d", settings.process_role, settings.host, settings.port)
            try:
                yield
            finally:
                stopping.set()
                sampler.stop()
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                if not relays:  # its loop (which closes the reader) never ran here
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(sampler.offsets.close(), 5)
                await app.state.reconciler_http.aclose()
                await app.state.notifier_http.aclose()
                await app.state.taxstore_http.aclose()

    app = service_app(
        title="Fapiao Sync — issuer",
        version="1",
        description="Issue invoices from your ERP and follow each one until the tax authority shows it.",
        lifespan=lifespan,
        limited=("/v1/",),
    )
    app.state.settings = settings
    app.state.process = {"role": settings.process_role, "pid": str(os.getpid())}
    app.state.checks = {}
    app.state.ops_sampler = None
    app.state.schedule = None
    app.state.limits = tenant_limits(settings)
    app.state.keys = KeyCache(settings.api_key_cache_seconds)
    install_problem_handlers(app)
    app.include_router(audit_router(SERVICE))
    app.include_router(invoices.router)
    app.include_router(cases.router)
    app.include_router(redletter.router)
    app.include_router(notifications.router)
    app.include_router(ops_router)
    app.include_router(ops_page_router)
    app.include_router(admin.router)

    app.include_router(health_router("database", "kafka"))
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(AdmissionMiddleware)
    app.add_middleware(RequestContextMiddleware, service=SERVICE)
    return app
