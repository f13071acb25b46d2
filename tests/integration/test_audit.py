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
