"""A tenant's API keys over their life (admin API and `fapiao keys`): several at once, listed without the key,
revoked within a second on every issuer replica, rotated with an overlap after which the old key expires, and the time
each was last used."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import httpx

from fapiao.infra import free_port
from tests.harness import ADMIN, REPO, RunningIssuer, Tenant, eventually, process_env, running_issuer, serve_app
from tests.harness.infra import Infra


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _works(issuer: RunningIssuer, key: str) -> bool:
    r = await issuer.client.get("/v1/invoices", headers=_bearer(key), params={"limit": 1})
    assert r.status_code in (200, 401), r.text
    return r.status_code == 200


async def _keys(issuer: RunningIssuer, tenant: Tenant) -> list[dict]:
    r = await issuer.client.get(f"/admin/tenants/{tenant.id}/keys", headers=ADMIN)
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


async def test_several_keys_revocation_within_a_second_on_every_replica(issuer: RunningIssuer,
                                                                        tenant: Tenant) -> None:
    first = tenant.headers["Authorization"].removeprefix("Bearer ")
    r = await issuer.client.post(f"/admin/tenants/{tenant.id}/keys", headers=ADMIN, json={"label": "erp-prod"})
    assert r.status_code == 201, r.text
    second = r.json()
    assert second["key"].startswith("fsk_") and second["key_shown_once"] and second["state"] == "active"
    assert await _works(issuer, first) and await _works(issuer, second["key"])

    listed = await _keys(issuer, tenant)
    assert [k["label"] for k in listed] == ["default", "erp-prod"]
    assert all(k["state"] == "active" for k in listed)
    text = json.dumps(listed)
    assert first not in text and second["key"] not in text and "hash" not in text, "never a key in a listing"
    assert listed[1]["prefix"] == second["key"][:12]

    async with running_issuer(issuer.settings) as replica:  # a second issuer process on the same database
        assert await _works(replica, second["key"])
        r = await issuer.client.post(f"/admin/tenants/{tenant.id}/keys/{second['id']}/revoke", headers=ADMIN)
        assert r.status_code == 200 and r.json()["state"] == "revoked", r.text
        revoked_at = time.monotonic()

        async def refused_by_both() -> bool:
            return not await _works(replica, second["key"]) and not await _works(issuer, second["key"])

        # Each replica keeps a key it has just checked for FAPIAO_API_KEY_CACHE_SECONDS (1 s): no longer.
        await eventually(refused_by_both, timeout=5, interval=0.1)
        took = time.monotonic() - revoked_at
        assert took <= issuer.settings.api_key_cache_seconds + 0.5, took  # type: ignore[attr-defined]
        assert await _works(replica, first)
    again = await issuer.client.post(f"/admin/tenants/{tenant.id}/keys/{second['id']}/revoke", headers=ADMIN)
    assert again.status_code == 200 and again.json()["revoked_at"] == r.json()["revoked_at"], "revoking twice is one"
    rotate = await issuer.client.post(f"/admin/tenants/{tenant.id}/keys/{second['id']}/rotate", headers=ADMIN)
    assert rotate.status_code == 409 and rotate.json()["state"] == "revoked", rotate.text

    other = await issuer.new_tenant()
    theirs = await issuer.client.post(f"/admin/tenants/{other.id}/keys/{second['id']}/revoke", headers=ADMIN)
    assert theirs.status_code == 404, "a key is revoked through its own tenant only"
    assert (await issuer.client.get(f"/admin/tenants/{tenant.id}/keys")).status_code == 401


async def test_rotation_overlaps_then_the_old_key_expires(issuer: RunningIssuer, tenant: Tenant) -> None:
    old_key = tenant.headers["Authorization"].removeprefix("Bearer ")
    [old] = await _keys(issuer, tenant)
    r = await issuer.client.post(f"/admin/tenants/{tenant.id}/keys/{old['id']}/rotate", headers=ADMIN,
                                 json={"overlap_seconds": 2})
    assert r.status_code == 201, r.text
    new = r.json()
    assert new["label"] == "default" and new["replaces"]["id"] == old["id"] and new["replaces"]["expires_at"]
    assert await _works(issuer, new["key"]) and await _works(issuer, old_key), "both work during the overlap"
    twice = await issuer.client.post(f"/admin/tenants/{tenant.id}/keys/{old['id']}/rotate", headers=ADMIN)
    assert twice.status_code == 409 and twice.json()["state"] == "rotated", "one successor, not two"

    async def old_refused() -> bool:
        return not await _works(issuer, old_key)

    await eventually(old_refused, timeout=10, interval=0.2)
    assert await _works(issuer, new["key"])
    states = {k["id"]: k["state"] for k in await _keys(issuer, tenant)}
    assert states == {old["id"]: "expired", new["id"]: "active"}

    made = await issuer.client.post(f"/admin/tenants/{tenant.id}/keys", headers=ADMIN,
                                    json={"label": "short-lived", "expires_in_seconds": 60})
    assert made.status_code == 201 and made.json()["expires_at"], made.text
    bad = await issuer.client.post(f"/admin/tenants/{tenant.id}/keys", headers=ADMIN, json={"expires_in_seconds": 5})
    assert bad.status_code == 422 and bad.json()["errors"][0]["path"] == "expires_in_seconds", bad.text


async def test_last_used_is_kept_to_the_minute(issuer: RunningIssuer, tenant: Tenant) -> None:
    key = tenant.headers["Authorization"].removeprefix("Bearer ")
    [before] = await _keys(issuer, tenant)
    assert before["last_used_at"] is None
    assert await _works(issuer, key)
    [after] = await _keys(issuer, tenant)
    assert after["last_used_at"] is not None
    assert await _works(issuer, key)
    [still] = await _keys(issuer, tenant)
    assert still["last_used_at"] == after["last_used_at"], "one write a minute per key, not one per request"


async def test_the_keys_cli(infra: Infra, issuer: RunningIssuer, tenant: Tenant) -> None:
    port = free_port()
    server, task = await serve_app(issuer.app, port)
    env = process_env(infra, FAPIAO_ISSUER_URL=f"http://127.0.0.1:{port}")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "fapiao.cli", "keys", *args], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=60)

    try:
        made = await asyncio.to_thread(cli, "create", tenant.tax_id, "--label", "cli", "--expires-in", "90d", "--json")
        assert made.returncode == 0, made.stderr
        key = json.loads(made.stdout)
        assert key["label"] == "cli" and key["key"].startswith("fsk_") and key["expires_at"]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
            assert (await c.get("/v1/invoices", headers=_bearer(key["key"]))).status_code == 200
        table = await asyncio.to_thread(cli, "list", tenant.id)
        assert table.returncode == 0 and "cli" in table.stdout and key["key"] not in table.stdout, table.stdout
        rotated = await asyncio.to_thread(cli, "rotate", tenant.tax_id, key["id"], "--overlap", "0", "--json")
        assert rotated.returncode == 0, rotated.stderr
        assert json.loads(rotated.stdout)["replaces"]["id"] == key["id"]
        revoked = await asyncio.to_thread(cli, "revoke", tenant.id, json.loads(rotated.stdout)["id"])
        assert revoked.returncode == 0 and "revoked" in revoked.stdout, revoked.stderr
        missing = await asyncio.to_thread(cli, "list", "91110000MA00000000")
        assert missing.returncode == 1 and "no tenant" in missing.stderr
        bad = await asyncio.to_thread(cli, "create", tenant.id, "--expires-in", "soon")
        assert bad.returncode == 2 and "duration" in bad.stderr
    finally:
        server.should_exit = True  # type: ignore[attr-defined]
        await asyncio.wait_for(task, 10)
