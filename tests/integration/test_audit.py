"""Named operators and the audit log: each change an operator makes is recorded, by name, by the service that
made it, before the answer leaves; a call one service makes for a tenant or an operator says for whom; reads and
refused requests are not changes; `fapiao audit` merges every service's record."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import uuid

import httpx
import pytest

from shared.audit import Operators, parse_operator_tokens
from tests.factories import uscc
from tests.harness import ADMIN, REPO, Infra, ReconPipeline, issuer_settings, process_env, running_issuer

ALICE = "fop_alice-" + uuid.uuid4().hex
ENTRY = f"alice:{hashlib.sha256(ALICE.encode()).hexdigest()}"


def test_operator_entries_are_checked_and_tokens_identified() -> None:
    ops = Operators("the-services-token-xxxxxxxx", parse_operator_tokens(f" {ENTRY} ,"))
    assert ops.identify(ALICE) == "alice" and ops.identify("the-services-token-xxxxxxxx") == "admin"
    assert ops.identify(ALICE + "x") is None and ops.identify("") is None
    for bad in ("admin:" + "0" * 64, "Alice:" + "0" * 64, "bob:1234", f"{ENTRY},{ENTRY}"):
        with pytest.raises(ValueError):
            parse_operator_tokens(bad)


async def _audit(client: httpx.AsyncClient, base: str = "", **params: str) -> list[dict]:
    r = await client.get(f"{base}/admin/audit", headers=ADMIN, params=params)
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


async def test_an_operators_changes_are_recorded_by_name(infra: Infra) -> None:
    async with running_issuer(issuer_settings(infra, operator_tokens=ENTRY)) as issuer:
        alice = {"Authorization": f"Bearer {ALICE}", "User-Agent": "audit-test/1"}
        before = len(await _audit(issuer.client, actor="alice"))
        made = await issuer.client.post("/admin/tenants", headers=alice,
                                        json={"name": "审计 Audit Co.", "tax_id": uscc()})
        assert made.status_code == 201, made.text
        assert (await issuer.client.get("/admin/tenants", headers=alice)).status_code == 200  # a read
        wrong = await issuer.client.post("/admin/tenants", headers={"Authorization": "Bearer fop_nobody"},
                                         json={"name": "x", "tax_id": uscc()})
        assert wrong.status_code == 401
        rows = await _audit(issuer.client, actor="alice")
        assert len(rows) == before + 1, rows[:3]
        [row] = rows[:1]
        assert row["method"] == "POST" and row["path"] == "/admin/tenants" and row["status"] == 201
        assert row["service"] == "issuer" and row["user_agent"] == "audit-test/1" and row["correlation_id"]
        assert row["on_behalf_of"] is None and row["client"], row
        assert made.headers["x-correlation-id"] == row["correlation_id"]
        # A key rotated by alice is hers too; the answer's key is not in the record.
        tenant_id = made.json()["id"]
        keys = (await issuer.client.get(f"/admin/tenants/{tenant_id}/keys", headers=alice)).json()["items"]
        rotated = await issuer.client.post(f"/admin/tenants/{tenant_id}/keys/{keys[0]['id']}/rotate", headers=alice)
        assert rotated.status_code == 201
        latest = (await _audit(issuer.client, actor="alice"))[0]
        assert latest["path"].endswith("/rotate") and rotated.json()["key"] not in json.dumps(latest)
        # Someone claiming to act for a tenant, with an operator's own token: not believed.
        claimed = await issuer.client.post("/admin/tenants", headers={**alice, "X-Fapiao-On-Behalf-Of": "tenant:x"},
                                           json={"name": "Claim Co.", "tax_id": uscc()})
        assert claimed.status_code == 201
        assert (await _audit(issuer.client, actor="alice"))[0]["on_behalf_of"] is None


async def test_services_say_for_whom_and_the_cli_merges_them(recon_pipeline: ReconPipeline,
                                                            recon_issuer_http: str) -> None:
    p = recon_pipeline
    r = await p.issuer.client.post("/admin/tenants", headers=ADMIN, json={"name": "代办 Behalf Co.", "tax_id": uscc()})
    tenant_id, key = r.json()["id"], r.json()["api_key"]
    sub = await p.issuer.client.post("/v1/subscriptions", headers={"Authorization": f"Bearer {key}"},
                                     json={"channel": "email", "emails": ["audit@example.com"]})
    assert sub.status_code == 201, sub.text
    async with httpx.AsyncClient(timeout=10) as c:
        notes = await _audit(c, p.notifier.url)
        assert notes[0]["on_behalf_of"] == f"tenant:{tenant_id}" and notes[0]["actor"] == "admin", notes[0]
        assert notes[0]["path"] == f"/admin/tenants/{tenant_id}/subscriptions" and notes[0]["status"] == 201
        # An operator's drill through the dashboard: the store records it, for that operator.
        faults = await c.put(f"{recon_issuer_http}/ops/api/faults", headers=ADMIN, json={"latency_ms": 0})
        assert faults.status_code == 200, faults.text
        store = await _audit(c, p.taxstore.url)
        assert store[0]["path"] == "/admin/faults" and store[0]["on_behalf_of"] == "operator:admin", store[0]

    env = process_env(p.infra, FAPIAO_ISSUER_URL=recon_issuer_http, FAPIAO_RECONCILER_URL=p.reconciler.url,
                      FAPIAO_TAXSTORE_URL=p.taxstore.url, FAPIAO_NOTIFIER_URL=p.notifier.url,
                      FAPIAO_SYNC_URL=p.sync.url)
    done = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "fapiao.cli", "audit", "--json"],
                                   env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    merged = json.loads(done.stdout)
    assert merged["unavailable"] == []
    services = {i["service"] for i in merged["items"]}
    assert {"issuer", "notifier", "taxstore"} <= services, services
    times = [i["at"] for i in merged["items"]]
    assert times == sorted(times, reverse=True)


def _operators_cli(infra: Infra, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fapiao.cli", "operators", *args], env=process_env(infra), cwd=REPO,
                          capture_output=True, text=True, timeout=60)


async def _status_within(client: httpx.AsyncClient, token: str, want: int, *, seconds: float) -> float:
    """How long until the token gets `want` from an admin read (polled; fails after `seconds`)."""
    t0 = asyncio.get_running_loop().time()
    while True:
        r = await client.get("/admin/tenants", headers={"Authorization": f"Bearer {token}"})
        waited = asyncio.get_running_loop().time() - t0
        if r.status_code == want:
            return waited
        assert waited < seconds, f"still {r.status_code} after {waited:.1f} s, expected {want}"
        await asyncio.sleep(0.05)


async def test_operators_added_and_revoked_in_the_file_take_effect_without_a_restart(infra: Infra, tmp_path) -> None:
    path = tmp_path / "operators"
    made = await asyncio.to_thread(_operators_cli, infra, "add", "carol", "--file", str(path), "--json")
    assert made.returncode == 0, made.stderr
    carol = json.loads(made.stdout)["token"]
    assert carol not in path.read_text() and hashlib.sha256(carol.encode()).hexdigest() in path.read_text()
    async with running_issuer(issuer_settings(infra, operator_tokens_file=str(path))) as issuer:
        await _status_within(issuer.client, carol, 200, seconds=0.5)  # read at start
        r = await issuer.client.post("/admin/tenants", headers={"Authorization": f"Bearer {carol}"},
                                     json={"name": "文件 File Co.", "tax_id": uscc()})
        assert r.status_code == 201 and (await _audit(issuer.client, actor="carol"))[0]["path"] == "/admin/tenants"
        # A second operator, while the service runs: known within a second or so, no restart.
        dave_run = await asyncio.to_thread(_operators_cli, infra, "add", "dave", "--file", str(path), "--json")
        assert dave_run.returncode == 0, dave_run.stderr
        dave = json.loads(dave_run.stdout)["token"]
        await _status_within(issuer.client, dave, 200, seconds=3)
        again = await asyncio.to_thread(_operators_cli, infra, "add", "dave", "--file", str(path))
        assert again.returncode == 2 and "exists already" in again.stderr
        listed = await asyncio.to_thread(_operators_cli, infra, "list", "--file", str(path), "--json")
        assert json.loads(listed.stdout)["operators"] == ["carol", "dave"]
        # Revoked: refused within a second or so; the other operator is untouched.
        gone = await asyncio.to_thread(_operators_cli, infra, "revoke", "carol", "--file", str(path))
        assert gone.returncode == 0, gone.stderr
        await _status_within(issuer.client, carol, 401, seconds=3)
        assert (await issuer.client.get("/admin/tenants", headers={"Authorization": f"Bearer {dave}"})).status_code \
            == 200
        # A hand edit that breaks the file keeps the last good list (dave stays in, carol out), and says so.
        path.write_text(path.read_text() + "not an entry\n")
        await asyncio.sleep(1.2)
        assert (await issuer.client.get("/admin/tenants", headers={"Authorization": f"Bearer {dave}"})).status_code \
            == 200
        await _status_within(issuer.client, carol, 401, seconds=0.5)
        # The file removed: nobody from it is accepted any more (fail closed); the admin token still is.
        path.unlink()
        await _status_within(issuer.client, dave, 401, seconds=3)
        assert (await issuer.client.get("/admin/tenants", headers=ADMIN)).status_code == 200


def test_a_damaged_operators_file_stops_the_service_at_start(infra: Infra, tmp_path) -> None:
    path = tmp_path / "operators"
    path.write_text(f"# ours\n{ENTRY}\nbob:1234\n")
    with pytest.raises(ValueError, match="line 3"):
        issuer_settings(infra, operator_tokens_file=str(path))
    with pytest.raises(ValueError, match="cannot read it"):
        issuer_settings(infra, operator_tokens_file=str(tmp_path / "missing"))
    path.write_text(f"# ours\n{ENTRY}\n")
    assert Operators.from_settings(issuer_settings(infra, operator_tokens_file=str(path))).identify(ALICE) == "alice"
