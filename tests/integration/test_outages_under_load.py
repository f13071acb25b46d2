"""What clients hear while a dependency fails under load: 201s while Kafka is down (the outbox waits), 503 with
Retry-After while PostgreSQL is down or the request pool is exhausted — never a 500 — and 201s again after."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from fapiao.infra import KafkaBroker, PostgresServer, free_port
from services.issuer import models as m
from shared.metrics import DB_UNAVAILABLE
from tests import factories
from tests.harness import ADMIN_TOKEN, eventually, fresh_database, issuer_settings, start_issuer

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@dataclass
class Load:
    """`workers` clients posting invoices back to back (a short pause each), every answer kept."""

    client: httpx.AsyncClient
    tax_id: str
    headers: dict[str, str]
    workers: int = 12
    pause: float = 0.01
    answers: list[tuple[float, httpx.Response]] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task] = field(default_factory=list)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run()) for _ in range(self.workers)]

    async def _run(self) -> None:
        while not self._stop.is_set():
            r = await self.client.post("/v1/invoices", json=factories.invoice(self.tax_id), headers={
                **self.headers, "Idempotency-Key": uuid.uuid4().hex})
            self.answers.append((time.monotonic(), r))
            if r.status_code == 201:
                self.ids.append(r.json()["id"])
            await asyncio.sleep(self.pause)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.wait_for(asyncio.gather(*self._tasks), 60)

    def statuses(self, since: float = 0.0) -> Counter[int]:
        return Counter(r.status_code for t, r in self.answers if t >= since)

    def sample(self, status: int) -> str:
        return next((r.text[:300] for _, r in self.answers if r.status_code == status), "")


def _pool_exhaustions() -> float:
    return DB_UNAVAILABLE.labels("issuer", "pool_exhausted")._value.get()


async def _tenant(client: httpx.AsyncClient) -> tuple[str, dict[str, str]]:
    r = await client.post("/admin/tenants", json={"name": "负载 Load Co.", "tax_id": factories.uscc()}, headers=ADMIN)
    assert r.status_code == 201, r.text
    return r.json()["tax_id"], {"Authorization": f"Bearer {r.json()['api_key']}"}


def _assert_database_503(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert int(r.headers["retry-after"]) >= 1
    body = r.json()
    assert body["code"] == "database_unavailable" and body["status"] == 503, body
    assert "postgresql" not in r.text.lower() and "select" not in r.text.lower(), "no DSN, no SQL"


# --- Kafka -------------------------------------------------------------------------------------------------

@pytest.fixture
def own_broker(infra):  # type: ignore[no-untyped-def]
    broker = KafkaBroker(infra.workdir / f"kafka-load-{free_port()}", port=free_port(),
                         controller_port=free_port(), die_with_parent=True)
    broker.start()
    yield broker
    broker.stop()


async def test_kafka_killed_mid_load_every_answer_is_201_and_the_outbox_drains(infra, own_broker) -> None:
    database_url = await fresh_database(infra, f"kload_{uuid.uuid4().hex[:8]}")
    settings = issuer_settings(infra, database_url=database_url, kafka_bootstrap=own_broker.bootstrap,
                               relay_poll_interval=0.2, kafka_request_timeout_ms=3000)
    app, client, lifespan = await start_issuer(settings)
    load = None
    try:
        tax_id, headers = await _tenant(client)
        exhausted_before = _pool_exhaustions()
        load = Load(client, tax_id, headers, workers=16)
        load.start()
        await asyncio.sleep(2)
        os.killpg(own_broker.pid, signal.SIGKILL)  # kill -9, mid-load
        own_broker.process.wait(10)  # type: ignore[attr-defined]
        killed_at = time.monotonic()
        await asyncio.sleep(8)  # relay, status-feed consumer and sampler all failing meanwhile
        await load.stop()

        assert load.statuses(since=killed_at)[201] >= 50, load.statuses(since=killed_at)
        assert set(load.statuses()) == {201}, (load.statuses(), load.sample(500) or load.sample(503))
        assert _pool_exhaustions() == exhausted_before, "no request waited out the pool"
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["database"] == "ok"

        async def published() -> int:
            async with app.state.engine.connect() as conn:
                return int((await conn.execute(select(func.count()).select_from(m.outbox)
                                               .where(m.outbox.c.published_at.is_not(None)))).scalar_one())

        assert await published() < len(load.ids), "events waited in the outbox while the broker was down"
        own_broker.pid = None
        own_broker.start()
        total = len(load.ids)
        await eventually(lambda: _at_least(published, total), timeout=90, interval=0.5)
        async with app.state.engine.connect() as conn:
            statuses = dict((await conn.execute(select(m.invoices.c.status, func.count())
                                                .group_by(m.invoices.c.status))).all())
        assert sum(statuses.values()) == total and statuses.get("accepted", 0) == 0, statuses
    finally:
        if load is not None and not load._stop.is_set():
            await load.stop()
        await client.aclose()
        await lifespan.__aexit__(None, None, None)  # type: ignore[attr-defined]


async def _at_least(fn: Any, n: int) -> bool:
    return await fn() >= n


# --- PostgreSQL --------------------------------------------------------------------------------------------

@pytest.fixture
def own_postgres(infra):  # type: ignore[no-untyped-def]
    pg = PostgresServer(infra.workdir / f"pg-load-{free_port()}", port=free_port(), die_with_parent=True)
    pg.start()
    yield pg
    pg.stop()


def _kill9(pg: PostgresServer) -> None:
    os.killpg(pg.pid, signal.SIGKILL)  # type: ignore[arg-type]  # the postmaster and every backend
    pg.process.wait(10)  # type: ignore[attr-defined]
    pg.pid = None


async def test_postgres_killed_mid_load_answers_503_then_201_again(infra, own_postgres) -> None:
    settings = issuer_settings(infra, database_url=own_postgres.url(), relay_poll_interval=0.2)
    app, client, lifespan = await start_issuer(settings)
    load = None
    try:
        tax_id, headers = await _tenant(client)
        load = Load(client, tax_id, headers, workers=12, pause=0.02)
        load.start()
        await asyncio.sleep(2)
        _kill9(own_postgres)
        killed_at = time.monotonic()
        await asyncio.sleep(4)
        # Authentication needs the database too: a bad body cannot be judged before the caller is known.
        r = await client.post("/v1/invoices", content=b'{"number": "26', headers={
            **headers, "Content-Type": "application/json"})
        _assert_database_503(r)
        await asyncio.sleep(1)
        during = load.statuses(since=killed_at + 0.5)
        own_postgres.start()  # crash recovery, then it accepts connections again (blocks this loop meanwhile)
        restarted_at = time.monotonic()

        await eventually(lambda: load.statuses(since=restarted_at)[201] > 0, timeout=30, interval=0.2)
        await load.stop()

        everything = load.statuses()
        assert 500 not in everything, (everything, load.sample(500))
        assert set(everything) <= {201, 503}, (everything, load.sample(max(everything)))
        assert everything[201] > 0 and everything[503] > 0, everything
        assert set(during) == {503}, f"while the server was down: {during}"
        for _, r in load.answers:
            if r.status_code == 503:
                _assert_database_503(r)
        # And the background loops came back too: the relay publishes what is accepted after the restart.
        last = load.ids[-1]
        await eventually(lambda: _published(client, headers, last), timeout=60, interval=0.5)
    finally:
        if load is not None and not load._stop.is_set():
            await load.stop()
        await client.aclose()
        await lifespan.__aexit__(None, None, None)  # type: ignore[attr-defined]


async def _published(client: httpx.AsyncClient, headers: dict[str, str], invoice_id: str) -> bool:
    r = await client.get(f"/v1/invoices/{invoice_id}", headers=headers)
    return r.status_code == 200 and r.json()["status"] == "published"


# --- the request pool --------------------------------------------------------------------------------------

async def _hold(engine: Any, n: int) -> list[Any]:
    held = []
    for _ in range(n):
        conn = engine.connect()
        await asyncio.wait_for(conn.start(), 40)
        held.append(conn)
    return held


async def test_exhausted_request_pool_answers_503_quickly_and_background_work_cannot_exhaust_it(infra) -> None:
    database_url = await fresh_database(infra, f"pool_{uuid.uuid4().hex[:8]}")
    settings = issuer_settings(infra, database_url=database_url, db_pool_size=2, db_pool_timeout=0.5,
                               db_worker_pool_size=1)
    app, client, lifespan = await start_issuer(settings)
    held: list[Any] = []
    try:
        tax_id, headers = await _tenant(client)
        before = _pool_exhaustions()
        held = await _hold(app.state.engine, 4)  # the request pool: 2 + 2 overflow
        started = time.monotonic()
        r = await client.post("/v1/invoices", json=factories.invoice(tax_id), headers=headers)
        waited = time.monotonic() - started
        _assert_database_503(r)
        assert r.json()["reason"] == "pool_exhausted"
        assert r.headers["x-correlation-id"] == r.json()["correlation_id"]
        assert waited < 3, f"a request waits at most about db_pool_timeout, not {waited:.1f}s"
        assert _pool_exhaustions() == before + 1
        for conn in held:
            await conn.close()
        held = []
        assert (await client.post("/v1/invoices", json=factories.invoice(tax_id), headers=headers)).status_code == 201

        # Every connection the background loops may have, taken: requests do not notice.
        worker = app.state.worker_engine
        held = await _hold(worker, worker.pool.size() + worker.pool._max_overflow - worker.pool.checkedout())
        assert worker.pool.checkedout() == 2
        for _ in range(5):
            r = await client.post("/v1/invoices", json=factories.invoice(tax_id), headers=headers)
            assert r.status_code == 201, r.text
    finally:
        for conn in held:
            await conn.close()
        await client.aclose()
        await lifespan.__aexit__(None, None, None)  # type: ignore[attr-defined]


# --- every service, through the same middleware ------------------------------------------------------------

def _service_apps(infra: Any, dead_db: str) -> dict[str, tuple[Any, str]]:
    """name -> (app, a GET that reads the database), each on a database URL nothing listens on."""
    from services.notifier.app import create_app as notifier
    from services.notifier.settings import NotifierSettings
    from services.reconciler.app import create_app as reconciler
    from services.reconciler.settings import ReconcilerSettings
    from services.sync.app import create_app as sync
    from services.sync.settings import SyncSettings
    from services.taxstore.app import create_app as taxstore
    from services.taxstore.settings import TaxstoreSettings

    base = {"env": "test", "database_url": dead_db, "admin_token": ADMIN_TOKEN, "log_json": False,
            "auto_migrate": False}
    kafka = {"kafka_bootstrap": infra.kafka_bootstrap, "topic_prefix": f"dead{uuid.uuid4().hex[:6]}."}
    return {
        "taxstore": (taxstore(TaxstoreSettings(**base)), f"/v1/invoices?seller_tax_id={factories.uscc()}"),
        "sync": (sync(SyncSettings(**base, **kafka)), "/admin/status"),
        "reconciler": (reconciler(ReconcilerSettings(**base, **kafka)), "/admin/gaps"),
        "notifier": (notifier(NotifierSettings(**base, **kafka, secrets_key="k" * 40)),
                     f"/admin/tenants/{uuid.uuid4()}/subscriptions"),
    }


async def test_every_service_answers_503_when_its_database_is_unreachable(infra) -> None:
    dead_db = f"postgresql://fapiao:never-logged@127.0.0.1:{free_port()}/fapiao"
    for name, (app, path) in _service_apps(infra, dead_db).items():
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc.test") as c:
                before = DB_UNAVAILABLE.labels(name, "connection_lost")._value.get()
                r = await c.get(path, headers=ADMIN)
                _assert_database_503(r)
                assert "never-logged" not in r.text, name
                assert DB_UNAVAILABLE.labels(name, "connection_lost")._value.get() == before + 1, name
        finally:
            await lifespan.__aexit__(None, None, None)
