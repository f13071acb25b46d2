"""The pipelines the integration tests drive: the issuer in process, the other services as real processes.

`Pipeline`: issuer, tax store and sync on one topic prefix (the session's issuer and database).
`ReconPipeline`: its own issuer, database and prefix with tax store, sync, reconciler, notifier and a mail sink.

The processes are the session's and keep their settings. A test that needs other settings runs its own
process in place of a shared one (`ReconPipeline.start_own`); the shared one is back after the test.
"""

from __future__ import annotations

import re
import sys
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from fapiao.infra import ServiceProcess, free_port
from tests.harness.infra import ADMIN, Infra
from tests.harness.issuer import RunningIssuer
from tests.harness.processes import process_env, service_process

SYNC_ENV = dict(
    FAPIAO_KAFKA_PARTITIONS="3", FAPIAO_CONNECT_TIMEOUT="1", FAPIAO_SUBMIT_TIMEOUT="1.5", FAPIAO_READ_TIMEOUT="1.5",
    FAPIAO_RETRY_BASE="0.2", FAPIAO_RETRY_CAP="2", FAPIAO_BREAKER_BASE="0.5", FAPIAO_BREAKER_CAP="3",
    FAPIAO_SCHEDULER_INTERVAL="0.2", FAPIAO_RELAY_POLL_INTERVAL="0.3", FAPIAO_SUBMIT_BATCH_SIZE="50",
    FAPIAO_FORM_WATCH_INTERVAL="0.5",
)

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
    # Out of the way (the limit's own test starts a notifier with a low one): schemathesis pings many times.
    FAPIAO_PING_LIMIT="10000",
)


def start_all(procs: Iterable[ServiceProcess], timeout: float = 60) -> None:
    """Spawn every one that is not running, then wait for each (they start side by side)."""
    started = [p for p in procs if not p.running]
    for p in started:
        p.spawn()
    for p in started:
        p.wait_ready(timeout)


def stop_all(procs: Iterable[ServiceProcess]) -> None:
    for p in reversed(list(procs)):
        p.stop()


@dataclass
class Pipeline:
    """The issuer (in process), the tax store and the sync service (real processes) on one topic prefix."""

    issuer: RunningIssuer
    taxstore: ServiceProcess
    sync: ServiceProcess
    admin: dict[str, str] = field(default_factory=lambda: dict(ADMIN))

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


def plan_pipeline(infra: Infra, prefix: str) -> tuple[ServiceProcess, ServiceProcess]:
    """The tax store and sync of `Pipeline`, not started."""
    taxstore = service_process("taxstore", infra, env=process_env(infra, FAPIAO_REQUIRE_REGISTRATION="true"))
    sync = service_process("sync", infra, env=process_env(
        infra, FAPIAO_TOPIC_PREFIX=prefix, FAPIAO_TAXSTORE_URL=taxstore.url, **SYNC_ENV))
    return taxstore, sync


@dataclass
class ReconProcesses:
    """The reconciler pipeline's shared processes (the session's; their settings never change)."""

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


def plan_recon(infra: Infra, database_url: str) -> ReconProcesses:
    """The reconciler pipeline's processes, not started: their ports are known to the issuer before."""
    prefix = f"r{uuid.uuid4().hex[:8]}."
    db = {"FAPIAO_DATABASE_URL": database_url}
    taxstore = service_process("taxstore", infra, env=process_env(infra, FAPIAO_REQUIRE_REGISTRATION="true", **db))
    sync = service_process("sync", infra, env=process_env(
        infra, **db, FAPIAO_TOPIC_PREFIX=prefix, FAPIAO_TAXSTORE_URL=taxstore.url, **{**SYNC_ENV,
                                                                                     "FAPIAO_BREAKER_CAP": "2"}))
    reconciler = service_process("reconciler", infra, env=process_env(
        infra, **db, FAPIAO_TOPIC_PREFIX=prefix, FAPIAO_TAXSTORE_URL=taxstore.url, **RECONCILER_ENV))
    mail_dir = infra.workdir / f"mail-{prefix.rstrip('.')}"
    sink_port = free_port()
    mailsink = ServiceProcess(
        "mailsink", [sys.executable, "-m", "fapiao.mailsink", "--port", str(sink_port), "--dir", str(mail_dir)],
        port=sink_port, env=process_env(infra), log_path=infra.logs / f"mailsink-{sink_port}.log", readiness="tcp",
        die_with_parent=True)
    notifier = service_process("notifier", infra, env=process_env(
        infra, **db, FAPIAO_TOPIC_PREFIX=prefix, FAPIAO_SMTP_HOST="127.0.0.1", FAPIAO_SMTP_PORT=str(sink_port),
        **NOTIFIER_ENV))
    return ReconProcesses(prefix, taxstore, sync, reconciler, notifier, mailsink, mail_dir)


@dataclass(kw_only=True)
class ReconPipeline(Pipeline):
    """Pipeline plus the reconciler, the notifier and a mail sink, on a database and topic prefix of their own.
    One per test: `taxstore`, `sync`, `reconciler`, `notifier` are the shared processes, or this test's own
    after `start_own`."""

    reconciler: ServiceProcess
    notifier: ServiceProcess
    infra: Infra
    mail_dir: Path
    processes: ReconProcesses
    test: str = "test"
    own: dict[str, ServiceProcess] = field(default_factory=dict)

    def start_own(self, name: str, **env: str) -> ServiceProcess:
        """This test's own `name` process (taxstore, sync, reconciler, notifier) with these settings over the
        pipeline's, in place of the shared one. Same port, database and consumer groups, so the shared one
        is stopped meanwhile (two members of one group would split its partitions); it is back after the test.
        Its log is a file of its own, named after the test."""
        shared: ServiceProcess = getattr(self.processes, name)
        if name in self.own:
            self.own.pop(name).stop()
        shared.stop()
        log_path = shared.log_path.with_name(f"{shared.log_path.stem}-{self.test}.log")
        mine = shared.with_env(log_path=log_path, **env)
        self.own[name] = mine
        setattr(self, name, mine)
        mine.start()
        return mine

    def end_own(self) -> None:
        """Stop this test's own processes and bring the shared ones back."""
        for name, mine in self.own.items():
            mine.stop()
            setattr(self, name, getattr(self.processes, name))
        self.own.clear()
        start_all(self.processes.all)

    # The names of before start_own: they no longer restart a shared process.
    def restart(self, proc: ServiceProcess, **env: str) -> None:
        self.start_own(proc.name, **env)

    def restart_reconciler(self, **env: str) -> None:
        self.start_own("reconciler", **env)

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


def file_label(nodeid_name: str) -> str:
    """A test's name as a piece of a file name."""
    return re.sub(r"[^\w.-]+", "_", nodeid_name)[:80]
