"""The drill's private stack: PostgreSQL, Kafka, the five services, a mail sink and (for network faults) Toxiproxy,
all real processes on free ports under .test-artifacts/drills-<stamp>/, started the way `make bench` starts its
own; never touching a `make up` stack. One infrastructure per run; each scenario gets a database, a topic prefix
and service processes of its own (its [settings] apply), so one scenario cannot leak into the next."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from fapiao.drill.scenario import DB_PROXIED
from fapiao.infra.kafka import KafkaBroker, KafkaCluster, ensure_kafka_jars
from fapiao.infra.postgres import PostgresServer
from fapiao.infra.procs import ServiceProcess, free_port, free_ports, pid_alive
from fapiao.infra.toxiproxy import Toxiproxy, ensure_toxiproxy

__all__ = ["CLEAR_FAULTS", "PRIVATE_ONLY", "DrillInfra", "DrillStack", "RunningStack", "ScenarioStack"]

# What `store_clear` sends to the store's PUT /admin/faults, and what a drill leaves behind on a shared stack.
CLEAR_FAULTS = dict(latency_ms=0, latency_jitter_ms=0, error_rate=0, timeout_rate=0, drop_rate=0,
                    visibility_delay_ms=0, corrupt_rate=0, outage=False)

ORDER = ("taxstore", "issuer", "sync", "reconciler", "notifier")
PRIVATE_ONLY = ("backup and restore steps run on the drill's private stack only: a restore would roll back the "
                 "data of the stack it runs on")

# Short intervals so a drill converges in minutes (the values the integration tests use).
FAST = {
    "sync": dict(FAPIAO_CONNECT_TIMEOUT="1", FAPIAO_SUBMIT_TIMEOUT="3", FAPIAO_READ_TIMEOUT="3",
                 FAPIAO_RETRY_BASE="0.3", FAPIAO_RETRY_CAP="3", FAPIAO_BREAKER_BASE="0.5", FAPIAO_BREAKER_CAP="3",
                 FAPIAO_SCHEDULER_INTERVAL="0.3", FAPIAO_SUBMIT_BATCH_SIZE="50"),
    "reconciler": dict(FAPIAO_VISIBILITY_SLA="3", FAPIAO_FIRST_CHECK_AFTER="0.5", FAPIAO_STUCK_AFTER="90",
                       FAPIAO_STUCK_AFTER_RESYNCS="6", FAPIAO_RESYNC_BASE="1", FAPIAO_RESYNC_CAP="5",
                       FAPIAO_STUCK_RECHECK="2", FAPIAO_CHECK_INTERVAL="0.5", FAPIAO_SWEEP_INTERVAL="10",
                       FAPIAO_ORPHAN_GRACE="5", FAPIAO_CONNECT_TIMEOUT="1", FAPIAO_READ_TIMEOUT="3"),
    "notifier": dict(FAPIAO_DIGEST_WINDOW="0.5", FAPIAO_RETRY_BASE="1", FAPIAO_RETRY_CAP="5",
                     FAPIAO_MAX_ATTEMPTS="100", FAPIAO_WEBHOOK_TIMEOUT="2", FAPIAO_WEBHOOK_CONNECT_TIMEOUT="1",
                     FAPIAO_POLL_INTERVAL="0.3", FAPIAO_REMIND_AFTER="1h", FAPIAO_DELIVERY_LEASE="10",
                     FAPIAO_WEBHOOK_ALLOW_PRIVATE="127.0.0.0/8,::1/128", FAPIAO_METRICS_INTERVAL="1"),
    # A drill's workload is one tenant whose every request is checked; the per-tenant limits (sized to share an
    # issuer between tenants) would turn a slow moment into 429s the drill is not about, as for `make bench`.
    # Two API workers and the background process, as `make up` and the bench run the issuer.
    "issuer": dict(FAPIAO_SELF_CHECK_INTERVAL="2", FAPIAO_SELF_CHECK_GRACE="5", FAPIAO_RATE_LIMITS="false",
                   FAPIAO_API_WORKERS="2"),
    "taxstore": {},
}


class DrillStack(Protocol):
    """What a drill needs from the stack it runs against: a private one (ScenarioStack) or `make up`'s."""

    prefix: str
    proxies: dict[str, str]

    @property
    def admin(self) -> dict[str, str]: ...
    @property
    def spawner(self) -> ThreadPoolExecutor: ...
    @property
    def kafka_bootstrap(self) -> str: ...
    @property
    def toxi(self) -> Toxiproxy | None: ...
    def url(self, service: str) -> str: ...
    def kill(self, target: str) -> str | None: ...
    def start(self, target: str) -> None: ...
    def pause(self, target: str) -> None: ...
    def resume(self, target: str) -> None: ...
    def stop(self) -> list[str]: ...
    def backup(self) -> str: ...
    def restore(self) -> str: ...


@dataclass
class DrillInfra:
    """PostgreSQL, Kafka (one broker, or a KRaft cluster of `brokers` nodes) and (when asked) Toxiproxy for one drill
    run."""

    workdir: Path
    brokers: int = 1
    admin_token: str = field(default_factory=lambda: "drill-" + secrets.token_urlsafe(24))
    secrets_key: str = field(default_factory=lambda: "drill-secrets-" + secrets.token_urlsafe(24))
    pg: PostgresServer | None = None
    kafka: KafkaBroker | None = None
    cluster: KafkaCluster | None = None
    toxiproxy: ServiceProcess | None = None
    toxi: Toxiproxy | None = None
    # Children die with the *thread* that spawned them (PR_SET_PDEATHSIG). Whatever a drill starts while it runs
    # (a killed service, Kafka, PostgreSQL) is spawned from this one thread, which lives as long as the run; a
    # thread of asyncio's default executor would end with the scenario and take the restarted broker with it.
    spawner: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="spawner"))

    def start(self, *, network: bool) -> None:
        ensure_kafka_jars()
        self.pg = PostgresServer(self.workdir / "postgres", port=free_port(), die_with_parent=True)
        if self.brokers > 1:
            ports = free_ports(2 * self.brokers)
            self.cluster = KafkaCluster.plan(self.workdir / "kafka", ports=list(zip(ports[::2], ports[1::2],
                                                                                     strict=True)),
                                             heap="320m", die_with_parent=True)
            self.kafka = self.cluster.node(1)
        else:
            self.kafka = KafkaBroker(self.workdir / "kafka", port=free_port(), controller_port=free_port(),
                                     heap="384m", die_with_parent=True)
        self.pg.start(timeout=90)
        if self.cluster is not None:
            self.cluster.start(timeout=180)
        else:
            self.kafka.start(timeout=120)
        if network:
            self.start_toxiproxy()

    def start_toxiproxy(self) -> None:
        if self.toxiproxy is not None:
            return
        binary = ensure_toxiproxy()
        port = free_port()
        self.toxiproxy = ServiceProcess("toxiproxy", [str(binary), "-host", "127.0.0.1", "-port", str(port)],
                                        port=port, env=dict(os.environ),
                                        log_path=self.workdir / "logs" / "toxiproxy.log",
                                        readiness="tcp", die_with_parent=True)
        self.toxiproxy.start(30)
        self.toxi = Toxiproxy(f"http://127.0.0.1:{port}")

    @property
    def bootstrap(self) -> str:
        if self.cluster is not None:
            return self.cluster.bootstrap
        assert self.kafka is not None
        return self.kafka.bootstrap

    def _nodes(self, name: str) -> list[KafkaBroker]:
        """`kafka`: every node; `kafka-2`: the second."""
        if self.cluster is None:
            assert self.kafka is not None
            return [self.kafka]
        return self.cluster.nodes if name == "kafka" else [self.cluster.node(int(name.split("-")[1]))]

    def kill(self, name: str) -> None:
        if name.startswith("kafka") and self.cluster is not None:
            for node in self._nodes(name):
                node.kill()
            return
        server = self.kafka if name == "kafka" else self.pg
        assert server is not None and server.pid is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            server.process.wait(10)  # type: ignore[attr-defined]
        server.pid = None

    def start_server(self, name: str) -> None:
        if name.startswith("kafka") and self.cluster is not None:
            dead = [n for n in self._nodes(name) if n.pid is None or not pid_alive(n.pid)]
            for node in dead:
                self.cluster.spawn_node(node.node_id)
            for node in dead:  # with a quorum running, each rejoins by itself
                node.wait_ready(timeout=120)
            return
        server = self.kafka if name == "kafka" else self.pg
        assert server is not None

        if server.pid is None or not pid_alive(server.pid):
            if name == "postgres":  # kill -9 leaves postmaster.pid behind; its pid is gone, so it is stale
                with contextlib.suppress(FileNotFoundError):
                    (self.pg.pgdata / "postmaster.pid").unlink()  # type: ignore[union-attr]
            server.start(timeout=120)

    def healthy(self) -> bool:
        servers = [self.pg, *(self.cluster.nodes if self.cluster is not None else [self.kafka])]
        return all(srv is not None and srv.pid is not None and pid_alive(srv.pid) for srv in servers)

    def stop(self) -> list[str]:
        if self.toxi is not None:
            self.toxi.close()
        problems = stop_each([("toxiproxy", self.toxiproxy), ("kafka", self.cluster or self.kafka),
                              ("postgres", self.pg)])
        self.spawner.shutdown(wait=False)
        return problems


@dataclass
class ScenarioStack:
    """The five services (and a mail sink) of one scenario, on a database and topic prefix of their own; with
    `replicas`, that many processes of a service (`sync-1`, `sync-2`, …, each on a port of its own; the others call
    the first)."""

    infra: DrillInfra
    name: str
    settings: dict[str, dict[str, str]]
    network: bool
    replicas: dict[str, int] = field(default_factory=dict)
    procs: dict[str, ServiceProcess] = field(default_factory=dict)
    prefix: str = field(default_factory=lambda: f"d{uuid.uuid4().hex[:8]}.")
    database_url: str = ""
    proxies: dict[str, str] = field(default_factory=dict)  # fault target -> Toxiproxy proxy name
    backup_file: Path | None = None

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.infra.admin_token}"}

    def names(self, service: str) -> list[str]:
        """The processes of a service: [service], or [service-1, service-2, …] with replicas."""
        n = self.replicas.get(service, 1)
        return [service] if n == 1 else [f"{service}-{i}" for i in range(1, n + 1)]

    def _targets(self, target: str) -> list[ServiceProcess]:
        """`sync`: every replica; `sync-2`: one."""
        return [self.procs[n] for n in self.names(target)] if target in ORDER else [self.procs[target]]

    def url(self, service: str) -> str:
        """Where the service answers: its first running replica."""
        procs = [self.procs[n] for n in self.names(service)]
        return next((p.url for p in procs if p.running), procs[0].url)

    @property
    def spawner(self) -> ThreadPoolExecutor:
        return self.infra.spawner

    @property
    def kafka_bootstrap(self) -> str:
        return self.infra.bootstrap

    def relay_owner(self, service: str) -> str | None:
        """The replica of `service` whose fapiao_outbox_relay_leader is 1 now (None while none says so)."""
        import httpx

        for name in self.names(service):
            proc = self.procs[name]
            if not proc.running:
                continue
            try:
                body = httpx.get(f"{proc.url}/metrics", timeout=3).text
            except httpx.HTTPError:
                continue
            if f'fapiao_outbox_relay_leader{{service="{service}"}} 1.0' in body:
                return name
        return None

    def _kill_relay_owner(self, service: str, *, within: float = 30.0) -> str:
        """kill -9 the replica relaying `service`'s outbox; wait for another to take the relay; say who and when."""
        deadline = time.monotonic() + within
        while (owner := self.relay_owner(service)) is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no replica of {service} says it relays the outbox")
            time.sleep(0.1)
        self.procs[owner].kill()
        killed = time.monotonic()
        while (heir := self.relay_owner(service)) is None:
            if time.monotonic() - killed > within:
                raise RuntimeError(f"{owner} killed; no other replica took the relay within {within:g}s")
            time.sleep(0.05)
        return f"{owner} owned the relay; {heir} took it {time.monotonic() - killed:.2f}s after the kill"

    @property
    def toxi(self) -> Toxiproxy | None:
        return self.infra.toxi

    def kill(self, target: str) -> str | None:
        """kill -9 `target`; for `<service>:relay`, says which replica that was and when another took the relay."""
        if target.endswith(":relay"):
            return self._kill_relay_owner(target.split(":")[0])
        if target == "postgres" or target.startswith("kafka"):
            self.infra.kill(target)
        else:
            for proc in self._targets(target):
                proc.kill()
        return None

    def start(self, target: str) -> None:
        """Blocking (run it in the spawner thread): start a killed component again, wait until it is ready
        (`sync`: every replica that is not running)."""
        if target == "postgres" or target.startswith("kafka"):
            self.infra.start_server(target)
            return
        dead = [p for p in self._targets(target.split(":")[0]) if not p.running]
        for proc in dead:
            proc.spawn()
        for proc in dead:
            proc.wait_ready(120)

    def pause(self, target: str) -> None:
        for proc in self._targets(target):
            proc.pause()

    def resume(self, target: str) -> None:
        for proc in self._targets(target):
            proc.resume()

    def backup(self) -> str:
        """Blocking: `fapiao backup create` of the scenario's database (its Kafka positions too); says what it took."""
        from fapiao.backup import create_backup

        out = self.infra.workdir / "backups" / self.name
        out.mkdir(parents=True, exist_ok=True)
        self.backup_file, manifest = create_backup(database_url=self.database_url, out=out,
                                                   kafka_bootstrap=self.kafka_bootstrap, topic_prefix=self.prefix)
        return f"{self.backup_file.name}: {manifest['dump']['bytes']:,} bytes, taken at {manifest['taken_at']}"

    def restore(self) -> str:
        """Blocking: the runbook's restore under load. Every replica of the four services that own a schema in the
        backup is killed (-9: the database is lost, nothing is shut down in order), the backup restored, and they
        are started again; the tax store, the authority, keeps running and keeps what it holds."""
        from fapiao.backup import restore_backup

        if self.backup_file is None:
            raise RuntimeError("no backup to restore (a `backup` step comes first)")
        t0 = time.monotonic()
        procs = [self.procs[n] for svc in ORDER if svc != "taxstore" for n in self.names(svc)]
        for proc in procs:
            proc.kill()
        restored = restore_backup(database_url=self.database_url, path=self.backup_file)
        took = time.monotonic() - t0
        for proc in procs:
            proc.spawn()
        for proc in procs:
            proc.wait_ready(120)
        return (f"restored {self.backup_file.name} in {took:.1f}s ({restored.sweep_windows} sweep windows due); "
                f"services back after {time.monotonic() - t0:.1f}s")

    def _proxy(self, name: str, upstream_port: int) -> int:
        assert self.infra.toxi is not None
        proxy = f"{self.prefix.rstrip('.')}-{name}"
        self.proxies[name] = proxy
        return self.infra.toxi.create(proxy, f"127.0.0.1:{upstream_port}")

    def start_all(self) -> None:
        infra = self.infra
        assert infra.pg is not None and infra.kafka is not None
        db = f"drill_{self.prefix.rstrip('.')}"
        infra.pg.ensure_database(db)
        self.database_url = infra.pg.url(db)
        logs = infra.workdir / "logs" / self.name
        procs = [(name, proc) for name in ORDER for proc in self.names(name)]
        all_ports = free_ports(len(procs))
        by_proc = {proc: port for (_, proc), port in zip(procs, all_ports, strict=True)}
        ports = {name: by_proc[self.names(name)[0]] for name in ORDER}  # the others call the first replica
        if self.network:
            infra.start_toxiproxy()
        base = {k: v for k, v in os.environ.items() if not k.startswith("FAPIAO_")}
        base.update(FAPIAO_ENV="test", FAPIAO_KAFKA_BOOTSTRAP=infra.bootstrap,
                    FAPIAO_ADMIN_TOKEN=infra.admin_token, FAPIAO_LOG_LEVEL="WARNING", FAPIAO_LOG_JSON="false",
                    FAPIAO_TOPIC_PREFIX=self.prefix, FAPIAO_STACK_DIR=str(infra.workdir / "no-stack"),
                    FAPIAO_RELAY_POLL_INTERVAL="0.3", FAPIAO_KAFKA_PARTITIONS="3", PYTHONUNBUFFERED="1",
                    FAPIAO_SECRETS_KEY=infra.secrets_key,
                    FAPIAO_TAXSTORE_URL=f"http://127.0.0.1:{ports['taxstore']}",
                    FAPIAO_RECONCILER_URL=f"http://127.0.0.1:{ports['reconciler']}",
                    FAPIAO_NOTIFIER_URL=f"http://127.0.0.1:{ports['notifier']}",
                    FAPIAO_SYNC_URL=f"http://127.0.0.1:{ports['sync']}",
                    FAPIAO_ISSUER_PUBLIC_URL=f"http://127.0.0.1:{ports['issuer']}")
        mail_port = free_port()
        self.procs["mailsink"] = ServiceProcess(
            "mailsink", [sys.executable, "-m", "fapiao.mailsink", "--port", str(mail_port),
                         "--dir", str(logs / "mail")], port=mail_port, env=base, log_path=logs / "mailsink.log",
            readiness="tcp", die_with_parent=True)
        for name in ORDER:
            env = {**base, "FAPIAO_DATABASE_URL": self.database_url, **FAST[name], **self.settings.get(name, {})}
            if name == "notifier":
                env.update(FAPIAO_SMTP_HOST="127.0.0.1", FAPIAO_SMTP_PORT=str(mail_port))
            if self.network and name == "sync":
                env["FAPIAO_TAXSTORE_URL"] = f"http://127.0.0.1:{self._proxy('taxstore', ports['taxstore'])}"
            if self.network and name in DB_PROXIED:  # db_cut / db_restore disable / enable this proxy
                pg_port = self._proxy(f"postgres-{name}", infra.pg.port)
                env["FAPIAO_DATABASE_URL"] = self.database_url.replace(f":{infra.pg.port}/", f":{pg_port}/")
            for pname in self.names(name):
                own = {"FAPIAO_BACKGROUND_PORT": str(free_port())} if name == "issuer" else {}
                self.procs[pname] = ServiceProcess.service(name, env={**env, **own}, log_dir=logs,
                                                           port=by_proc[pname], log_name=pname, die_with_parent=True)
        for proc in self.procs.values():
            proc.start(120)

    def stop(self) -> list[str]:
        problems = stop_each([(proc, self.procs.get(proc))
                              for name in ("sync", "reconciler", "notifier", "issuer", "taxstore")
                              for proc in self.names(name)] + [("mailsink", self.procs.get("mailsink"))])
        if self.infra.toxi is not None:
            for proxy in self.proxies.values():
                with contextlib.suppress(Exception):
                    self.infra.toxi._call("DELETE", f"/proxies/{proxy}")
        return problems


@dataclass
class RunningStack:
    """The stack `make up` runs (found through FAPIAO_STACK_DIR, default .run/): its services, Kafka and PostgreSQL
    are killed and started through fapiao.stack (which holds a killed one down against its supervisor until the
    drill starts it), the store's faults set over its admin API. Scenario [settings] cannot apply: the services run
    with the settings `make up` gave them. No Toxiproxy sits between its services, so network scenarios need the
    private stack. `stop()` puts back what a drill left: killed components started, paused ones resumed, store
    faults cleared."""

    name: str
    proxies: dict[str, str] = field(default_factory=dict)
    spawner: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="spawner"))
    paused: set[str] = field(default_factory=set)
    killed: set[str] = field(default_factory=set)
    toxi: Toxiproxy | None = None

    def __post_init__(self) -> None:
        from fapiao import stack

        state = stack._load()
        if state is None or not stack._running(state):
            raise RuntimeError(f"no running stack in {stack.state_dir()}; start one with `make up` "
                               "(or run the drill without --stack on a private stack)")
        self.state = state
        self.admin_token = (stack.state_dir() / "admin-token").read_text().strip()
        env_file = stack.state_dir() / "service-env.json"
        env = json.loads(env_file.read_text()) if env_file.exists() else {}
        self.prefix = env.get("FAPIAO_TOPIC_PREFIX", "")

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    @property
    def kafka_bootstrap(self) -> str:
        return str(self.state["kafka_bootstrap"])

    def url(self, service: str) -> str:
        return str(self.state["urls"][service])

    def kill(self, target: str) -> str | None:
        from fapiao import stack

        if target.endswith(":relay"):
            raise RuntimeError(f"{target}: only the drill's private stack finds the relay's owner")
        stack.kill_component(target, hold=True)
        self.killed.add(target)
        return None

    def start(self, target: str) -> None:
        from fapiao import stack

        stack.start_component(target, timeout=120)
        self.killed.discard(target)

    def pause(self, target: str) -> None:
        from fapiao import stack

        stack.signal_component(target, signal.SIGSTOP)
        self.paused.add(target)

    def resume(self, target: str) -> None:
        from fapiao import stack

        stack.signal_component(target, signal.SIGCONT)
        self.paused.discard(target)

    def backup(self) -> str:
        raise RuntimeError(PRIVATE_ONLY)

    def restore(self) -> str:
        raise RuntimeError(PRIVATE_ONLY)

    def stop(self) -> list[str]:
        return put_back(self)


class _Shared(Protocol):
    """A stack the drill does not own (make up's, compose's): what it must put back when a scenario ends."""

    paused: set[str]
    killed: set[str]
    spawner: ThreadPoolExecutor

    @property
    def admin(self) -> dict[str, str]: ...
    def url(self, service: str) -> str: ...
    def start(self, target: str) -> None: ...
    def resume(self, target: str) -> None: ...


def put_back(st: _Shared) -> list[str]:
    """After a scenario on a shared stack: paused components resumed, killed ones started (the broker and the
    database first), the store's faults cleared. Returns what could not be put back."""
    import httpx

    problems = []
    for target in sorted(st.paused):
        try:
            st.resume(target)
        except Exception as exc:  # noqa: BLE001 - keep putting the rest back
            problems.append(f"resuming {target}: {exc}")
    for target in sorted(st.killed, key=lambda t: t not in ("postgres", "kafka")):
        try:
            st.start(target)
        except Exception as exc:  # noqa: BLE001 - keep putting the rest back
            problems.append(f"starting {target} again: {exc}")
    try:
        httpx.put(f"{st.url('taxstore')}/admin/faults", headers=st.admin, timeout=10,
                  json=CLEAR_FAULTS).raise_for_status()
    except httpx.HTTPError as exc:
        problems.append(f"clearing the store's faults: {exc}")
    st.spawner.shutdown(wait=False)
    return problems


def stop_each(things: list[tuple[str, Any]]) -> list[str]:
    """Stop each (name, thing with stop()) that is there, whatever the others do; what failed, by name."""
    problems = []
    for name, thing in things:
        if thing is None:
            continue
        try:
            thing.stop()
        except Exception as exc:  # noqa: BLE001 - keep stopping the rest
            problems.append(f"{name}: {exc}")
    return problems
