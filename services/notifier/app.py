"""create_app(settings) -> FastAPI. The lifespan owns the engine, the alert consumer, the batcher, the sender,
the reminder round, the metrics refresher and the outbox relay that tells the issuer what was delivered."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from services.notifier import models
from services.notifier.api import router
from services.notifier.channels import Mailer, WebhookSender
from services.notifier.guard import TargetPolicy, parse_networks
from services.notifier.settings import NotifierSettings
from services.notifier.signing import SecretBox
from services.notifier.worker import Notifier
from shared.apidocs import service_app
from shared.audit import audit_router
from shared.http import RequestContextMiddleware, health_router, install_problem_handlers
from shared.kafka import ensure_topics_forever
from shared.logging import configure_logging
from shared.migrate import upgrade_async
from shared.runtime import service_runtime
from shared.topics import ALL_TOPICS

SERVICE = "notifier"
MIGRATIONS = Path(__file__).parent / "migrations"
log = logging.getLogger(__name__)


async def migrate(settings: NotifierSettings) -> None:
    await upgrade_async(migrations_dir=MIGRATIONS, database_url=settings.database_url, schema=models.SCHEMA)


def secret_box(settings: NotifierSettings) -> SecretBox:
    if settings.secrets_key is not None:
        return SecretBox(settings.secrets_key.get_secret_value())
    # Development only (settings refuse this elsewhere): a key derived from the admin token.
    return SecretBox("development:" + settings.admin_token.get_secret_value())


async def _run(notifier: Notifier, settings: NotifierSettings) -> None:
    await ensure_topics_forever(settings.kafka_bootstrap, ALL_TOPICS, prefix=settings.topic_prefix,
                                partitions=settings.kafka_partitions,
                                replication_factor=settings.kafka_replication_factor)
    await notifier.run()


def create_app(settings: NotifierSettings | None = None) -> FastAPI:
    settings = settings or NotifierSettings()
    configure_logging(service=SERVICE, level=settings.log_level, json_output=settings.log_json)
    policy = TargetPolicy(parse_networks(settings.webhook_allow_private))
    box = secret_box(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with service_runtime(app, settings, service=SERVICE, migrate=migrate, outbox=models.outbox) as rt:
            webhooks = WebhookSender(policy=policy, timeout=settings.webhook_timeout,
                                     connect_timeout=settings.webhook_connect_timeout)
            mailer = Mailer(host=settings.smtp_host, port=settings.smtp_port, username=settings.smtp_username,
                            password=settings.smtp_password.get_secret_value() if settings.smtp_password else None,
                            use_tls=settings.smtp_tls, start_tls=settings.smtp_starttls, timeout=settings.smtp_timeout)
            notifier = Notifier(settings=settings, sessions=rt.worker_sessions, box=box, webhooks=webhooks,
                                mailer=mailer)
            app.state.worker = notifier
            task = asyncio.create_task(_run(notifier, settings), name="notifier")
            log.info("notifier ready on %s:%d (digest window %gs, SMTP %s:%d, private webhook ranges: %s)",
                     settings.host, settings.port, settings.digest_window, settings.smtp_host, settings.smtp_port,
                     settings.webhook_allow_private or "none")
            try:
                yield
            finally:
                notifier.stop()
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await webhooks.close()

    app = service_app(title="Fapiao Sync — notifier", version="1", lifespan=lifespan,
                  description="Delivers alerts about invoices by signed webhook and e-mail. Admin endpoints only; "
                              "tenants use the issuer's /v1/subscriptions and /v1/notifications.")
    app.state.settings = settings
    app.state.checks = {}
    app.state.worker = None
    app.state.policy = policy
    app.state.box = box
    install_problem_handlers(app)
    app.include_router(audit_router(SERVICE))
    app.include_router(router)
    app.include_router(health_router("database", "kafka"))
    app.add_middleware(RequestContextMiddleware, service=SERVICE)
    return app
