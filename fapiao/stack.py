"""The local stack behind `make up` / `make down` / `make status` / `make logs`.

Everything runs as background processes recorded in `<state dir>/stack.json`; nothing needs Docker.
Kafka and PostgreSQL are started here unless FAPIAO_KAFKA_BOOTSTRAP / FAPIAO_DATABASE_URL point
elsewhere. The state dir (default `.run/`, override FAPIAO_STACK_DIR) is git-ignored.

Kafka is one broker (`kafka`, ports FAPIAO_KAFKA_PORT / FAPIAO_KAFKA_CONTROLLER_PORT) unless FAPIAO_KAFKA_BROKERS
asks for a KRaft cluster: node i (`kafka-1`, `kafka-2`, …) listens on those ports plus 2·(i-1) and keeps its data in
`<state dir>/kafka/node-<i>`; the services create topics replicated min(3, brokers) times. `kafka` in `restart`
and the drills' kill/start stands for every node (one by one on restart); `kafka-2` for one.

Secrets (FAPIAO_ADMIN_TOKEN, FAPIAO_SECRETS_KEY): a value exported in the environment wins, and its file in the
state dir is rewritten to hold it; without one, the file of an earlier run is kept; without that, a random
value is generated into the file. The summary says which it was.

Supervision: `up` leaves a supervisor process (`python -m fapiao.stack supervise`, shown by `status`) that starts
a service, Kafka or PostgreSQL again when it dies, after 0.5 s, then 1, 2, 4 … up to 60 s while it keeps dying
(reset after 60 s up), the way compose's `restart: unless-stopped` does; `status` shows the restarts.
`restart NAME` stops one component and starts it again with the settings `up` gave it (a service's are kept in
`<state dir>/service-env.json`, mode 0600; Kafka and PostgreSQL keep their data dirs), leaving the rest running.
A drill against this stack (`fapiao drill run --stack`) marks what it kills as held: the supervisor leaves it down
until the drill's own start step.

Replicas: FAPIAO_REPLICAS (`sync=2,reconciler=2,notifier=2,issuer=2`; issuer, sync, reconciler and notifier, 1 to 9
each; default one of each) runs a service as several processes, `sync-1`, `sync-2`, …, each with its own port, log
and pid, on the same database and topics. Replica i listens on the service's port plus 10·i, and a round-robin
balancer (fapiao/balancer.py, `balancer` in `status`) keeps the service's own port, so the issuer's API, the
dashboard and the services' calls to each other reach every replica. `restart sync` restarts each replica in turn
(the others serve meanwhile), `restart sync-2` one; kill/start in a drill likewise.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import typer

from fapiao.infra.kafka import (
    REPO_ROOT,
    KafkaBroker,
    KafkaCluster,
    ensure_kafka_jars,
    metadata_ready,
    replicas_in_sync,
    replication_for,
)
from fapiao.infra.postgres import PostgresServer
from fapiao.infra.procs import ServiceProcess, http_ready, pid_alive, port_is_open, spawn, stop_group
from fapiao.infra.roles import SCHEMAS, RolesRefused, provision, role_for

app = typer.Typer(add_completion=False, help="Run the Fapiao Sync stack locally (no Docker).")

DEMO_TENANT = {"name": "演示科技有限公司 Demo Technology Co., Ltd.", "tax_id": "91310115MA1K4DEM05"}


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    module: str
    port_env: str
    default_port: int


SERVICES = (
    ServiceSpec("issuer", "services.issuer", "FAPIAO_ISSUER_PORT", 8000),
    ServiceSpec("taxstore", "services.taxstore", "FAPIAO_TAXSTORE_PORT", 8100),
    ServiceSpec("sync", "services.sync", "FAPIAO_SYNC_PORT", 8001),
    ServiceSpec("reconciler", "services.reconciler", "FAPIAO_RECONCILER_PORT", 8002),
    ServiceSpec("notifier", "services.notifier", "FAPIAO_NOTIFIER_PORT", 8003),
)
MAILSINK_MODULE = "fapiao.mailsink"
BALANCER_MODULE = "fapiao.balancer"
REPLICABLE = ("issuer", "sync", "reconciler", "notifier")  # the tax store simulates the one authority


def state_dir() -> Path:
    return Path(os.environ.get("FAPIAO_STACK_DIR", REPO_ROOT / ".run")).resolve()


def _port(env: str, default: int) -> int:
    return int(os.environ.get(env, default))


def _kafka_brokers() -> int:
    raw = os.environ.get("FAPIAO_KAFKA_BROKERS", "1").strip()
    if not raw.isdigit() or not 1 <= int(raw) <= 9:
        raise RuntimeError(f"FAPIAO_KAFKA_BROKERS={raw!r}: a number of brokers from 1 to 9 (3 survives losing one)")
    return int(raw)


def _kafka_ports(brokers: int) -> list[tuple[int, int]]:
    """(broker, controller) port of each node: the two FAPIAO_KAFKA_*PORT settings, plus 2 for each next node."""
    port, cport = _port("FAPIAO_KAFKA_PORT", 9092), _port("FAPIAO_KAFKA_CONTROLLER_PORT", 9093)
    return [(port + 2 * i, cport + 2 * i) for i in range(brokers)]


def _replicas() -> dict[str, int]:
    """FAPIAO_REPLICAS, e.g. `sync=2,issuer=2`: how many processes of each service (1 when not named)."""
    raw = os.environ.get("FAPIAO_REPLICAS", "").strip()
    counts = dict.fromkeys(REPLICABLE, 1)
    for item in filter(None, (part.strip() for part in raw.split(","))):
        name, _, count = item.partition("=")
        name = name.strip()
        if name not in REPLICABLE or not count.strip().isdigit() or not 1 <= int(count) <= 9:
            raise RuntimeError(f"FAPIAO_REPLICAS={raw!r}: SERVICE=N[,SERVICE=N…] with SERVICE one of "
                               f"{', '.join(REPLICABLE)} and N from 1 to 9 (the tax store runs once)")
        counts[name] = int(count)
    return counts


def _replica_names(name: str, count: int) -> list[str]:
    return [name] if count == 1 else [f"{name}-{i}" for i in range(1, count + 1)]


def _service_of(name: str) -> str:
    """`sync-2` -> `sync`; any other name stays what it is."""
    base = re.sub(r"-\d+$", "", name)
    return base if base != name and base in REPLICABLE else name


def _replicas_of(state: dict, service: str) -> list[str]:
    """The recorded processes of one service: [service] or [service-1, service-2, …]."""
    return [n for n, p in state.get("processes", {}).items() if "module" in p and _service_of(n) == service]


def _is_kafka(name: str) -> bool:
    return name == "kafka" or re.fullmatch(r"kafka-\d+", name) is not None


def _kafka_names(state: dict) -> list[str]:
    """The recorded Kafka nodes: ["kafka"] for the single broker, ["kafka-1", "kafka-2", …] for a cluster."""
    return [name for name in state.get("processes", {}) if _is_kafka(name)]


def _kafka_cluster(state: dict) -> KafkaCluster:
    """The cluster `up` started, planned again from stack.json (not started)."""
    info = state.get("kafka_cluster")
    if info is None:  # a stack from before clusters: the one broker in <state dir>/kafka
        ports = state["processes"]["kafka"]["ports"]
        return KafkaCluster.plan(state_dir() / "kafka", ports=[(ports[0], ports[1])])
    return KafkaCluster.plan(Path(info["dir"]), ports=[(p, c) for p, c in info["ports"]])


def _state_file() -> Path:
    return state_dir() / "stack.json"


def _load() -> dict | None:
    f = _state_file()
    return json.loads(f.read_text()) if f.exists() else None


def _save(state: dict) -> None:
    f = _state_file()
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(json.dumps(state, indent=2))
    f.chmod(0o600)


# Secrets `make up` generates unless you export them: (variable, file under the state dir, what it is).
SECRETS = (
    ("FAPIAO_ADMIN_TOKEN", "admin-token", "Admin token"),
    ("FAPIAO_SECRETS_KEY", "secrets-key", "Webhook secrets key"),
)
_FROM = {"environment": "from {var} in your environment", "generated": "generated by this run",
         "kept": "kept from an earlier run"}


def _write_secret(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value + "\n")
    path.chmod(0o600)


def _secret(var: str, name: str) -> tuple[str, str]:
    """(value, where it came from): the exported variable wins and the file is rewritten to match it; else
    the file of an earlier run; else a new random value, written to the file."""
    path = state_dir() / name
    exported = os.environ.get(var, "").strip()
    old = path.read_text().strip() if path.exists() else None
    if exported:
        if old != exported:
            _write_secret(path, exported)
            if old is not None and var == "FAPIAO_SECRETS_KEY":
                typer.echo(f"Warning: {var} from your environment replaces the key in {path}; webhook signing "
                           "secrets stored under the old key can no longer be decrypted.", err=True)
        return exported, "environment"
    if old:
        return old, "kept"
    value = secrets.token_urlsafe(32)
    _write_secret(path, value)
    return value, "generated"


def _your_operator() -> tuple[Path, str | None]:
    """(the operators file, the operator made for you): FAPIAO_OPERATOR_TOKENS_FILE if you exported one (yours to
    manage), else <state dir>/operators, where `up` keeps an operator for whoever runs it (named after
    FAPIAO_OPERATOR_NAME or the login name) with its token in <state dir>/operator-token, kept across runs. The
    people use that token (the dashboard, `fapiao`), so the audit log names them; the admin token stays the
    services' own."""
    from shared.audit import parse_operator_tokens, read_operator_file, write_operator_file

    exported = os.environ.get("FAPIAO_OPERATOR_TOKENS_FILE", "").strip()
    if exported:
        return Path(exported), None
    path, token_file = state_dir() / "operators", state_dir() / "operator-token"
    raw = os.environ.get("FAPIAO_OPERATOR_NAME") or os.environ.get("USER") or "operator"
    name = re.sub(r"[^a-z0-9._-]+", "-", raw.lower()).strip("-._")[:64] or "operator"
    if name == "admin" or not name[0].isalnum():
        name = "operator"
    entries = {n: h for h, n in read_operator_file(path).items()} if path.exists() else {}
    token = token_file.read_text().strip() if token_file.exists() else ""
    if not token or entries.get(name) != hashlib.sha256(token.encode()).hexdigest():
        token = "fop_" + secrets.token_urlsafe(32)
        entries[name] = hashlib.sha256(token.encode()).hexdigest()
        parse_operator_tokens(f"{name}:{entries[name]}")
        _write_secret(token_file, token)
    write_operator_file(path, entries)
    return path, name


def _exported_but_not_in_force() -> list[str]:
    """Variables exported now that differ from what the running stack uses (it started with the files' values)."""
    out = []
    for var, name, _ in SECRETS:
        exported = os.environ.get(var, "").strip()
        path = state_dir() / name
        if exported and path.exists() and path.read_text().strip() != exported:
            out.append(var)
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _ours(pid: int, marker: str) -> bool:
    """Alive and still the process we started (pids get reused)."""
    return pid_alive(pid) and marker in _cmdline(pid)


def _running(state: dict) -> list[str]:
    return [name for name, p in state.get("processes", {}).items() if _ours(p["pid"], p["marker"])]


def _print_summary(state: dict) -> None:
    d = state_dir()
    key_file = d / "demo-api-key"
    typer.echo("")
    typer.echo("Fapiao Sync is running.")
    for name, url in state["urls"].items():
        typer.echo(f"  {name:<10} {url}   (OpenAPI: {url}/docs)" if name == "issuer" else f"  {name:<10} {url}")
        if replicas := state.get("replicas", {}).get(name):
            ports = ", ".join(str(state["processes"][r]["ports"][0]) for r in replicas if r in state["processes"])
            typer.echo(f"             {len(replicas)} replicas ({', '.join(replicas)}) on ports {ports}, "
                       "round robin from the port above")
    if "issuer" in state["urls"]:
        who = "your operator token" if state.get("operator") else "an operator's token or the admin token"
        typer.echo(f"  dashboard  {state['urls']['issuer']}/ops   (sign in with {who})")
    cluster = state.get("kafka_cluster")
    brokers = f"   ({len(cluster['ports'])} brokers, replication factor {cluster['replication_factor']}, " \
              f"min ISR {cluster['min_insync_replicas']})" if cluster and len(cluster["ports"]) > 1 else ""
    typer.echo(f"  kafka      {state['kafka_bootstrap']}{brokers}")
    typer.echo(f"  postgres   {state['database_url'].replace(':fapiao@', ':***@')}")
    if state.get("mail_dir"):
        port = state["processes"]["mailsink"]["ports"][0]
        typer.echo(f"  mail sink  smtp://127.0.0.1:{port}   (e-mail alerts land in {state['mail_dir']}/*.eml)")
    typer.echo("")
    if key_file.exists():
        typer.echo(f"Demo tenant {DEMO_TENANT['tax_id']} API key: {key_file.read_text().strip()}")
    sources = state.get("secret_sources", {})
    for var, name, label in SECRETS:
        where = _FROM.get(sources.get(var, ""), "").format(var=var)
        typer.echo(f"{label}: {where + ', ' if where else ''}in {d / name}")
    if state.get("operator"):
        typer.echo(f"Your operator token ({state['operator']}; the dashboard and `fapiao` use it, the audit log names "
                   f"you): in {d / 'operator-token'}")
    if state.get("operators_file"):
        typer.echo(f"Operators: {state['operators_file']} (`fapiao operators add NAME` / `revoke NAME`, no restart)")
    typer.echo("Logs: make logs  ·  stop: make down")
    typer.echo("")
    typer.echo("Try:")
    typer.echo(f"  curl -s {state['urls']['issuer']}/readyz")


@app.command("fetch-kafka")
def fetch_kafka() -> None:
    """Download the Kafka broker jars from Maven Central into .cache/ (once)."""
    libs = ensure_kafka_jars()
    typer.echo(f"Kafka jars ready in {libs}")


@app.command()
def up() -> None:
    """Start infrastructure and services in the background; wait until all are ready."""
    state = _load()
    if state is not None:
        alive = _running(state)
        if alive and set(alive) == set(state["processes"]):
            typer.echo("The stack is already running.")
            _print_summary(state)
            for var in _exported_but_not_in_force():
                typer.echo(f"Warning: {var} in your environment is not the one the running stack uses; run "
                           "`make down` and `make up` to put it in force.", err=True)
            return
        if alive:
            typer.echo(f"A partial stack is running ({', '.join(alive)}); stopping it first.")
        _stop_all(state)
    d = state_dir()
    (d / "logs").mkdir(parents=True, exist_ok=True)
    values, sources = {}, {}
    for var, name, _ in SECRETS:
        values[var], sources[var] = _secret(var, name)
    admin_token = values["FAPIAO_ADMIN_TOKEN"]
    operators_file, operator = _your_operator()
    processes: dict[str, dict] = {}
    state = {"processes": processes, "urls": {}, "secret_sources": sources, "operators_file": str(operators_file),
             "operator": operator}
    try:
        counts = _replicas()
        kafka_bootstrap = os.environ.get("FAPIAO_KAFKA_BOOTSTRAP")
        replication: dict[str, str] = {}
        if not kafka_bootstrap:
            brokers = _kafka_brokers()
            what = "the broker" if brokers == 1 else f"a {brokers}-node KRaft cluster"
            typer.echo(f"• Kafka: fetching jars (first run only) and starting {what}…")
            cluster = KafkaCluster.plan(d / "kafka", ports=_kafka_ports(brokers))
            factor, min_isr = replication_for(brokers)
            state["kafka_cluster"] = {"dir": str(d / "kafka"), "ports": [[n.port, n.controller_port]
                                                                      for n in cluster.nodes],
                                      "replication_factor": factor, "min_insync_replicas": min_isr}
            cluster.start()
            for node in cluster.nodes:
                name = "kafka" if brokers == 1 else f"kafka-{node.node_id}"
                processes[name] = {"pid": node.pid, "restarts": 0, "node": node.node_id,
                                   # the cmdline tells the nodes apart by their server.properties
                                   "marker": "kafka.Kafka" if brokers == 1 else str(node.properties_path),
                                   "ports": [node.port, node.controller_port], "log": str(node.log_path)}
            kafka_bootstrap = cluster.bootstrap
            # Topics get as many copies as the cluster was started with, even if a broker is down at the time.
            replication["FAPIAO_KAFKA_REPLICATION_FACTOR"] = os.environ.get("FAPIAO_KAFKA_REPLICATION_FACTOR",
                                                                            str(factor))
            _save(state)
        database_url = os.environ.get("FAPIAO_DATABASE_URL")
        if not database_url:
            typer.echo("• PostgreSQL: starting the embedded server…")
            pg = PostgresServer(d / "postgres", port=_port("FAPIAO_PG_PORT", 55432))
            pg.start()
            processes["postgres"] = {"pid": pg.pid, "marker": "postgres", "ports": [pg.port], "log": str(pg.log_path),
                                     "restarts": 0}
            database_url = pg.url()
            _save(state)
        state.update(kafka_bootstrap=kafka_bootstrap, database_url=database_url)
        database_urls = _service_roles(database_url)
        smtp_port = _port("FAPIAO_SMTP_PORT", 1025)
        if not os.environ.get("FAPIAO_SMTP_HOST"):  # no mail server of your own: a local sink keeps the mail
            if port_is_open(smtp_port):
                raise RuntimeError(f"port {smtp_port} for the mail sink is already in use; set FAPIAO_SMTP_PORT")
            typer.echo(f"• mail sink: SMTP on 127.0.0.1:{smtp_port}, messages kept in {d / 'mail'}…")
            sink = ServiceProcess(
                "mailsink", [sys.executable, "-m", MAILSINK_MODULE, "--port", str(smtp_port), "--dir", str(d / "mail")],
                port=smtp_port, env={**os.environ, "PYTHONUNBUFFERED": "1"}, log_path=d / "logs" / "mailsink.log",
                readiness="tcp", label="mail sink")
            sink.spawn()
            processes["mailsink"] = sink.record()
            state["mail_dir"] = str(d / "mail")
            _save(state)
            sink.wait_ready(30)
        issuer_url = f"http://127.0.0.1:{_port('FAPIAO_ISSUER_PORT', 8000)}"
        env = {
            **os.environ, "FAPIAO_ENV": os.environ.get("FAPIAO_ENV", "development"),
            "FAPIAO_DATABASE_URL": database_url, "FAPIAO_KAFKA_BOOTSTRAP": kafka_bootstrap,
            "FAPIAO_ADMIN_TOKEN": admin_token, "FAPIAO_OPERATOR_TOKENS_FILE": str(operators_file),
            "PYTHONUNBUFFERED": "1",
            "FAPIAO_TAXSTORE_URL": f"http://127.0.0.1:{_port('FAPIAO_TAXSTORE_PORT', 8100)}",
            "FAPIAO_RECONCILER_URL": f"http://127.0.0.1:{_port('FAPIAO_RECONCILER_PORT', 8002)}",
            "FAPIAO_NOTIFIER_URL": f"http://127.0.0.1:{_port('FAPIAO_NOTIFIER_PORT', 8003)}",
            "FAPIAO_SYNC_URL": f"http://127.0.0.1:{_port('FAPIAO_SYNC_PORT', 8001)}",
            "FAPIAO_ISSUER_PUBLIC_URL": issuer_url,
            "FAPIAO_SMTP_HOST": os.environ.get("FAPIAO_SMTP_HOST", "127.0.0.1"), "FAPIAO_SMTP_PORT": str(smtp_port),
            # Local development: webhooks may go to receivers on this machine (never to other private ranges).
            "FAPIAO_WEBHOOK_ALLOW_PRIVATE": os.environ.get("FAPIAO_WEBHOOK_ALLOW_PRIVATE", "127.0.0.0/8,::1/128"),
            "FAPIAO_SECRETS_KEY": values["FAPIAO_SECRETS_KEY"], **replication,
            # The issuer's API processes (services/issuer/workers.py): 0 is half the cores, at least 1
            "FAPIAO_API_WORKERS": os.environ.get("FAPIAO_API_WORKERS", "0"),
        }
        _save_env(env)
        routes: list[str] = []
        for spec in SERVICES:
            port = _port(spec.port_env, spec.default_port)
            url = f"http://127.0.0.1:{port}"
            names = _replica_names(spec.name, counts.get(spec.name, 1))
            ports = [port] if len(names) == 1 else [port + 10 * i for i in range(1, len(names) + 1)]
            from services.issuer.settings import api_workers

            workers = api_workers(int(env["FAPIAO_API_WORKERS"] or 0))
            background = [p + 9 for p in ports] if spec.name == "issuer" and workers > 1 else []
            for p in [port, *ports, *background]:  # the issuer's background process listens on its port + 9
                if port_is_open(p):
                    raise RuntimeError(f"port {p} for {spec.name} is already in use; set {spec.port_env}")
            if len(names) > 1:
                routes.append(f"{port}={','.join(map(str, ports))}")
                state.setdefault("replicas", {})[spec.name] = names
            state["urls"][spec.name] = url
            started = []
            for name, p in zip(names, ports, strict=True):
                typer.echo(f"• {name}: starting on http://127.0.0.1:{p}…")
                svc = ServiceProcess.service(name, module=spec.module, port=p, log_dir=d / "logs",
                                             env={**env, "FAPIAO_DATABASE_URL": database_urls[spec.name]})
                svc.spawn()
                processes[name] = {**svc.record(), "module": spec.module, "restarts": 0}
                started.append(svc)
            _save(state)
            for svc in started:  # replicas start side by side
                svc.wait_ready(90, interval=0.25)
        if routes:
            typer.echo(f"• balancer: {'  '.join(routes)} (round robin over the replicas)…")
            argv = [sys.executable, "-m", BALANCER_MODULE, *(a for r in routes for a in ("--route", r))]
            balancer = ServiceProcess("balancer", argv, port=int(routes[0].split("=")[0]),
                                      env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                      log_path=d / "logs" / "balancer.log", readiness="tcp")
            balancer.spawn()
            processes["balancer"] = {**balancer.record(), "argv": argv,
                                     "ports": [int(r.split("=")[0]) for r in routes], "restarts": 0}
            _save(state)
            balancer.wait_ready(30)
        _write_env(state, admin_token)
        _demo_tenant(state["urls"]["issuer"], admin_token)
        sup = spawn([sys.executable, "-m", "fapiao.stack", "supervise"], log_path=d / "logs" / "supervisor.log",
                    cwd=REPO_ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        processes["supervisor"] = {"pid": sup.pid, "marker": "fapiao.stack supervise", "ports": [],
                                   "log": str(d / "logs" / "supervisor.log")}
        _save(state)
    except BaseException as exc:  # noqa: BLE001 - whatever stopped start-up (Ctrl-C too): stop what was started
        typer.echo(f"\nStart-up failed: {exc}", err=True)
        _stop_all(state)
        raise typer.Exit(1) from None
    _print_summary(state)


def _write_env(state: dict, admin_token: str) -> None:
    """For the `fapiao` CLI: it reads this file when the variables are not set."""
    lines = [
        f"FAPIAO_DATABASE_URL={state['database_url']}",
        f"FAPIAO_KAFKA_BOOTSTRAP={state['kafka_bootstrap']}",
        f"FAPIAO_ADMIN_TOKEN={admin_token}",
        f"FAPIAO_OPERATOR_TOKENS_FILE={state['operators_file']}",
        f"FAPIAO_ISSUER_URL={state['urls']['issuer']}",
        f"FAPIAO_TAXSTORE_URL={state['urls']['taxstore']}",
        f"FAPIAO_SYNC_URL={state['urls']['sync']}",
        f"FAPIAO_RECONCILER_URL={state['urls']['reconciler']}",
        f"FAPIAO_NOTIFIER_URL={state['urls']['notifier']}",
    ]
    path = state_dir() / "stack.env"
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)


def _demo_tenant(issuer_url: str, admin_token: str) -> None:
    key_file = state_dir() / "demo-api-key"
    r = httpx.post(f"{issuer_url}/admin/tenants", json=DEMO_TENANT,
                   headers={"Authorization": f"Bearer {admin_token}"}, timeout=10)
    if r.status_code == 201:
        key_file.write_text(r.json()["api_key"] + "\n")
        key_file.chmod(0o600)
    elif r.status_code != 409:
        raise RuntimeError(f"could not create the demo tenant: {r.status_code} {r.text}")


def _stop_all(state: dict) -> list[str]:
    stopped: list[str] = []
    order = ["balancer"] + [s.name for s in reversed(SERVICES)] + ["mailsink", "kafka", "postgres"]

    def step(name: str) -> int:  # the supervisor, the balancer, the services, the mail sink, Kafka, PostgreSQL
        name = "kafka" if _is_kafka(name) else _service_of(name)
        return order.index(name) if name in order else -1

    procs = state.get("processes", {})
    alive = [name for name in procs if _ours(procs[name]["pid"], procs[name]["marker"])]
    for now in sorted({step(n) for n in alive}):
        names = [n for n in alive if step(n) == now]
        # A cluster's nodes stop together: stopped one by one, the last would wait for a quorum that is gone.
        with ThreadPoolExecutor(max_workers=max(len(names), 1)) as pool:
            for done in [pool.submit(stop_group, procs[n]["pid"], timeout=30,
                                     sig=signal.SIGINT if n == "postgres" else signal.SIGTERM) for n in names]:
                done.result()
        stopped += names
    f = _state_file()
    if f.exists():
        f.unlink()
    return stopped


@app.command()
def down() -> None:
    """Stop everything `up` started."""
    state = _load()
    if state is None:
        typer.echo("Nothing is running (no stack state found).")
        return
    stopped = _stop_all(state)
    ports = [port for p in state.get("processes", {}).values() for port in p["ports"]]
    deadline = time.monotonic() + 10
    while any(port_is_open(p) for p in ports) and time.monotonic() < deadline:
        time.sleep(0.1)
    still = [p for p in ports if port_is_open(p)]
    typer.echo(f"Stopped: {', '.join(stopped) or 'nothing was running'}.")
    if still:
        typer.echo(f"Warning: ports still listening: {still}", err=True)
        raise typer.Exit(1)


@app.command()
def status() -> None:
    """What runs, and whether each service is ready."""
    state = _load()
    if state is None:
        typer.echo("The stack is not running. Start it with: make up")
        raise typer.Exit(3)
    for name, p in state["processes"].items():
        alive = _ours(p["pid"], p["marker"])
        ready = ""
        if "module" in p:  # a service or one of its replicas, on its own port
            ready = " ready" if http_ready(f"http://127.0.0.1:{p['ports'][0]}") else " NOT READY"
        elif _is_kafka(name) and alive:  # a live broker of the cluster, as the cluster's metadata says
            ready = " ready" if metadata_ready(f"127.0.0.1:{p['ports'][0]}", timeout=3,
                                               node_id=p.get("node", 1)) else " NOT READY"
        restarts = f"  restarts {p['restarts']}" if "restarts" in p else ""
        if p.get("held"):
            restarts += "  (held down by a drill)"
        typer.echo(f"{name:<12} pid {p['pid']:<8} {'running' if alive else 'STOPPED'}{ready}  ports {p['ports']}"
                   f"{restarts}")
    if _running(state) != list(state["processes"]):
        raise typer.Exit(1)


def _service_roles(admin_url: str) -> dict[str, str]:
    """Each service's database URL: its own role, owning only its schema (fapiao.infra.roles), made with a fresh
    password at every `up`. Where the URL's user may not create roles (a managed database's plain user), or with
    FAPIAO_DB_ROLES=off, every service connects with the URL as given (one role: docs/security.md)."""
    if os.environ.get("FAPIAO_DB_ROLES", "on").lower() in ("off", "0", "false"):
        typer.echo("• PostgreSQL: FAPIAO_DB_ROLES=off: every service connects as the URL's user")
        urls = dict.fromkeys(SCHEMAS, admin_url)
    else:
        try:
            urls = provision(admin_url, tuple(SCHEMAS), password=secrets.token_urlsafe(24))
            typer.echo(f"• PostgreSQL: one role per service, owning its schema only "
                       f"({', '.join(role_for(s) for s in SCHEMAS)})")
        except RolesRefused as exc:
            typer.echo(f"• PostgreSQL: could not create the services' roles ({exc}); every service connects as "
                       "the URL's user (see docs/security.md, Least privilege)")
            urls = dict.fromkeys(SCHEMAS, admin_url)
    path = state_dir() / "service-db.json"
    path.write_text(json.dumps(urls))
    path.chmod(0o600)
    return urls


def _service_database_urls() -> dict[str, str]:
    path = state_dir() / "service-db.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _save_env(env: dict[str, str]) -> None:
    path = state_dir() / "service-env.json"
    path.write_text(json.dumps(env))
    path.chmod(0o600)


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One writer of stack.json at a time (the supervisor, `restart`)."""
    state_dir().mkdir(parents=True, exist_ok=True)
    with open(state_dir() / "stack.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _is_infra(name: str) -> bool:
    return name == "postgres" or _is_kafka(name)


def _respawn(state: dict, name: str) -> tuple[str, object]:
    """Start a recorded component again on its ports with the settings `up` gave it; counts a restart. Returns
    (url or address, a waiter): services and Kafka nodes are spawned here and waited for outside the lock (a
    cluster's nodes answer only once a quorum of them runs), PostgreSQL is started (and waited for) here."""
    rec = state["processes"][name]
    if _is_kafka(name):
        node = _kafka_cluster(state).spawn_node(rec.get("node", 1))
        state["processes"][name] = {**rec, "pid": node.pid, "restarts": rec.get("restarts", 0) + 1,
                                    "restarted_at": time.time()}
        _save(state)
        return node.bootstrap, node
    if name == "postgres":
        server = PostgresServer(state_dir() / "postgres", port=rec["ports"][0])
        # kill -9 leaves postmaster.pid behind with a pid that is gone: stale, and it would refuse to start
        with contextlib.suppress(FileNotFoundError):
            (server.pgdata / "postmaster.pid").unlink()
        server.start(timeout=120)
        assert server.pid is not None
        state["processes"][name] = {**rec, "pid": server.pid, "restarts": rec.get("restarts", 0) + 1,
                                    "restarted_at": time.time()}
        _save(state)
        return f"127.0.0.1:{rec['ports'][0]}", None
    if "argv" in rec:  # the balancer
        svc = ServiceProcess(name, rec["argv"], port=rec["ports"][0], env={**os.environ, "PYTHONUNBUFFERED": "1"},
                             log_path=Path(rec["log"]), readiness="tcp")
        svc.spawn()
        state["processes"][name] = {**rec, "pid": svc.pid, "restarts": rec.get("restarts", 0) + 1,
                                    "restarted_at": time.time()}
        _save(state)
        return f"127.0.0.1:{rec['ports'][0]}", svc
    env = json.loads((state_dir() / "service-env.json").read_text())
    own = _service_database_urls().get(rec["module"].split(".")[1])
    if own:  # the service's own role (fapiao.infra.roles)
        env["FAPIAO_DATABASE_URL"] = own
    svc = ServiceProcess.service(name, module=rec["module"], port=rec["ports"][0], env=env,
                                 log_dir=state_dir() / "logs")
    svc.spawn()
    state["processes"][name] = {**rec, **svc.record(), "restarts": rec.get("restarts", 0) + 1,
                                "restarted_at": time.time()}
    _save(state)
    return svc.url, svc


def _components(state: dict | None, name: str) -> list[str]:
    """The recorded processes `name` stands for: itself; `kafka` with a cluster: every node."""
    nodes = _kafka_names(state) if state is not None else []
    replicas = {spec.name: _replicas_of(state, spec.name) if state is not None else [] for spec in SERVICES}
    extra = [n for names_ in replicas.values() for n in names_ if n not in replicas]
    if state is not None and "balancer" in state.get("processes", {}):
        extra.append("balancer")
    names = [spec.name for spec in SERVICES] + ["kafka", "postgres"] + [n for n in nodes if n != "kafka"] + extra
    if name not in names:
        raise StackError(f"no component {name!r}; one of {', '.join(names)}", 2)
    targets = nodes if name == "kafka" else (replicas.get(name) or [name])
    if state is None or not targets or any(t not in state.get("processes", {}) for t in targets):
        raise StackError(f"{name} is not part of a running stack (start it with: make up)", 3)
    if any(not _is_infra(t) and t != "balancer" and "module" not in state["processes"][t] for t in targets):
        raise StackError("This stack was started by an older `make up`; run `make down` and `make up` once.", 2)
    return targets


class StackError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def kill_component(name: str, *, hold: bool = True) -> None:
    """kill -9 one component of the running stack (a drill's fault; `kafka`: every node of a cluster at once).
    With `hold` the supervisor leaves it dead until `start_component` (or `restart`) brings it back."""
    with _locked():
        state = _load()
        targets = _components(state, name)
        assert state is not None
        recs = [state["processes"][t] for t in targets]
        if hold:
            for rec in recs:
                rec["held"] = True
            _save(state)
        for rec in recs:
            if _ours(rec["pid"], rec["marker"]):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(rec["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(_ours(r["pid"], r["marker"]) for r in recs) and time.monotonic() < deadline:  # zombies: no cmdline
            time.sleep(0.05)


def signal_component(name: str, sig: int) -> None:
    """SIGSTOP / SIGCONT one component (a hung process, and its recovery)."""
    with _locked():
        state = _load()
        targets = _components(state, name)
        assert state is not None
        for target in targets:
            rec = state["processes"][target]
            if _ours(rec["pid"], rec["marker"]):
                os.killpg(rec["pid"], sig)


def start_component(name: str, *, stop_first: bool = False, timeout: float = 90) -> str:
    """Start one component again if it is not running (stopping it first with `stop_first`), release a drill's
    hold, and wait until it is ready. Returns where it listens. `kafka` with a cluster: every node; restarted one
    at a time, each back and caught up before the next stops, so the cluster keeps serving."""
    with _locked():
        targets = _components(_load(), name)
    where, waiting = [], []
    for target in targets:
        with _locked():
            state = _load()
            _components(state, target)
            assert state is not None
            rec = state["processes"][target]
            rec.pop("held", None)
            alive = _ours(rec["pid"], rec["marker"])
            if alive and stop_first:
                stop_group(rec["pid"], timeout=20, sig=signal.SIGINT if target == "postgres" else signal.SIGTERM)
                alive = False
            if alive:
                _save(state)
                where.append(state["urls"].get(target, f"127.0.0.1:{rec['ports'][0]}"))
                continue
            address, waiter = _respawn(state, target)
        where.append(address)
        waiting.append(waiter)
        if stop_first and len(targets) > 1:  # one by one: the others serve meanwhile
            _wait_ready(waiter, timeout, in_sync=True)
    for waiter in waiting:  # a whole cluster started again: its nodes answer once enough of them run
        _wait_ready(waiter, timeout)
    return ",".join(where)


def _wait_ready(waiter: object, timeout: float, *, in_sync: bool = False) -> None:
    if isinstance(waiter, ServiceProcess):
        waiter.wait_ready(timeout, interval=0.25)
    elif isinstance(waiter, KafkaBroker):
        waiter.wait_ready(timeout=timeout)
        if in_sync:  # before the next node of a rolling restart stops: no partition may still lack this one
            deadline = time.monotonic() + timeout
            while not replicas_in_sync(waiter.bootstrap) and time.monotonic() < deadline:
                time.sleep(0.5)


@app.command()
def restart(service: str = typer.Argument(..., help="issuer, taxstore, sync, reconciler, notifier (every replica, "
                                                   "one by one), sync-2 (one replica), kafka (every node, one by "
                                                   "one), kafka-2 (one node), balancer or postgres"),
            ) -> None:
    """Stop one component and start it again; the others keep running (Kafka's and PostgreSQL's data are kept)."""
    typer.echo(f"• {service}: restarting…")
    try:
        where = start_component(service, stop_first=True)
    except StackError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(exc.code) from None
    state = _load() or {"processes": {}}
    pids = ", ".join(str(state["processes"][t]["pid"]) for t in _components(state, service))
    typer.echo(f"{service} is ready at {where} (pid {pids}).")


@app.command(hidden=True)
def supervise(interval: float = 1.0) -> None:
    """Started by `up`: starts a service, Kafka or PostgreSQL again when it died, with backoff; leaves alone what a
    drill holds down; exits when the stack is gone."""
    backoff: dict[str, float] = {}
    due: dict[str, float] = {}
    while True:
        time.sleep(interval)
        with _locked():
            state = _load()
            if state is None:
                return
            services = [n for spec in SERVICES for n in _replicas_of(state, spec.name)]
            for name in [*_kafka_names(state), "postgres", *services, "balancer"]:
                rec = state["processes"].get(name)
                if rec is None or (not _is_infra(name) and not {"module", "argv"} & set(rec)) or rec.get("held"):
                    due.pop(name, None)
                    continue
                if _ours(rec["pid"], rec["marker"]):
                    if time.time() - rec.get("restarted_at", 0) > 60:
                        backoff.pop(name, None)
                    continue
                now = time.monotonic()
                if name not in due:
                    delay = backoff.get(name, 0.5)
                    due[name] = now + delay
                    backoff[name] = min(max(delay * 2, 1.0), 60.0)
                    typer.echo(f"{time.strftime('%H:%M:%S')} {name} (pid {rec['pid']}) is gone; "
                               f"starting it again in {delay:g}s")
                elif now >= due[name]:
                    del due[name]
                    try:
                        _respawn(state, name)
                    except Exception as exc:  # noqa: BLE001 - the supervisor outlives it: logged, tried again later
                        typer.echo(f"{time.strftime('%H:%M:%S')} {name} did not start: {exc}")
                        continue
                    typer.echo(f"{time.strftime('%H:%M:%S')} {name} started again, pid "
                               f"{state['processes'][name]['pid']} (restart {state['processes'][name]['restarts']})")


@app.command()
def logs(service: str = typer.Option(None, help="only this component"),
         follow: bool = typer.Option(False, "--follow", "-f"), lines: int = 100) -> None:
    """Show the last lines of each component's log (or follow them)."""
    state = _load() or {}
    paths = {n: p["log"] for n, p in state.get("processes", {}).items()}
    if not paths:
        paths = {f.stem: str(f) for f in sorted((state_dir() / "logs").glob("*.log"))}
    if service:
        if service not in paths:
            typer.echo(f"no log for {service}; known: {', '.join(paths)}", err=True)
            raise typer.Exit(2)
        paths = {service: paths[service]}
    if not paths:
        typer.echo("No logs yet. Start the stack with: make up")
        return
    cmd = ["tail", f"-n{lines}"] + (["-F"] if follow else []) + list(paths.values())
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends `--follow`
        subprocess.run(cmd, check=False)


if __name__ == "__main__":
    app()
