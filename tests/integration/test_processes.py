"""The real processes: the issuer over real HTTP with hostile input, the `fapiao` CLI, and the
`make up` / `make down` stack manager on its own ports and state directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from fapiao.infra import ServiceProcess, free_port, port_is_open
from fapiao.infra.procs import pid_alive
from tests import factories
from tests.harness import ADMIN_TOKEN

REPO = Path(__file__).resolve().parents[2]


def _env(infra, **extra: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAPIAO_")}
    env.update(FAPIAO_DATABASE_URL=infra.database_url, FAPIAO_KAFKA_BOOTSTRAP=infra.kafka_bootstrap,
               FAPIAO_ADMIN_TOKEN=ADMIN_TOKEN, FAPIAO_ENV="test", FAPIAO_TOPIC_PREFIX="proc.",
               FAPIAO_STACK_DIR=str(infra.workdir / "no-stack"), **extra)
    return env


@pytest.fixture(scope="module")
def issuer_url(infra) -> Iterator[str]:  # type: ignore[no-untyped-def]
    issuer = ServiceProcess.service("issuer", env=_env(infra, FAPIAO_MAX_BODY_BYTES=str(2 * 1024 * 1024)),
                                    log_dir=infra.workdir, log_name="issuer-process", die_with_parent=True)
    try:
        issuer.start(60)
        yield issuer.url
    finally:
        issuer.stop()
    assert "fsk_" not in issuer.log_text(), "API keys never reach the logs"


@pytest.fixture(scope="module")
def seller(issuer_url) -> dict:  # type: ignore[no-untyped-def]
    r = httpx.post(f"{issuer_url}/admin/tenants", json={"name": "进程测试", "tax_id": factories.uscc()},
                   headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert r.status_code == 201
    return r.json()


def test_hostile_input_gets_4xx_never_5xx(issuer_url, seller):
    auth = {"Authorization": f"Bearer {seller['api_key']}"}
    good = json.dumps(factories.invoice(seller["tax_id"]), ensure_ascii=False)
    assert "测试 test" in good
    cases: dict[str, tuple[bytes, dict[str, str], int]] = {
        "NUL in a string": (good.replace("测试 test", "a\\u0000b").encode(), {}, 422),
        "raw NUL byte": (good.replace("测试 test", "a\x00b").encode(), {}, 400),
        "lone surrogate escape": (good.replace("测试 test", "\\ud800").encode(), {}, 422),
        "lone surrogate key": (good[:-1].encode() + b', "\\udfff": 1}', {}, 422),
        "invalid UTF-8": (good.replace("测试 test", "XX").encode().replace(b"XX", b"\xed\xa0\x80"), {}, 422),
        "huge integer": (good.replace('"2"', "9" * 5000, 1).encode(), {}, 400),
        "huge exponent": (good.replace('"2"', "1e999999", 1).encode(), {}, 422),
        "huge decimal string": (good.replace('"200.00"', '"' + "9" * 400 + '.00"', 1).encode(), {}, 422),
        "malformed JSON": (b'{"number": "26', {}, 400),
        "not an object": (b"[1, 2, 3]", {}, 422),
        "deep nesting": (b"[" * 100_000 + b"]" * 100_000, {}, 400),
        "10 MB body": (b'{"x": "' + b"a" * (10 * 1024 * 1024) + b'"}', {}, 413),
        "wrong content type": (good.encode(), {"Content-Type": "text/plain"}, 415),
    }
    for name, (body, extra, expected) in cases.items():
        headers = {"Content-Type": "application/json", **auth, **extra}
        r = httpx.post(f"{issuer_url}/v1/invoices", content=body, headers=headers, timeout=30)
        assert r.status_code < 500, f"{name}: {r.status_code} {r.text[:300]}"
        assert r.status_code == expected, f"{name}: {r.status_code} {r.text[:300]}"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must hold on streamed bodies too
        for _ in range(12):
            yield b" " * (1024 * 1024)

    r = httpx.post(f"{issuer_url}/v1/invoices", content=chunks(), headers={**auth, "Content-Type": "application/json"},
                   timeout=30)
    assert r.status_code == 413
    # And the service is still healthy afterwards.
    assert httpx.get(f"{issuer_url}/readyz").status_code == 200
    r = httpx.post(f"{issuer_url}/v1/invoices", content=good.encode(),
                   headers={**auth, "Content-Type": "application/json"})
    assert r.status_code == 201
    assert r.headers["x-correlation-id"]


def test_cli_creates_tenants_and_imports_csv_with_row_errors(infra, issuer_url, tmp_path):
    tax_id = factories.uscc()
    created = subprocess.run([sys.executable, "-m", "fapiao.cli", "tenants", "create", "--name", "CLI Co.",
                              "--tax-id", tax_id, "--json"], env=_env(infra), capture_output=True, text=True,
                             timeout=120, cwd=REPO)
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)["api_key"]
    assert key.startswith("fsk_")
    again = subprocess.run([sys.executable, "-m", "fapiao.cli", "tenants", "create", "--name", "CLI Co.",
                            "--tax-id", tax_id], env=_env(infra), capture_output=True, text=True, timeout=120, cwd=REPO)
    assert again.returncode == 1 and "already exists" in again.stderr
    bad = subprocess.run([sys.executable, "-m", "fapiao.cli", "tenants", "create", "--name", "x",
                          "--tax-id", "914403001922038217"], env=_env(infra), capture_output=True, text=True,
                         timeout=120, cwd=REPO)
    assert bad.returncode == 1 and "check character" in bad.stderr

    from services.issuer.csv_import import COLUMNS

    lines = [",".join(COLUMNS)]
    numbers = []
    for i in range(1200):  # more than one request's worth: the CLI splits the file
        d = factories.invoice(tax_id)
        ln = d["lines"][0]
        amount = "1.00" if i == 700 else ln["amount"]
        numbers.append(d["number"])
        lines.append(",".join([d["number"], d["kind"], d["issue_date"], d["buyer"]["tax_id"], d["buyer"]["name"],
                               ln["description"], ln["tax_code"], ln["quantity"], ln["unit_price"], amount,
                               ln["tax_rate"], ln["tax_amount"], ""]))
    csv_file = tmp_path / "history.csv"
    csv_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "fapiao.cli", "import", str(csv_file), "--api-key", key,
                             "--url", issuer_url, "--json"], env=_env(infra), capture_output=True, text=True,
                            timeout=300, cwd=REPO)
    assert result.returncode == 1, "a rejected row makes the exit code non-zero"
    summary = json.loads(result.stdout)
    assert summary["invoices"] == 1200 and summary["created"] == 1199 and summary["rejected"] == 1
    assert summary["errors"][0]["row"] == 702 and summary["errors"][0]["column"] == "line_amount"
    listed = httpx.get(f"{issuer_url}/v1/invoices", params={"number": numbers[1100]},
                       headers={"Authorization": f"Bearer {key}"}).json()
    assert len(listed["items"]) == 1


def test_stack_up_is_idempotent_and_down_leaves_nothing(stack_home):
    """`make up` / `make down`, on private ports and a private state dir so a real stack is untouched."""
    ports = {"FAPIAO_KAFKA_PORT": free_port(), "FAPIAO_KAFKA_CONTROLLER_PORT": free_port(),
             "FAPIAO_PG_PORT": free_port(), "FAPIAO_ISSUER_PORT": free_port(), "FAPIAO_TAXSTORE_PORT": free_port(),
             "FAPIAO_SYNC_PORT": free_port(), "FAPIAO_RECONCILER_PORT": free_port(),
             "FAPIAO_NOTIFIER_PORT": free_port(), "FAPIAO_SMTP_PORT": free_port()}
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAPIAO_")}
    env.update({k: str(v) for k, v in ports.items()}, FAPIAO_STACK_DIR=str(stack_home / "run"),
               FAPIAO_OPERATOR_NAME="Erin Ops")

    def stack(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "fapiao.stack", *args], env=env, capture_output=True,
                              text=True, timeout=240, cwd=REPO)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "fapiao.cli", *args], env=env, capture_output=True,
                              text=True, timeout=60, cwd=REPO)

    try:
        up = stack("up")
        assert up.returncode == 0, up.stdout + up.stderr
        url = f"http://127.0.0.1:{ports['FAPIAO_ISSUER_PORT']}"
        assert url in up.stdout and "API key: fsk_" in up.stdout
        assert httpx.get(f"{url}/readyz", timeout=5).status_code == 200
        key = (stack_home / "run" / "demo-api-key").read_text().strip()
        doc = factories.invoice("91310115MA1K4DEM05")
        r = httpx.post(f"{url}/v1/invoices", json=doc, headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 201, r.text
        # The whole pipeline runs: the invoice reaches the (simulated) authority, the reconciler sees it there,
        # and the issuer says so.
        invoice_url = f"{url}/v1/invoices/{r.json()['id']}"
        deadline = time.monotonic() + 30
        while (shown := httpx.get(invoice_url, headers={"Authorization": f"Bearer {key}"}).json())["status"] \
                != "confirmed" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert shown["status"] == "confirmed" and shown["receipt_no"], shown
        taxstore = f"http://127.0.0.1:{ports['FAPIAO_TAXSTORE_PORT']}"
        held = httpx.get(f"{taxstore}/v1/invoices/91310115MA1K4DEM05/{doc['number']}", timeout=5)
        assert held.status_code == 200 and held.json()["receipt_no"] == shown["receipt_no"]
        assert f"http://127.0.0.1:{ports['FAPIAO_SYNC_PORT']}" in up.stdout
        assert f"http://127.0.0.1:{ports['FAPIAO_RECONCILER_PORT']}" in up.stdout
        assert f"http://127.0.0.1:{ports['FAPIAO_NOTIFIER_PORT']}" in up.stdout
        # Each service connected as its own role (fapiao.infra.roles), and that pipeline ran on them.
        assert "one role per service" in up.stdout
        roles = {s: make_url(u).username for s, u in
                 json.loads((stack_home / "run" / "service-db.json").read_text()).items()}
        assert roles == {s: f"fapiao_{s}" for s in ("issuer", "taxstore", "sync", "reconciler", "notifier")}
        # The operators' dashboard, and the figures behind it for the stack's own admin token.
        assert f"{url}/ops" in up.stdout and httpx.get(f"{url}/ops", timeout=5).status_code == 200
        admin = {"Authorization": f"Bearer {(stack_home / 'run' / 'admin-token').read_text().strip()}"}
        overview = httpx.get(f"{url}/ops/api/overview", headers=admin, timeout=10).json()
        assert all(svc["ready"] for svc in overview["services"]), overview["services"]
        assert overview["faults"]["outage"] is False and overview["counts"]["confirmed"] >= 1
        # The person who ran `make up` has an operator token of their own: the dashboard's figures, a drill
        # through it, and the audit log naming them; the CLI sends it.
        run = stack_home / "run"
        mine = {"Authorization": f"Bearer {(run / 'operator-token').read_text().strip()}"}
        assert "Your operator token (erin-ops;" in up.stdout and str(run / "operators") in up.stdout
        assert httpx.get(f"{url}/ops/api/overview", headers=mine, timeout=10).status_code == 200
        assert httpx.put(f"{url}/ops/api/faults", headers=mine, json={"latency_ms": 0}, timeout=10).status_code == 200
        audited = cli("audit", "--actor", "erin-ops", "--json")
        assert audited.returncode == 0, audited.stderr
        assert [i["path"] for i in json.loads(audited.stdout)["items"]] == ["/ops/api/faults"], audited.stdout
        # Another operator added while everything runs: every service knows them within seconds, without a
        # restart, and forgets them as fast when revoked.
        added = cli("operators", "add", "frank", "--json")
        assert added.returncode == 0, added.stderr
        frank = {"Authorization": f"Bearer {json.loads(added.stdout)['token']}"}
        admin_reads = [f"http://127.0.0.1:{ports[f'FAPIAO_{n}_PORT']}/admin/status"
                       for n in ("SYNC", "RECONCILER", "NOTIFIER")] + [
            f"http://127.0.0.1:{ports['FAPIAO_TAXSTORE_PORT']}/admin/faults", f"{url}/admin/tenants"]

        def answers(headers: dict[str, str], want: int) -> None:
            deadline = time.monotonic() + 5
            while True:
                got = [httpx.get(u, headers=headers, timeout=10).status_code for u in admin_reads]
                if set(got) == {want} or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert set(got) == {want}, dict(zip(admin_reads, got, strict=True))

        answers(frank, 200)
        assert cli("operators", "revoke", "frank").returncode == 0
        answers(frank, 401)
        answers(mine, 200)
        # E-mail goes over real SMTP to the stack's own sink, which keeps it as a file.
        sub = httpx.post(f"{url}/v1/subscriptions", headers={"Authorization": f"Bearer {key}"},
                         json={"channel": "email", "emails": ["demo@example.com"]}, timeout=10)
        assert sub.status_code == 201, sub.text
        ping = httpx.post(f"{url}/v1/subscriptions/{sub.json()['id']}/ping",
                          headers={"Authorization": f"Bearer {key}"}, timeout=10)
        assert ping.status_code == 202, ping.text
        mail_dir = stack_home / "run" / "mail"
        assert str(mail_dir) in up.stdout
        deadline = time.monotonic() + 20
        while not list(mail_dir.glob("*.eml")) and time.monotonic() < deadline:
            time.sleep(0.2)
        [mail] = list(mail_dir.glob("*.eml"))
        assert b"demo@example.com" in mail.read_bytes()
        again = stack("up")
        assert again.returncode == 0 and "already running" in again.stdout and key in again.stdout
        assert stack("status").returncode == 0
        state = json.loads((stack_home / "run" / "stack.json").read_text())
        pids = [p["pid"] for p in state["processes"].values()]
        assert set(state["processes"]) == {"kafka", "postgres", "mailsink", "issuer", "taxstore", "sync",
                                             "reconciler", "notifier", "supervisor"}
    finally:
        down = stack("down")
    assert down.returncode == 0, down.stdout + down.stderr
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(port_is_open(p) for p in ports.values()):
        time.sleep(0.2)
    assert not [p for p in ports.values() if port_is_open(p)], "no port of the stack still listens"
    assert not [p for p in pids if pid_alive(p)], "no process of the stack is left"
    assert stack("status").returncode == 3


def test_stack_up_puts_exported_secrets_in_force_and_rewrites_the_files(stack_home):
    """FAPIAO_ADMIN_TOKEN and FAPIAO_SECRETS_KEY exported before `make up` win over what an earlier run left in
    .run/ (and over generating new ones): the services run with them, and the files are rewritten to match."""
    ports = {name: free_port() for name in (
        "FAPIAO_KAFKA_PORT", "FAPIAO_KAFKA_CONTROLLER_PORT", "FAPIAO_PG_PORT", "FAPIAO_ISSUER_PORT",
        "FAPIAO_TAXSTORE_PORT", "FAPIAO_SYNC_PORT", "FAPIAO_RECONCILER_PORT", "FAPIAO_NOTIFIER_PORT",
        "FAPIAO_SMTP_PORT")}
    run = stack_home / "run"
    run.mkdir()
    (run / "admin-token").write_text("token-of-an-earlier-run-" + "0" * 20 + "\n")
    (run / "secrets-key").write_text("key-of-an-earlier-run-" + "0" * 32 + "\n")
    token, key = "exported-admin-token-" + os.urandom(12).hex(), "exported-secrets-key-" + os.urandom(16).hex()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAPIAO_")}
    env.update({k: str(v) for k, v in ports.items()}, FAPIAO_STACK_DIR=str(run), FAPIAO_ADMIN_TOKEN=token,
               FAPIAO_SECRETS_KEY=key)

    def stack(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "fapiao.stack", *args], env={**env, **extra},
                              capture_output=True, text=True, timeout=240, cwd=REPO)

    try:
        up = stack("up")
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"Admin token: from FAPIAO_ADMIN_TOKEN in your environment, in {run / 'admin-token'}" in up.stdout
        assert "Webhook secrets key: from FAPIAO_SECRETS_KEY in your environment" in up.stdout
        assert token not in up.stdout and key not in up.stdout, "secrets are not printed"
        assert "can no longer be decrypted" in up.stderr, "replacing the secrets key is said"
        assert (run / "admin-token").read_text().strip() == token
        assert (run / "secrets-key").read_text().strip() == key
        assert f"FAPIAO_ADMIN_TOKEN={token}" in (run / "stack.env").read_text().splitlines()
        mine = (run / "operator-token").read_text()
        issuer = f"http://127.0.0.1:{ports['FAPIAO_ISSUER_PORT']}"
        ask = f"{issuer}/admin/invoices?number=26000000000000000001"
        assert httpx.get(ask, headers={"Authorization": f"Bearer {token}"}, timeout=10).status_code == 200
        earlier = "token-of-an-earlier-run-" + "0" * 20
        assert httpx.get(ask, headers={"Authorization": f"Bearer {earlier}"}, timeout=10).status_code == 401
        for name in ("reconciler", "sync", "taxstore", "notifier"):  # one token for every service
            url = f"http://127.0.0.1:{ports[f'FAPIAO_{name.upper()}_PORT']}/admin/status"
            if name == "taxstore":
                url = url.replace("/admin/status", "/admin/faults")
            assert httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10).status_code == 200, name
        state = json.loads((run / "stack.json").read_text())
        notifier_env = Path(f"/proc/{state['processes']['notifier']['pid']}/environ").read_bytes().split(b"\0")
        assert f"FAPIAO_SECRETS_KEY={key}".encode() in notifier_env

        # Another token exported while the stack runs is not silently taken for the one in force.
        again = stack("up", FAPIAO_ADMIN_TOKEN="yet-another-token-" + "1" * 20)
        assert again.returncode == 0 and "already running" in again.stdout
        assert "FAPIAO_ADMIN_TOKEN in your environment is not the one the running stack uses" in again.stderr
        assert (run / "admin-token").read_text().strip() == token
    finally:
        down = stack("down")
    assert down.returncode == 0, down.stdout + down.stderr

    # Nothing exported: the token of the earlier run is kept, and the summary says so.
    del env["FAPIAO_ADMIN_TOKEN"], env["FAPIAO_SECRETS_KEY"]
    try:
        kept = stack("up")
        assert kept.returncode == 0, kept.stdout + kept.stderr
        assert f"Admin token: kept from an earlier run, in {run / 'admin-token'}" in kept.stdout
        assert (run / "admin-token").read_text().strip() == token
        # The operator made for you is kept too: the same token, still one entry.
        assert (run / "operator-token").read_text() == mine and len((run / "operators").read_text().splitlines()) == 2
    finally:
        assert stack("down").returncode == 0


def _spaced_ports(count: int, replicas: int) -> list[int]:
    """`count` free base ports whose replica ports (base + 10·i, i = 1..replicas) are free too."""
    out: list[int] = []
    while len(out) < count:
        base = free_port()
        if base + 10 * replicas < 65536 and not any(port_is_open(base + 10 * i) for i in range(replicas + 1)) \
                and not set(range(base, base + 10 * replicas + 1, 10)) & {q + 10 * i for q in out
                                                                         for i in range(replicas + 1)}:
            out.append(base)
    return out


def test_stack_up_with_replicas_balances_restarts_one_or_all_and_down_stops_every_one(stack_home):
    """FAPIAO_REPLICAS: each replica its own process, port, log and pid; the service's port balances over them, a
    replica killed with -9 is skipped by the balancer and started again by the supervisor; `restart sync-2` restarts
    one, `restart sync` every one; `down` stops them all."""
    names = ("FAPIAO_KAFKA_PORT", "FAPIAO_KAFKA_CONTROLLER_PORT", "FAPIAO_PG_PORT", "FAPIAO_ISSUER_PORT",
             "FAPIAO_TAXSTORE_PORT", "FAPIAO_SYNC_PORT", "FAPIAO_RECONCILER_PORT", "FAPIAO_NOTIFIER_PORT",
             "FAPIAO_SMTP_PORT")
    ports = dict(zip(names, _spaced_ports(len(names), 2), strict=True))
    run = stack_home / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAPIAO_")}
    env.update({k: str(v) for k, v in ports.items()}, FAPIAO_STACK_DIR=str(run), FAPIAO_REPLICAS="issuer=2,sync=2")

    def stack(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "fapiao.stack", *args], env=env, capture_output=True,
                              text=True, timeout=240, cwd=REPO)

    def procs() -> dict[str, dict]:
        return json.loads((run / "stack.json").read_text())["processes"]

    pids: list[int] = []
    try:
        up = stack("up")
        assert up.returncode == 0, up.stdout + up.stderr
        url, sync_port = f"http://127.0.0.1:{ports['FAPIAO_ISSUER_PORT']}", ports["FAPIAO_SYNC_PORT"]
        assert "2 replicas (issuer-1, issuer-2)" in up.stdout and "2 replicas (sync-1, sync-2)" in up.stdout
        recorded = procs()
        assert {"issuer-1", "issuer-2", "sync-1", "sync-2", "balancer", "reconciler", "notifier"} <= set(recorded)
        assert recorded["sync-2"]["ports"] == [sync_port + 20] and recorded["sync-2"]["log"].endswith("sync-2.log")
        status = stack("status")
        assert status.returncode == 0 and status.stdout.count(" ready ") >= 7, status.stdout
        key = (run / "demo-api-key").read_text().strip()
        auth = {"Authorization": f"Bearer {key}"}
        r = httpx.post(f"{url}/v1/invoices", json=factories.invoice("91310115MA1K4DEM05"), headers=auth)
        assert r.status_code == 201, r.text
        deadline = time.monotonic() + 40
        while httpx.get(f"{url}/v1/invoices/{r.json()['id']}", headers=auth).json()["status"] != "confirmed":
            assert time.monotonic() < deadline, "not confirmed through two issuers and two syncs"
            time.sleep(0.3)

        os.killpg(recorded["issuer-1"]["pid"], 9)  # once gone, the balancer skips it; the supervisor brings it back
        deadline = time.monotonic() + 10
        while port_is_open(ports["FAPIAO_ISSUER_PORT"] + 10) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(httpx.get(f"{url}/readyz", timeout=5).status_code == 200 for _ in range(4))
        deadline = time.monotonic() + 30
        while procs()["issuer-1"]["restarts"] < 1 or stack("status").returncode != 0:
            assert time.monotonic() < deadline, stack("status").stdout
            time.sleep(0.5)

        before = procs()
        assert stack("restart", "sync-2").returncode == 0
        after = procs()
        assert after["sync-1"]["pid"] == before["sync-1"]["pid"] and after["sync-2"]["pid"] != before["sync-2"]["pid"]
        again = stack("restart", "sync")
        assert again.returncode == 0, again.stdout + again.stderr
        final = procs()
        assert final["sync-1"]["pid"] != after["sync-1"]["pid"] and final["sync-2"]["pid"] != after["sync-2"]["pid"]
        assert stack("restart", "sync-3").returncode == 2
        pids = [p["pid"] for p in final.values()]
    finally:
        down = stack("down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert pids and not [p for p in pids if pid_alive(p)], "no process of the stack is left"
