"""Real infrastructure for the whole suite: PostgreSQL and Kafka started here, on free ports, in a
private directory — never the `make up` stack. Set FAPIAO_TEST_DATABASE_URL / FAPIAO_TEST_KAFKA_BOOTSTRAP
to use servers of your own instead. Missing infrastructure fails the run with the reason; nothing skips.
"""

from __future__ import annotations

import asyncio
import inspect
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
        # Never the developer's `make up` services on the default ports: nothing listens here unless a test
        # passes its own.
        "reconciler_url": f"http://127.0.0.1:{free_port()}", "notifier_url": f"http://127.0.0.1:{free_port()}",
        "taxstore_url": f"http://127.0.0.1:{free_port()}", "sync_url": f"http://127.0.0.1:{free_port()}",
        "ops_sample_interval": 1.0,
        # The status self-check is proven where a reconciler runs (recon_issuer); elsewhere there is none to ask.
        "self_check_interval": 3600.0,
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
    """Poll a check (sync or async) until it returns a truthy value; fail with its last value after timeout."""
    deadline = asyncio.get_running_loop().time() + timeout
    last = None
    while asyncio.get_running_loop().time() < deadline:
        last = check()
        if inspect.isawaitable(last):
            last = await last
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


async def metric(base_url: str, name: str, **labels: str) -> float:
    """One sample of a service's /metrics (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    async with httpx.AsyncClient(timeout=10) as c:
        body = (await c.get(f"{base_url}/metrics")).text
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


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


# --- real service processes ---------------------------------------------------------------------

REPO = Path(__file__).resolve().parent.parent


def process_env(infra: Infra, **extra: str) -> dict[str, str]:
    """A clean environment for a service process: the test infrastructure, never the developer's FAPIAO_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAPIAO_")}
    env.update(FAPIAO_DATABASE_URL=infra.database_url, FAPIAO_KAFKA_BOOTSTRAP=infra.kafka_bootstrap,
               FAPIAO_ADMIN_TOKEN=ADMIN_TOKEN, FAPIAO_ENV="test", FAPIAO_LOG_JSON="false",
               FAPIAO_STACK_DIR=str(infra.workdir / "no-stack"), PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


class ServiceProcess:
    """`python -m services.<name>` (or another module) on a free port, started, killed and restarted by tests.
    Ready when its /readyz answers 200 (`http=False`: when its port accepts connections)."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path, *, module: str | None = None,
                 args: tuple[str, ...] = (), http: bool = True) -> None:
        self.name = name
        self.port = free_port()
        self.env = {**env, "FAPIAO_PORT": str(self.port), "FAPIAO_PUBLIC_URL": f"http://127.0.0.1:{self.port}"}
        self.log_path = log_dir / f"{name}-{self.port}.log"
        self.proc = None
        self.url = f"http://127.0.0.1:{self.port}"
        self.module = module or f"services.{name}"
        self.args = args
        self.http = http

    def start(self, timeout: float = 60) -> None:
        import sys

        from fapiao.infra.procs import port_is_open, spawn, wait_until

        # From the main thread: the child gets SIGKILL if this test process dies (PR_SET_PDEATHSIG).
        self.proc = spawn([sys.executable, "-m", self.module, *self.args], log_path=self.log_path, cwd=REPO,
                          env=self.env, die_with_parent=True)

        def ready() -> bool:
            if not self.http:
                return port_is_open(self.port)
            try:
                return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout=timeout, what=f"{self.name} process", alive=lambda: self.proc.poll() is None,
                   log_path=self.log_path, interval=0.1)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """kill -9: no shutdown hooks, no flushing, no offset commits."""
        import signal

        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        from fapiao.infra.procs import stop_group

        if self.proc is not None and self.proc.poll() is None:
            stop_group(self.proc.pid, timeout=20)
            self.proc.wait(10)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class Pipeline:
    """The issuer (in process), the tax store and the sync service (real processes) on one topic prefix."""

    issuer: RunningIssuer
    taxstore: ServiceProcess
    sync: ServiceProcess
    admin: dict[str, str]

    async def faults(self, **values: object) -> dict:
        async with httpx.AsyncClient(timeout=10) as c:
            r = await c.put(f"{self.taxstore.url}/admin/faults", json=values, headers=self.admin)
        assert r.status_code == 200, r.text
        return r.json()

    async def clear_faults(self) -> None:
        await self.faults(latency_ms=0, latency_jitter_ms=0, error_rate=0, timeout_rate=0, drop_rate=0,
                          visibility_delay_ms=0, corrupt_rate=0, outage=False)

    async def stats(self) -> dict:
        async with httpx.AsyncClient(timeout=10) as c:
            r = await c.get(f"{self.taxstore.url}/admin/stats", headers=self.admin)
        assert r.status_code == 200, r.text
        return r.json()

    async def register(self, tax_id: str) -> None:
        async with httpx.AsyncClient(timeout=10) as c:
            r = await c.put(f"{self.taxstore.url}/admin/sellers/{tax_id}", json={"name": "registered seller"},
                            headers=self.admin)
        assert r.status_code in (200, 201), r.text

    async def stored(self, seller_tax_id: str) -> dict[str, dict]:
        """Everything the tax store shows for a seller, by invoice number (pages through the listing)."""
        out: dict[str, dict] = {}
        cursor = None
        async with httpx.AsyncClient(timeout=30) as c:
            while True:
                params = {"seller_tax_id": seller_tax_id, "limit": 1000, **({"cursor": cursor} if cursor else {})}
                r = await c.get(f"{self.taxstore.url}/v1/invoices", params=params)
                assert r.status_code == 200, r.text
                body = r.json()
                for item in body["items"]:
                    assert item["number"] not in out, f"listed twice: {item['number']}"
                    out[item["number"]] = item
                cursor = body.get("next_cursor")
                if not cursor:
                    return out

    async def statuses(self, tenant_id: str) -> dict[str, int]:
        from sqlalchemy import text

        async with self.issuer.app.state.engine.connect() as conn:  # type: ignore[attr-defined]
            rows = (await conn.execute(text(
                "select status, count(*) from issuer.invoices where tenant_id = :t group by status"),
                {"t": tenant_id})).all()
        return {r[0]: int(r[1]) for r in rows}


@pytest.fixture(scope="session")
def pipeline_processes(infra: Infra, issuer: RunningIssuer) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    prefix = issuer.settings.topic_prefix  # type: ignore[attr-defined]
    logs = infra.workdir / "logs"
    logs.mkdir(exist_ok=True)
    taxstore = ServiceProcess("taxstore", process_env(infra, FAPIAO_REQUIRE_REGISTRATION="true"), logs)
    sync = ServiceProcess("sync", process_env(
        infra, FAPIAO_TOPIC_PREFIX=prefix, FAPIAO_TAXSTORE_URL=taxstore.url, FAPIAO_KAFKA_PARTITIONS="3",
        FAPIAO_CONNECT_TIMEOUT="1", FAPIAO_SUBMIT_TIMEOUT="1.5", FAPIAO_READ_TIMEOUT="1.5",
        FAPIAO_RETRY_BASE="0.2", FAPIAO_RETRY_CAP="2", FAPIAO_BREAKER_BASE="0.5", FAPIAO_BREAKER_CAP="3",
        FAPIAO_SCHEDULER_INTERVAL="0.2", FAPIAO_RELAY_POLL_INTERVAL="0.3", FAPIAO_SUBMIT_BATCH_SIZE="50",
    ), logs)
    try:
        taxstore.start()
        sync.start()
    except Exception as exc:
        sync.stop()
        taxstore.stop()
        pytest.fail(f"could not start the tax store and sync processes: {exc}", pytrace=False)
    yield taxstore, sync
    sync.stop()
    taxstore.stop()


@pytest.fixture
async def pipeline(issuer: RunningIssuer, pipeline_processes) -> AsyncIterator[Pipeline]:  # type: ignore[no-untyped-def]
    taxstore, sync = pipeline_processes
    if sync.proc is None or sync.proc.poll() is not None:  # a test killed it: bring it back
        sync.start()
    p = Pipeline(issuer, taxstore, sync, {"Authorization": f"Bearer {ADMIN_TOKEN}"})
    await p.clear_faults()
    yield p
    await p.clear_faults()


# --- the reconciler's pipeline: its own issuer, tax store, sync and reconciler ----------------------

RECONCILER_ENV = dict(
    FAPIAO_VISIBILITY_SLA="1.5", FAPIAO_FIRST_CHECK_AFTER="0.3", FAPIAO_STUCK_AFTER="60",
    FAPIAO_STUCK_AFTER_RESYNCS="5", FAPIAO_RESYNC_BASE="1", FAPIAO_RESYNC_CAP="4", FAPIAO_STUCK_RECHECK="1",
    FAPIAO_CHECK_INTERVAL="0.3", FAPIAO_SWEEP_INTERVAL="3", FAPIAO_ORPHAN_GRACE="2", FAPIAO_RELAY_POLL_INTERVAL="0.3",
    FAPIAO_CONNECT_TIMEOUT="1", FAPIAO_READ_TIMEOUT="1.5", FAPIAO_KAFKA_PARTITIONS="3",
)


NOTIFIER_ENV = dict(
    FAPIAO_DIGEST_WINDOW="0.5", FAPIAO_RETRY_BASE="0.5", FAPIAO_RETRY_CAP="2", FAPIAO_MAX_ATTEMPTS="5",
    FAPIAO_WEBHOOK_TIMEOUT="2", FAPIAO_WEBHOOK_CONNECT_TIMEOUT="1", FAPIAO_POLL_INTERVAL="0.2",
    FAPIAO_REMIND_AFTER="1h", FAPIAO_DELIVERY_LEASE="10", FAPIAO_WEBHOOK_ALLOW_PRIVATE="127.0.0.0/8,::1/128",
    FAPIAO_SECRETS_KEY="test-secrets-key-" + uuid.uuid4().hex, FAPIAO_RELAY_POLL_INTERVAL="0.3",
    FAPIAO_ISSUER_PUBLIC_URL="http://issuer.test", FAPIAO_KAFKA_PARTITIONS="3", FAPIAO_SMTP_TIMEOUT="3",
    FAPIAO_METRICS_INTERVAL="0.3",
)


@dataclass
class ReconPipeline(Pipeline):
    """Pipeline plus the reconciler, the notifier and a mail sink, on a database and topic prefix of their own."""

    reconciler: ServiceProcess = None  # type: ignore[assignment]
    infra: Infra = None  # type: ignore[assignment]
    notifier: ServiceProcess = None  # type: ignore[assignment]
    mail_dir: Path = None  # type: ignore[assignment]
    base_env: dict = None  # type: ignore[assignment]  # process name -> its pipeline settings

    def restart(self, proc: ServiceProcess, **env: str) -> None:
        """Restart a process with these settings over the pipeline's own (none: back to those)."""
        proc.stop()
        proc.env = {**self.base_env[proc.name], **env}
        proc.start()

    def restart_reconciler(self, **env: str) -> None:
        self.restart(self.reconciler, **env)

    async def recon(self, method: str, path: str, **kw: object) -> httpx.Response:
        async with httpx.AsyncClient(timeout=15) as c:
            return await c.request(method, f"{self.reconciler.url}{path}", headers=self.admin, **kw)  # type: ignore[arg-type]

    async def ledger(self, tenant_id: str) -> dict[str, int]:
        from sqlalchemy import text

        async with self.issuer.app.state.engine.connect() as conn:  # type: ignore[attr-defined]
            rows = (await conn.execute(text(
                "select state, count(*) from reconciler.ledger where tenant_id = :t group by state"),
                {"t": tenant_id})).all()
        return {r[0]: int(r[1]) for r in rows}

    def mails(self, *, to: str | None = None) -> list:
        """The messages the mail sink kept (parsed), oldest first; `to`: only those for this address."""
        from email import policy
        from email.parser import BytesParser

        out = []
        for path in sorted(self.mail_dir.glob("*.eml")):
            msg = BytesParser(policy=policy.default).parsebytes(path.read_bytes())
            if to is None or to in str(msg["X-Sink-Rcpt-To"]):
                out.append(msg)
        return out


@dataclass
class ReconProcesses:
    prefix: str
    taxstore: ServiceProcess
    sync: ServiceProcess
    reconciler: ServiceProcess
    notifier: ServiceProcess
    mailsink: ServiceProcess
    mail_dir: Path

    @property
    def all(self) -> tuple[ServiceProcess, ...]:
        return (self.mailsink, self.taxstore, self.sync, self.reconciler, self.notifier)


@pytest.fixture(scope="session")
async def recon_database(infra: Infra) -> str:
    """The reconciler pipeline's own database. Two deployments must not share a service's schema: the sync
    services' retry schedulers, for one, would take each other's rows and submit them to the wrong store."""
    return await fresh_database(infra, f"recon_{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="session")
def recon_plan(infra: Infra, recon_database: str) -> ReconProcesses:
    """The reconciler pipeline's processes, not started yet: their ports are known to the issuer before."""
    prefix = f"r{uuid.uuid4().hex[:8]}."
    logs = infra.workdir / "logs"
    logs.mkdir(exist_ok=True)
    db = {"FAPIAO_DATABASE_URL": recon_database}
    taxstore = ServiceProcess("taxstore", process_env(infra, FAPIAO_REQUIRE_REGISTRATION="true", **db), logs)
    sync = ServiceProcess("sync", process_env(
        infra, **db, FAPIAO_TOPIC_PREFIX=prefix, FAPIAO_TAXSTORE_URL=taxstore.url, FAPIAO_KAFKA_PARTITIONS="3",
        FAPIAO_CONNECT_TIMEOUT="1", FAPIAO_SUBMIT_TIMEOUT="1.5", FAPIAO_READ_TIMEOUT="1.5",
        FAPIAO_RETRY_BASE="0.2", FAPIAO_RETRY_CAP="2", FAPIAO_BREAKER_BASE="0.5", FAPIAO_BREAKER_CAP="2",
        FAPIAO_SCHEDULER_INTERVAL="0.2", FAPIAO_RELAY_POLL_INTERVAL="0.3", FAPIAO_SUBMIT_BATCH_SIZE="50",
    ), logs)
    reconciler = ServiceProcess("reconciler", process_env(
        infra, **db, FAPIAO_TOPIC_PREFIX=prefix, FAPIAO_TAXSTORE_URL=taxstore.url, **RECONCILER_ENV), logs)
    mail_dir = infra.workdir / f"mail-{prefix.rstrip('.')}"
    mailsink = ServiceProcess("mailsink", process_env(infra), logs, module="fapiao.mailsink", http=False)
    mailsink.args = ("--port", str(mailsink.port), "--dir", str(mail_dir))
    notifier = ServiceProcess("notifier", process_env(
        infra, **db, FAPIAO_TOPIC_PREFIX=prefix, FAPIAO_SMTP_HOST="127.0.0.1", FAPIAO_SMTP_PORT=str(mailsink.port),
        **NOTIFIER_ENV), logs)
    return ReconProcesses(prefix, taxstore, sync, reconciler, notifier, mailsink, mail_dir)


@pytest.fixture(scope="session")
async def recon_issuer(infra: Infra, recon_plan: ReconProcesses, recon_database: str) -> AsyncIterator[RunningIssuer]:
    """A second in-process issuer on the pipeline's database and topic prefix; it proxies cases to the
    reconciler and subscriptions, history and mutes to the notifier."""
    settings = issuer_settings(infra, database_url=recon_database, topic_prefix=recon_plan.prefix,
                               reconciler_url=recon_plan.reconciler.url, notifier_url=recon_plan.notifier.url,
                               taxstore_url=recon_plan.taxstore.url, sync_url=recon_plan.sync.url,
                               self_check_interval=2.0, self_check_grace=5.0)
    app, client, lifespan = await start_issuer(settings)
    try:
        yield RunningIssuer(app, client, settings)
    finally:
        await client.aclose()
        await lifespan.__aexit__(None, None, None)  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def recon_processes(recon_plan: ReconProcesses, recon_issuer: RunningIssuer) -> Iterator[ReconProcesses]:
    procs = recon_plan.all
    try:
        for p in procs:
            p.start()
    except Exception as exc:
        for p in reversed(procs):
            p.stop()
        pytest.fail(f"could not start the reconciler's pipeline: {exc}", pytrace=False)
    yield recon_plan
    for p in reversed(procs):
        p.stop()


@pytest.fixture
async def recon_pipeline(infra: Infra, recon_issuer: RunningIssuer,
                         recon_processes: ReconProcesses) -> AsyncIterator[ReconPipeline]:
    procs = recon_processes
    for proc in procs.all:
        if not proc.running:  # a test killed it: bring it back
            proc.start()
    base_env = {proc.name: dict(proc.env) for proc in procs.all}
    p = ReconPipeline(recon_issuer, procs.taxstore, procs.sync, {"Authorization": f"Bearer {ADMIN_TOKEN}"},
                      procs.reconciler, infra, procs.notifier, procs.mail_dir, base_env)
    await p.clear_faults()
    yield p
    await p.clear_faults()
    for proc in procs.all:
        if proc.env != base_env[proc.name] or not proc.running:
            p.restart(proc)


# --- a real webhook receiver (HTTP over loopback), in this process -------------------------------------

@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> dict:
        import json

        return json.loads(self.body)


class Receiver:
    """Answers POSTs on any path with the next scripted status for that path (200 once the script is used up)
    and remembers every request. Each test takes paths of its own."""

    def __init__(self) -> None:
        self.port = free_port()
        self.requests: list[Received] = []
        self.scripts: dict[str, list[int]] = {}
        self.server = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def at(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        import time

        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = scope["path"]
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        self.requests.append(Received(path, headers, body, time.time()))
        script = self.scripts.get(path) or []
        status = script.pop(0) if script else 200
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok" if status < 300 else b"not now"})


@pytest.fixture(scope="session")
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    server, task = await serve_app(rec, rec.port)
    rec.server = server
    yield rec
    server.should_exit = True
    await asyncio.wait_for(task, 10)


async def serve_app(app: object, port: int) -> tuple[object, asyncio.Task]:
    """Serve an already started ASGI app (its lifespan entered by a fixture) over real HTTP on loopback."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off",
                                           access_log=False))
    task = asyncio.create_task(server.serve())
    deadline = asyncio.get_running_loop().time() + 10
    while not server.started:
        if task.done() or asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"could not serve on port {port}", pytrace=False)
        await asyncio.sleep(0.05)
    return server, task


@pytest.fixture(scope="session")
async def recon_issuer_http(recon_issuer: RunningIssuer) -> AsyncIterator[str]:
    """The pipeline's issuer over real HTTP, for a browser and for the CLI."""
    port = free_port()
    server, task = await serve_app(recon_issuer.app, port)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True  # type: ignore[attr-defined]
    await asyncio.wait_for(task, 10)


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's Chromium (installed on first use); the suite fails, saying why, when it cannot be had."""
    from fapiao.infra.tools import ensure_chromium

    try:
        return ensure_chromium()
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"the dashboard's browser test needs Chromium: {exc}", pytrace=False)
