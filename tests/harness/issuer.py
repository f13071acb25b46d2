"""The issuer in this process (real PostgreSQL, real Kafka, lifespan and outbox relay running), and its tenants."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx

from fapiao.infra import free_port
from tests.harness.infra import ADMIN, ADMIN_TOKEN, Infra

UNTHROTTLED: dict[str, object] = {
    "read_rate": 100_000.0, "read_burst": 1_000_000, "write_rate": 100_000.0, "write_burst": 1_000_000,
    "import_rate": 10_000_000.0, "import_burst": 100_000_000, "tenant_concurrency": 100_000,
}


def issuer_settings(infra: Infra, **over: object):  # type: ignore[no-untyped-def]
    from services.issuer.settings import IssuerSettings

    values: dict[str, object] = {
        "env": "test", "database_url": infra.database_url, "kafka_bootstrap": infra.kafka_bootstrap,
        "admin_token": ADMIN_TOKEN, "topic_prefix": f"t{uuid.uuid4().hex[:8]}.", "log_json": False,
        "idempotency_wait_seconds": 3.0, "relay_poll_interval": 0.5, "kafka_partitions": 3,
        # Never the developer's `make up` services on the default ports: nothing listens here unless a test
        # passes its own.
        "reconciler_url": f"http://127.0.0.1:{free_port()}", "notifier_url": f"http://127.0.0.1:{free_port()}",
        "taxstore_url": f"http://127.0.0.1:{free_port()}", "sync_url": f"http://127.0.0.1:{free_port()}",
        "ops_sample_interval": 1.0,
        # The status self-check is proven where a reconciler runs (recon_issuer); elsewhere there is none to ask.
        "self_check_interval": 3600.0,
        # The per-tenant limits stay on (every answer carries their headers) but out of the way; the tests of the
        # limits themselves (test_limits.py) pass their own.
        **UNTHROTTLED,
    }
    values.update(over)
    return IssuerSettings(**values)  # type: ignore[arg-type]


@dataclass
class Tenant:
    id: str
    tax_id: str
    headers: dict[str, str]


@dataclass
class RunningIssuer:
    app: object
    client: httpx.AsyncClient
    settings: object

    @property
    def topic(self) -> str:
        from shared.topics import INVOICE_EVENTS

        return INVOICE_EVENTS.qualified(self.settings.topic_prefix)  # type: ignore[attr-defined]

    async def new_tenant(self, name: str = "测试企业 Test Co.") -> Tenant:
        from tests.factories import uscc

        r = await self.client.post("/admin/tenants", json={"name": name, "tax_id": uscc()}, headers=ADMIN)
        assert r.status_code == 201, r.text
        body = r.json()
        return Tenant(body["id"], body["tax_id"], {"Authorization": f"Bearer {body['api_key']}"})


async def start_issuer(settings: object) -> tuple[object, httpx.AsyncClient, object]:
    """create_app(settings) with its lifespan entered, and a client that calls it in process."""
    from services.issuer.app import create_app

    app = create_app(settings)  # type: ignore[arg-type]
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://issuer.test", timeout=30)
    return app, client, lifespan


@asynccontextmanager
async def running_issuer(settings: object) -> AsyncIterator[RunningIssuer]:
    app, client, lifespan = await start_issuer(settings)
    try:
        yield RunningIssuer(app, client, settings)
    finally:
        await client.aclose()
        await lifespan.__aexit__(None, None, None)  # type: ignore[attr-defined]
