"""The local stack behind `make up` / `make down` / `make status` / `make logs`.

Everything runs as background processes recorded in `<state dir>/stack.json`; nothing needs Docker.
Kafka and PostgreSQL are started here unless FAPIAO_KAFKA_BOOTSTRAP / FAPIAO_DATABASE_URL point
elsewhere. The state dir (default `.run/`, override FAPIAO_STACK_DIR) is git-ignored.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import typer

from fapiao.infra.kafka import REPO_ROOT, KafkaBroker, ensure_kafka_jars
from fapiao.infra.postgres import PostgresServer
from fapiao.infra.procs import pid_alive, port_is_open, spawn, stop_group, wait_until

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


def state_dir() -> Path:
    return Path(os.environ.get("FAPIAO_STACK_DIR", REPO_ROOT / ".run")).resolve()


def _port(env: str, default: int) -> int:
    return int(os.environ.get(env, default))


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


def _secret(name: str, factory) -> str:  # type: ignore[no-untyped-def]
    path = state_dir() / name
    if path.exists():
        return path.read_text().strip()
    value = factory()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value + "\n")
    path.chmod(0o600)
    return value


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _ours(pid: int, marker: str) -> bool:
    """Alive and still the process we started (pids get reused)."""
    return pid_alive(pid) and marker in _cmdline(pid)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _running(state: dict) -> list[str]:
    return [name for name, p in state.get("processes", {}).items() if _ours(p["pid"], p["marker"])]


def _print_summary(state: dict) -> None:
    d = state_dir()
    key_file = d / "demo-api-key"
    typer.echo("")
    typer.echo("Fapiao Sync is running.")
    for name, url in state["urls"].items():
        typer.echo(f"  {name:<10} {url}   (OpenAPI: {url}/docs)" if name == "issuer" else f"  {name:<10} {url}")
    if "issuer" in state["urls"]:
        typer.echo(f"  dashboard  {state['urls']['issuer']}/ops   (operators: sign in with the admin token)")
    typer.echo(f"  kafka      {state['kafka_bootstrap']}")
    typer.echo(f"  postgres   {state['database_url'].replace(':fapiao@', ':***@')}")
    if state.get("mail_dir"):
        port = state["processes"]["mailsink"]["ports"][0]
        typer.echo(f"  mail sink  smtp://127.0.0.1:{port}   (e-mail alerts land in {state['mail_dir']}/*.eml)")
    typer.echo("")
    if key_file.exists():
        typer.echo(f"Demo tenant {DEMO_TENANT['tax_id']} API key: {key_file.read_text().strip()}")
    typer.echo(f"Admin token: in {d / 'admin-token'}  ·  logs: make logs  ·  stop: make down")
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
            return
        if alive:
            typer.echo(f"A partial stack is running ({', '.join(alive)}); stopping it first.")
        _stop_all(state)
    d = state_dir()
    (d / "logs").mkdir(parents=True, exist_ok=True)
    admin_token = _secret("admin-token", lambda: secrets.token_urlsafe(32))
    processes: dict[str, dict] = {}
    state = {"processes": processes, "urls": {}}
    try:
        kafka_bootstrap = os.environ.get("FAPIAO_KAFKA_BOOTSTRAP")
        if not kafka_bootstrap:
            typer.echo("• Kafka: fetching jars (first run only) and starting the broker…")
            broker = KafkaBroker(d / "kafka", port=_port("FAPIAO_KAFKA_PORT", 9092),
                                 controller_port=_port("FAPIAO_KAFKA_CONTROLLER_PORT", 9093))
            broker.start()
            processes["kafka"] = {"pid": broker.pid, "marker": "kafka.Kafka",
                                  "ports": [broker.port, broker.controller_port], "log": str(broker.log_path)}
            kafka_bootstrap = broker.bootstrap
            _save(state)
        database_url = os.environ.get("FAPIAO_DATABASE_URL")
        if not database_url:
            typer.echo("• PostgreSQL: starting the embedded server…")
            pg = PostgresServer(d / "postgres", port=_port("FAPIAO_PG_PORT", 55432))
            pg.start()
            processes["postgres"] = {"pid": pg.pid, "marker": "postgres", "ports": [pg.port], "log": str(pg.log_path)}
            database_url = pg.url()
            _save(state)
        state.update(kafka_bootstrap=kafka_bootstrap, database_url=database_url)
        smtp_port = _port("FAPIAO_SMTP_PORT", 1025)
        if not os.environ.get("FAPIAO_SMTP_HOST"):  # no mail server of your own: a local sink keeps the mail
            if port_is_open(smtp_port):
                raise RuntimeError(f"port {smtp_port} for the mail sink is already in use; set FAPIAO_SMTP_PORT")
            typer.echo(f"• mail sink: SMTP on 127.0.0.1:{smtp_port}, messages kept in {d / 'mail'}…")
            log_path = d / "logs" / "mailsink.log"
            proc = spawn([sys.executable, "-m", MAILSINK_MODULE, "--port", str(smtp_port), "--dir", str(d / "mail")],
                         log_path=log_path, cwd=REPO_ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
            processes["mailsink"] = {"pid": proc.pid, "marker": MAILSINK_MODULE, "ports": [smtp_port],
                                     "log": str(log_path)}
            state["mail_dir"] = str(d / "mail")
            _save(state)
            wait_until(lambda: port_is_open(smtp_port), timeout=30, what="mail sink", log_path=log_path,
                       alive=lambda: proc.poll() is None, interval=0.1)
        issuer_url = f"http://127.0.0.1:{_port('FAPIAO_ISSUER_PORT', 8000)}"
        env = {
            **os.environ, "FAPIAO_ENV": os.environ.get("FAPIAO_ENV", "development"),
            "FAPIAO_DATABASE_URL": database_url, "FAPIAO_KAFKA_BOOTSTRAP": kafka_bootstrap,
            "FAPIAO_ADMIN_TOKEN": admin_token, "PYTHONUNBUFFERED": "1",
            "FAPIAO_TAXSTORE_URL": f"http://127.0.0.1:{_port('FAPIAO_TAXSTORE_PORT', 8100)}",
            "FAPIAO_RECONCILER_URL": f"http://127.0.0.1:{_port('FAPIAO_RECONCILER_PORT', 8002)}",
            "FAPIAO_NOTIFIER_URL": f"http://127.0.0.1:{_port('FAPIAO_NOTIFIER_PORT', 8003)}",
            "FAPIAO_SYNC_URL": f"http://127.0.0.1:{_port('FAPIAO_SYNC_PORT', 8001)}",
            "FAPIAO_ISSUER_PUBLIC_URL": issuer_url,
            "FAPIAO_SMTP_HOST": os.environ.get("FAPIAO_SMTP_HOST", "127.0.0.1"), "FAPIAO_SMTP_PORT": str(smtp_port),
            # Local development: webhooks may go to receivers on this machine (never to other private ranges).
            "FAPIAO_WEBHOOK_ALLOW_PRIVATE": os.environ.get("FAPIAO_WEBHOOK_ALLOW_PRIVATE", "127.0.0.0/8,::1/128"),
            "FAPIAO_SECRETS_KEY": os.environ.get("FAPIAO_SECRETS_KEY")
            or _secret("secrets-key", lambda: secrets.token_urlsafe(32)),
        }
        for spec in SERVICES:
            port = _port(spec.port_env, spec.default_port)
            url = f"http://127.0.0.1:{port}"
            if port_is_open(port):
                raise RuntimeError(f"port {port} for {spec.name} is already in use; set {spec.port_env}")
            typer.echo(f"• {spec.name}: starting on {url}…")
            log_path = d / "logs" / f"{spec.name}.log"
            proc = spawn([sys.executable, "-m", spec.module], log_path=log_path, cwd=REPO_ROOT,
                         env={**env, "FAPIAO_PORT": str(port), "FAPIAO_PUBLIC_URL": url})
            processes[spec.name] = {"pid": proc.pid, "marker": spec.module, "ports": [port], "log": str(log_path)}
            state["urls"][spec.name] = url
            _save(state)
            wait_until(lambda url=url: _ready(url), timeout=90, what=f"{spec.name} /readyz",
                       alive=lambda proc=proc: proc.poll() is None, log_path=log_path, interval=0.25)
        _write_env(state, admin_token)
        _demo_tenant(state["urls"]["issuer"], admin_token)
    except BaseException as exc:
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
    stopped = []
    order = [s.name for s in reversed(SERVICES)] + ["mailsink", "kafka", "postgres"]
    procs = state.get("processes", {})
    for name in sorted(procs, key=lambda n: order.index(n) if n in order else -1):
        p = procs[name]
        if _ours(p["pid"], p["marker"]):
            stop_group(p["pid"], timeout=30, sig=signal.SIGINT if name == "postgres" else signal.SIGTERM)
            stopped.append(name)
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
        if name in state["urls"]:
            ready = " ready" if _ready(state["urls"][name]) else " NOT READY"
        typer.echo(f"{name:<10} pid {p['pid']:<8} {'running' if alive else 'STOPPED'}{ready}  ports {p['ports']}")
    if _running(state) != list(state["processes"]):
        raise typer.Exit(1)


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
    try:
        subprocess.run(cmd, check=False)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    app()
