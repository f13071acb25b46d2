"""Real infrastructure for the whole suite: PostgreSQL and Kafka started here, on free ports, in a
private directory — never the `make up` stack. Set FAPIAO_TEST_DATABASE_URL / FAPIAO_TEST_KAFKA_BOOTSTRAP
to use servers of your own instead. Missing infrastructure fails the run with the reason; nothing skips.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from fapiao.infra import KafkaBroker, PostgresServer, free_port

ARTIFACTS = Path(__file__).resolve().parent.parent / ".test-artifacts"
ADMIN_TOKEN = "test-admin-token-" + uuid.uuid4().hex


@dataclass
class Infra:
    database_url: str
    kafka_bootstrap: str
    workdir: Path
    postgres: PostgresServer | None
    kafka: KafkaBroker | None



@pytest.fixture(scope="session")
def infra(request: pytest.FixtureRequest) -> Iterator[Infra]:
    ARTIFACTS.mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="run-", dir=ARTIFACTS))
    db_url = os.environ.get("FAPIAO_TEST_DATABASE_URL")
    bootstrap = os.environ.get("FAPIAO_TEST_KAFKA_BOOTSTRAP")
    pg = None if db_url else PostgresServer(workdir / "postgres", port=free_port(), die_with_parent=True)
    kafka = None if bootstrap else KafkaBroker(workdir / "kafka", port=free_port(), controller_port=free_port(),
                                               die_with_parent=True)
    try:
        # From this thread: children die with the thread that spawned them (PR_SET_PDEATHSIG).
        for server in (pg, kafka):
            if server is not None:
                server.start()
    except Exception as exc:
        for s in (pg, kafka):
            if s is not None:
                s.stop()
        pytest.fail(f"could not start the test infrastructure: {exc}", pytrace=False)
    infra = Infra(db_url or pg.url(), bootstrap or kafka.bootstrap, workdir, pg, kafka)  # type: ignore[union-attr]
    yield infra
    for s in (kafka, pg):
        if s is not None:
            s.stop()
    if not request.session.testsfailed:
        shutil.rmtree(workdir, ignore_errors=True)


def issuer_settings(infra: Infra, **over: object):  # type: ignore[no-untyped-def]
    from services.issuer.settings import IssuerSettings

    values: dict[str, object] = {
        "env": "test", "database_url": infra.database_url, "kafka_bootstrap": infra.kafka_bootstrap,
        "admin_token": ADMIN_TOKEN, "topic_prefix": f"t{uuid.uuid4().hex[:8]}.", "log_json": False,
        "idempotency_wait_seconds": 3.0, "relay_poll_interval": 0.5, "kafka_partitions": 3,
    }
    values.update(over)
    return IssuerSettings(**values)  # type: ignore[arg-type]


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

        r = await self.client.post("/admin/tenants", json={"name": name, "tax_id": uscc()},
                                   headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert r.status_code == 201, r.text
        body = r.json()
        return Tenant(body["id"], body["tax_id"], {"Authorization": f"Bearer {body['api_key']}"})


@dataclass
class Tenant:
    id: str
    tax_id: str
    headers: dict[str, str]


async def start_issuer(settings: object) -> tuple[object, httpx.AsyncClient, object]:
    from services.issuer.app import create_app

    app = create_app(settings)  # type: ignore[arg-type]
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://issuer.test", timeout=30)
    return app, client, lifespan


@pytest.fixture(scope="session")
async def issuer(infra: Infra) -> AsyncIterator[RunningIssuer]:
    """One in-process issuer (real PostgreSQL, real Kafka, lifespan and outbox relay running)."""
    settings = issuer_settings(infra)
    app, client, lifespan = await start_issuer(settings)
    try:
        yield RunningIssuer(app, client, settings)
    finally:
        await client.aclose()
        await lifespan.__aexit__(None, None, None)  # type: ignore[attr-defined]


@pytest.fixture
async def tenant(issuer: RunningIssuer) -> Tenant:
    return await issuer.new_tenant()


async def eventually(check, *, timeout: float = 15.0, interval: float = 0.1):  # type: ignore[no-untyped-def]
    """Poll an async check until it returns a truthy value; fail with its last value after timeout."""
    deadline = asyncio.get_running_loop().time() + timeout
    last = None
    while asyncio.get_running_loop().time() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s; last value: {last!r}")


async def read_topic(bootstrap: str, topic: str, *, until, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    """All records on `topic` from the beginning, polling until `until(records)` holds or timeout."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    records: list = []
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(timeout_ms=300)
            for recs in batch.values():
                records.extend(recs)
            if until(records):
                return records
        return records
    finally:
        await consumer.stop()


async def fresh_database(infra: Infra, name: str) -> str:
    """A new, empty database on the test server: for a deployment that must not share the issuer schema
    (one outbox relay leads per schema, and it publishes to its own cluster)."""
    from sqlalchemy import text
    from sqlalchemy.engine import make_url
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(infra.database_url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(f'create database "{name}"'))
    finally:
        await engine.dispose()
    return make_url(infra.database_url).set(database=name).render_as_string(hide_password=False)
