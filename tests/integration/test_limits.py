"""Per-tenant limits on the issuer's /v1 API and per-subscription ping limits, against real PostgreSQL and Kafka:
429 problem+json with Retry-After and the RateLimit header fields, budgets that do not spend each other, the cap
on requests in flight, pings, the refusal metrics, and fairness: a flooding tenant does not move a quiet
tenant's p99 by more than 2x (the only timed assertion of the suite, asked for by the issue)."""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from fapiao.infra import free_port
from tests import factories
from tests.harness import (
    ADMIN,
    Infra,
    Receiver,
    ReconPipeline,
    RunningIssuer,
    Tenant,
    eventually,
    issuer_settings,
    metric,
    process_env,
    running_issuer,
    service_process,
)
from tests.harness.issuer import UNTHROTTLED
from tests.steps import new_tenant

TIGHT = {**UNTHROTTLED, "read_burst": 3, "read_rate": 0.2, "write_burst": 2, "write_rate": 0.2,
         "import_burst": 5, "import_rate": 0.5}


@pytest.fixture
async def tight(infra: Infra) -> AsyncIterator[RunningIssuer]:
    """An issuer of its own with small budgets (refilling slowly enough that a test sees them spent)."""
    async with running_issuer(issuer_settings(infra, **TIGHT)) as issuer:
        yield issuer


def rate_headers(r: httpx.Response) -> dict[str, str]:
    return {k: r.headers[k] for k in ("ratelimit-limit", "ratelimit-remaining", "ratelimit-reset", "ratelimit-policy")}


def refused_total(budget: str, reason: str, service: str = "issuer") -> float:
    from prometheus_client import REGISTRY

    value = REGISTRY.get_sample_value("fapiao_rate_limited_total",
                                      {"service": service, "budget": budget, "reason": reason})
    return value or 0.0


async def test_a_spent_read_budget_is_answered_429_with_retry_after_and_the_ratelimit_fields(
        tight: RunningIssuer) -> None:
    tenant = await tight.new_tenant()
    before = refused_total("read", "rate")
    seen = []
    for _ in range(3):
        r = await tight.client.get("/v1/invoices", headers=tenant.headers)
        assert r.status_code == 200, r.text
        seen.append(rate_headers(r))
    assert [h["ratelimit-remaining"] for h in seen] == ["2", "1", "0"]
    assert seen[0]["ratelimit-limit"] == "3" and seen[0]["ratelimit-policy"] == '3;w=15;comment="read"'
    refused = await tight.client.get("/v1/invoices", headers=tenant.headers)
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/problem+json"
    body = refused.json()
    assert body["code"] == "rate_limited" and body["budget"] == "read" and body["status"] == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 5 == math.ceil(1 / 0.2)
    assert body["retry_after_seconds"] == int(refused.headers["retry-after"])
    assert rate_headers(refused)["ratelimit-remaining"] == "0"
    assert 0 < int(refused.headers["ratelimit-reset"]) <= 15
    assert refused_total("read", "rate") == before + 1
    # The metric is exported without the tenant: budget and reason only.
    text = (await tight.client.get("/metrics")).text
    line = next(ln for ln in text.splitlines()
                if ln.startswith("fapiao_rate_limited_total{") and 'service="issuer"' in ln and 'budget="read"' in ln)
    assert "tenant" not in line and tenant.id not in text
    # Another tenant, and a caller without a key, are not held back by this tenant's budget.
    other = await tight.new_tenant()
    assert (await tight.client.get("/v1/invoices", headers=other.headers)).status_code == 200
    anonymous = await tight.client.get("/v1/invoices")
    assert anonymous.status_code == 401 and "ratelimit-limit" not in anonymous.headers


async def test_reads_writes_and_imports_spend_budgets_of_their_own_and_a_batch_weighs_its_invoices(
        tight: RunningIssuer) -> None:
    tenant = await tight.new_tenant()
    for _ in range(3):
        assert (await tight.client.get("/v1/subscriptions/" + str(uuid.uuid4()), headers=tenant.headers)
                ).status_code in (404, 503)
    assert (await tight.client.get("/v1/invoices", headers=tenant.headers)).status_code == 429
    # Reads are spent; writes are not.
    one = await tight.client.post("/v1/invoices", json=factories.invoice(tenant.tax_id), headers=tenant.headers)
    assert one.status_code == 201, one.text
    assert one.headers["ratelimit-policy"].endswith('comment="write"') and one.headers["ratelimit-remaining"] == "1"
    # A batch of three invoices takes three of the five import tokens; writes stay where they were.
    batch = await tight.client.post("/v1/invoices/batch", headers=tenant.headers,
                                    json={"invoices": [factories.invoice(tenant.tax_id) for _ in range(3)]})
    assert batch.status_code == 200, batch.text
    assert batch.headers["ratelimit-policy"] == '5;w=10;comment="import"'
    assert batch.headers["ratelimit-remaining"] == "2"
    again = await tight.client.post("/v1/invoices/batch", headers=tenant.headers,
                                    json={"invoices": [factories.invoice(tenant.tax_id) for _ in range(3)]})
    assert again.status_code == 429 and again.json()["budget"] == "import"
    assert int(again.headers["retry-after"]) == 2  # one invoice short at 0.5 per second
    # A CSV import weighs its lines after the header: two rows fit the two tokens left... after the refusal,
    # which took nothing.
    csv = "number,kind\n1,special\n2,special\n"
    imported = await tight.client.post("/v1/invoices/import", content=csv.encode(),
                                       headers={**tenant.headers, "Content-Type": "text/csv"})
    assert imported.headers["ratelimit-policy"].endswith('comment="import"'), imported.text
    assert imported.headers["ratelimit-remaining"] == "0"
    # The second write still passes: nothing of the reads or imports came out of it.
    two = await tight.client.post("/v1/invoices", json=factories.invoice(tenant.tax_id), headers=tenant.headers)
    assert two.status_code == 201 and two.headers["ratelimit-remaining"] == "0"
    third = await tight.client.post("/v1/invoices", json=factories.invoice(tenant.tax_id), headers=tenant.headers)
    assert third.status_code == 429 and third.json()["budget"] == "write"


async def test_a_refused_body_is_charged_once_and_a_spent_budget_is_said_before_the_body_is_judged(
        tight: RunningIssuer) -> None:
    tenant = await tight.new_tenant()
    invalid = await tight.client.post("/v1/invoices", json={"number": "x"}, headers=tenant.headers)
    assert invalid.status_code == 422 and invalid.headers["ratelimit-remaining"] == "1", "charged once, not twice"
    malformed = await tight.client.post("/v1/invoices", content=b"{not json",
                                        headers={**tenant.headers, "Content-Type": "application/json"})
    assert malformed.status_code == 400 and malformed.headers["ratelimit-remaining"] == "0"
    spent = await tight.client.post("/v1/invoices", content=b"{not json",
                                    headers={**tenant.headers, "Content-Type": "application/json"})
    assert spent.status_code == 429 and spent.json()["code"] == "rate_limited"


class Stall:
    """A backend on loopback that holds every request until let go: requests in flight for as long as a test
    wants. Answers an empty case list."""

    def __init__(self) -> None:
        self.port = free_port()
        self.go = asyncio.Event()
        self.waiting = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        status, body = b"404 Not Found", b'{"detail": "no"}'
        if head.startswith(b"GET /admin/cases"):  # the cases list; anything else (the schedule) is answered now
            self.waiting += 1
            await self.go.wait()
            status, body = b"200 OK", b'{"items": []}'
        writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
        await writer.drain()
        writer.close()


async def test_the_in_flight_cap_refuses_a_tenants_extra_request_and_frees_its_slot_with_each_answer(
        infra: Infra) -> None:
    stall = Stall()
    server = await asyncio.start_server(stall.handle, "127.0.0.1", stall.port)
    settings = issuer_settings(infra, tenant_concurrency=2, reconciler_url=f"http://127.0.0.1:{stall.port}")
    before = refused_total("read", "concurrency")
    try:
        async with running_issuer(settings) as issuer:
            tenant, other = await issuer.new_tenant(), await issuer.new_tenant()
            held = [asyncio.create_task(issuer.client.get("/v1/cases", headers=tenant.headers)) for _ in range(2)]
            await eventually(lambda: stall.waiting == 2, timeout=10, interval=0.02)
            busy = await issuer.client.post("/v1/invoices", json=factories.invoice(tenant.tax_id),
                                            headers=tenant.headers)
            assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
            body = busy.json()
            assert body["code"] == "too_many_concurrent" and body["limit"] == 2 and body["budget"] == "write"
            assert "ratelimit-limit" in busy.headers
            assert refused_total("write", "concurrency") >= 1
            # Another tenant is not held back by this one's requests in flight.
            assert (await issuer.client.get("/v1/invoices", headers=other.headers)).status_code == 200
            stall.go.set()
            assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200]
            assert (await issuer.client.get("/v1/invoices", headers=tenant.headers)).status_code == 200
            assert refused_total("read", "concurrency") == before
    finally:
        server.close()
        await server.wait_closed()


async def test_pings_are_limited_per_subscription(recon_pipeline: ReconPipeline, receiver: Receiver) -> None:
    p = recon_pipeline
    p.start_own("notifier", FAPIAO_PING_LIMIT="3")
    tenant: Tenant = await new_tenant(p)
    hooks = []
    for _ in range(2):
        r = await p.issuer.client.post("/v1/subscriptions", headers=tenant.headers,
                                       json={"channel": "webhook", "url": receiver.url(f"/hooks/{uuid.uuid4().hex}")})
        assert r.status_code == 201, r.text
        hooks.append(r.json()["id"])
    before = await metric(p.notifier.url, "fapiao_rate_limited_total", service="notifier", budget="ping")
    for _ in range(3):
        r = await p.issuer.client.post(f"/v1/subscriptions/{hooks[0]}/ping", headers=tenant.headers)
        assert r.status_code == 202, r.text
    refused = await p.issuer.client.post(f"/v1/subscriptions/{hooks[0]}/ping", headers=tenant.headers)
    assert refused.status_code == 429 and refused.headers["content-type"] == "application/problem+json"
    body = refused.json()
    assert body["code"] == "rate_limited" and body["budget"] == "ping" and body["limit"] == 3
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    # The issuer's own budget fields ride along (the request was within them).
    assert refused.headers["ratelimit-policy"].endswith('comment="write"')
    assert (await p.issuer.client.post(f"/v1/subscriptions/{hooks[1]}/ping", headers=tenant.headers)
            ).status_code == 202, "another subscription has its own limit"
    after = await metric(p.notifier.url, "fapiao_rate_limited_total", service="notifier", budget="ping")
    assert after == before + 1
    history = await p.issuer.client.get("/v1/notifications", headers=tenant.headers, params={"limit": 200})
    assert len(history.json()["items"]) == 4, "the refused ping was not queued"


# --- fairness ------------------------------------------------------------------------------------------------

FLOOD = textwrap.dedent("""
    import asyncio, collections, json, sys, time
    import httpx

    async def main(url, key, total, concurrency):
        counts = collections.Counter()
        left = iter(range(total))
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": "Bearer " + key}, timeout=60,
                                     limits=httpx.Limits(max_connections=concurrency)) as c:
            async def worker():
                for _ in left:
                    try:
                        r = await c.get("/v1/invoices")
                    except httpx.HTTPError as exc:
                        counts[type(exc).__name__] += 1
                    else:
                        counts[r.status_code] += 1
            print("started", flush=True)
            t0 = time.monotonic()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        print(json.dumps({"elapsed_s": round(time.monotonic() - t0, 2), "statuses": counts}), flush=True)

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
""")


SLACK = 0.05  # seconds: scheduling noise of a loaded 2-core machine, not the flood


def cpu_seconds(pid: int | None) -> float:
    """CPU seconds (user + system) the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


async def quiet_latencies(client: httpx.AsyncClient, tenant: dict, *, every: float,
                          until: Callable[[int], bool]) -> list[float]:
    """One request every `every` seconds (open loop, one at a time is enough at this rate) until `until()`."""
    out: list[float] = []
    due = time.monotonic()
    while not until(len(out)):
        due += every
        t0 = time.perf_counter()
        r = await client.get("/v1/invoices", params={"limit": 10}, headers=tenant["headers"])
        out.append(time.perf_counter() - t0)
        assert r.status_code == 200, r.text
        await asyncio.sleep(max(0.0, due - time.monotonic()))
    return out


async def test_a_flooding_tenant_does_not_move_a_quiet_tenants_p99_by_more_than_twice(infra: Infra) -> None:
    """The issuer as its own process, with its default limits; a flood of 2,000 list requests 50 at a time from
    another process; the quiet tenant's small lists (8 a second, within its own read budget) from this one,
    measured before, during and after the flood."""
    env = process_env(infra, FAPIAO_TOPIC_PREFIX=f"f{uuid.uuid4().hex[:8]}.", FAPIAO_LOG_LEVEL="WARNING",
                      FAPIAO_SELF_CHECK_INTERVAL="3600", FAPIAO_KAFKA_PARTITIONS="3",
                      **{f"FAPIAO_{n}_URL": f"http://127.0.0.1:{free_port()}"
                         for n in ("RECONCILER", "NOTIFIER", "TAXSTORE", "SYNC")})
    proc = service_process("issuer", infra, env=env)
    proc.start()
    try:
        async with httpx.AsyncClient(base_url=proc.url, timeout=30) as client:
            tenants = []
            for name in ("flood", "quiet"):
                r = await client.post("/admin/tenants", json={"name": name, "tax_id": factories.uscc()}, headers=ADMIN)
                assert r.status_code == 201, r.text
                body = r.json()
                tenants.append({"key": body["api_key"], "tax_id": body["tax_id"],
                                "headers": {"Authorization": f"Bearer {body['api_key']}"}})
            flood, quiet = tenants
            for t, n in ((flood, 300), (quiet, 20)):
                r = await client.post("/v1/invoices/batch", headers=t["headers"],
                                      json={"invoices": [factories.invoice(t["tax_id"]) for _ in range(n)]})
                assert r.status_code == 200, r.text[:300]
            await quiet_latencies(client, quiet, every=0.125, until=lambda n: n >= 10)  # warm up
            c0, t0 = cpu_seconds(proc.pid), time.monotonic()
            before = await quiet_latencies(client, quiet, every=0.125, until=lambda n: n >= 120)
            busy_alone = (cpu_seconds(proc.pid) - c0) / (time.monotonic() - t0)
            # At the lowest CPU priority: a real flood comes from elsewhere, and what is measured is how the issuer
            # shares itself out, not how two cores are shared between it and the flood's own client.
            flooder = await asyncio.create_subprocess_exec(
                "nice", "-n", "19", sys.executable, "-c", FLOOD, proc.url, flood["key"], "2000", "50",
                stdout=asyncio.subprocess.PIPE)
            try:
                assert flooder.stdout is not None
                assert (await flooder.stdout.readline()).strip() == b"started"
                started, c0 = time.monotonic(), cpu_seconds(proc.pid)
                during = await quiet_latencies(client, quiet, every=0.125,
                                               until=lambda n: flooder.returncode is not None or n >= 1200
                                               or time.monotonic() - started > 60)
                busy_flood = (cpu_seconds(proc.pid) - c0) / (time.monotonic() - started)
                report = json.loads(await asyncio.wait_for(flooder.stdout.read(), 120))
            finally:
                if flooder.returncode is None:
                    flooder.kill()
                await flooder.wait()
            # Without the flood again, right after it: the machine's own load changes in the meantime, and both
            # sides of the comparison should see the same.
            after = await quiet_latencies(client, quiet, every=0.125, until=lambda n: n >= 120)
            frozen = await metric(proc.url, "fapiao_gc_frozen_objects", service="issuer")
            young = await metric(proc.url, "fapiao_gc_pause_seconds_count", service="issuer", generation="0")
            full = [await metric(proc.url, f"fapiao_gc_pause_seconds_{k}", service="issuer", generation="2")
                    for k in ("count", "sum")]
    finally:
        proc.stop()
    alone = before + after
    base, flooded = p99(alone), p99(during)
    print(f"\nfairness: quiet tenant p99 without the flood {base * 1000:.1f} ms ({len(alone)} requests: "
          f"{p99(before) * 1000:.1f} ms before, {p99(after) * 1000:.1f} ms after), during the flood "
          f"{flooded * 1000:.1f} ms ({len(during)} requests; median {sorted(during)[len(during) // 2] * 1000:.1f} ms, "
          f"max {max(during) * 1000:.1f} ms); flood {report}; issuer CPU {busy_alone:.0%} alone, "
          f"{busy_flood:.0%} during the flood")
    statuses = {(int(k) if k.isdigit() else k): v for k, v in report["statuses"].items()}
    assert sum(statuses.values()) == 2000 and statuses.get(200, 0) + statuses.get(429, 0) >= 1980, statuses
    assert statuses.get(429, 0) > 0, "the flood was held back"
    assert len(during) >= 50, "the quiet tenant was measured while the flood ran"
    # What start-up left behind is out of the collector's reach (a full collection walked it all: ~0.1 s).
    print(f"gc: {frozen:,.0f} objects frozen after start-up; {full[0]:.0f} full collections, {full[1] * 1000:.1f} ms "
          "in all")
    assert frozen > 100_000, frozen
    assert young > 0, "collections are timed"
    assert flooded <= 2 * base + SLACK, f"p99 {flooded * 1000:.1f} ms during the flood, {base * 1000:.1f} ms alone"
