"""Two replicas of every service on one database and topic prefix (real processes, real Kafka and PostgreSQL):
what must run once runs once, consumers split their partitions, and when the replica that relays an outbox is
killed with -9 another one takes over within the lease time. The tax store stays single: it is the authority.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator

import httpx
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from shared.consumers import NOTIFIER_ALERTS, RECONCILER_LEDGER, SYNC_SUBMIT, ConsumerGroup
from tests import factories
from tests.harness import Infra, Receiver, eventually, fresh_database
from tests.harness.replicas import Deployment, plan_replicas

RELAY_POLL = 0.3  # FAPIAO_RELAY_POLL_INTERVAL of every replica (tests/harness): a standby tries the lock this often
CHECK_LEASE = 5.0


@pytest.fixture
async def deployment(infra: Infra) -> AsyncIterator[Deployment]:
    database_url = await fresh_database(infra, f"replicas_{uuid.uuid4().hex[:8]}")
    d = plan_replicas(infra, database_url, {"issuer": 2, "sync": 2, "reconciler": 2, "notifier": 2}, env={
        "reconciler": {"FAPIAO_STUCK_AFTER": "3", "FAPIAO_CHECK_LEASE": str(CHECK_LEASE)},
        "notifier": {"FAPIAO_DIGEST_WINDOW": "0.5"},
    })
    try:
        d.start()
        yield d
    finally:
        d.stop()


@pytest.fixture
async def db(deployment: Deployment) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(deployment.database_url)
    yield engine
    await engine.dispose()


async def statuses(db: AsyncEngine, tenant_id: str) -> dict[str, int]:
    async with db.connect() as conn:
        rows = (await conn.execute(text("select status, count(*) from issuer.invoices where tenant_id = :t "
                                        "group by status"), {"t": tenant_id})).all()
    return {r[0]: int(r[1]) for r in rows}


async def until_all(db: AsyncEngine, tenant_id: str, status: str, n: int, timeout: float) -> None:
    async def check() -> bool:
        return (await statuses(db, tenant_id)).get(status) == n

    try:
        await eventually(check, timeout=timeout, interval=0.5)
    except AssertionError:
        raise AssertionError(f"not all {n} invoices became {status}: {await statuses(db, tenant_id)}") from None


async def group_members(bootstrap: str, group: ConsumerGroup, prefix: str) -> int:
    """How many consumers the group has now (DescribeGroups)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [response] = await admin.describe_consumer_groups([group.qualified(prefix)])
        [described] = response.groups
        return len(described[5])  # (error, group id, state, protocol type, protocol, members)
    finally:
        await admin.close()


async def issue_round_robin(d: Deployment, headers: dict[str, str], tax_id: str, n: int, *,
                            chunk: int = 40) -> dict[str, str]:
    """n invoices through the batch API, chunk by chunk to each issuer replica in turn: number -> id."""
    ids: dict[str, str] = {}
    issuers = d["issuer"]
    async with httpx.AsyncClient(timeout=60) as c:
        for i, start in enumerate(range(0, n, chunk)):
            docs = [factories.invoice(tax_id) for _ in range(min(chunk, n - start))]
            r = await c.post(f"{issuers[i % len(issuers)].url}/v1/invoices/batch", json={"invoices": docs},
                             headers=headers)
            assert r.status_code == 200, r.text[:300]
            results = r.json()["results"]
            assert all(x["status"] == 201 for x in results), [x for x in results if x["status"] != 201][:3]
            ids.update({x["invoice"]["number"]: x["invoice"]["id"] for x in results})
    return ids


async def listed(d: Deployment, seller: str) -> Counter[str]:
    """How many times the tax store lists each of the seller's numbers (pages through the listing)."""
    seen: Counter[str] = Counter()
    cursor = None
    async with httpx.AsyncClient(timeout=30) as c:
        while True:
            params = {"seller_tax_id": seller, "limit": 1000, **({"cursor": cursor} if cursor else {})}
            r = await c.get(f"{d.taxstore.url}/v1/invoices", params=params)
            assert r.status_code == 200, r.text
            body = r.json()
            seen.update(item["number"] for item in body["items"])
            cursor = body.get("next_cursor")
            if not cursor:
                return seen


def alerts_in(payload: dict) -> list[dict]:
    return payload["data"]["alerts"] if payload["type"] == "invoice.alerts.digest" else [payload["data"]]


async def kill_relay_owner(d: Deployment, name: str, *, timeout: float) -> tuple[str, float]:
    """kill -9 the replica of `name` that relays its outbox; returns (its log name, seconds until another replica
    said it leads)."""
    [owner] = await eventually(lambda: d.relay_leaders(name), timeout=15)
    owner.kill()
    killed = time.monotonic()
    [heir] = await eventually(lambda: d.relay_leaders(name), timeout=timeout, interval=0.05)
    assert heir is not owner
    return owner.log_path.name, time.monotonic() - killed


async def test_two_replicas_of_each_service_store_alert_and_open_cases_once_through_a_relay_owner_killed(
        deployment: Deployment, db: AsyncEngine, receiver: Receiver, infra: Infra) -> None:
    d, n = deployment, 240
    tenant = await d.new_tenant()
    path = f"/hooks/{uuid.uuid4().hex}"
    async with httpx.AsyncClient(timeout=30) as c:  # through the second issuer: it proxies to the notifier too
        r = await c.post(f"{d['issuer'][1].url}/v1/subscriptions", headers=tenant.headers,
                         json={"channel": "webhook", "url": receiver.url(path)})
        assert r.status_code == 201, r.text
    for group in (SYNC_SUBMIT, RECONCILER_LEDGER, NOTIFIER_ALERTS):  # both replicas are members of each group
        async def two(g: ConsumerGroup = group) -> bool:
            return await group_members(infra.kafka_bootstrap, g, d.prefix) == 2

        await eventually(two, timeout=30, interval=0.5)

    await d.faults(outage=True)
    ids = await issue_round_robin(d, tenant.headers, tenant.tax_id, n)
    # Mid-run, while the reconcilers check and open cases: the one relaying the reconciler's outbox (alerts, case
    # events, resync requests) dies; the other must take the relay within the lease time.
    await eventually(lambda: _some_stuck(db, tenant.id), timeout=60)
    killed, took = await kill_relay_owner(d, "reconciler", timeout=CHECK_LEASE)
    print(f"\nreconciler outbox relay: {killed} killed with -9, another replica relaying after {took:.2f}s")
    await until_all(db, tenant.id, "stuck", n, timeout=120)
    await d.faults(outage=False)
    await until_all(db, tenant.id, "confirmed", n, timeout=180)

    # Each invoice stored once, none the store holds that was not issued.
    times = await listed(d, tenant.tax_id)
    assert set(times) == set(ids) and set(times.values()) == {1}
    stats = await d.store_stats()
    assert stats["stored"] == n, stats
    # No case opened twice: one per invoice, each closed now.
    async with db.connect() as conn:
        cases = (await conn.execute(text("select invoice_id, count(*), count(*) filter (where status = 'open') "
                                         "from reconciler.cases where tenant_id = :t group by invoice_id"),
                                    {"t": tenant.id})).all()
    assert len(cases) == n and {(int(c[1]), int(c[2])) for c in cases} == {(1, 0)}
    # Every alert delivered once: a stuck and a recovered alert per invoice, none twice.
    expected = {(kind, number) for number in ids for kind in ("invoice.stuck", "invoice.recovered")}

    def delivered() -> Counter[tuple[str, str]]:
        return Counter((a["type"], a["number"]) for req in receiver.at(path) for a in alerts_in(req.json()))

    await eventually(lambda: set(delivered()) >= expected, timeout=60, interval=0.5)
    await asyncio.sleep(2)  # anything sent twice would arrive meanwhile
    twice = [k for k, times_ in delivered().items() if times_ > 1]
    assert not twice and set(delivered()) == expected, twice[:5]
    alert_ids = Counter(a["alert_id"] for req in receiver.at(path) for a in alerts_in(req.json()))
    assert len(alert_ids) == 2 * n and set(alert_ids.values()) == {1}


async def _some_stuck(db: AsyncEngine, tenant_id: str) -> bool:
    return (await statuses(db, tenant_id)).get("stuck", 0) > 0


async def test_a_standby_issuer_takes_the_outbox_relay_and_a_sync_replica_the_partitions_of_a_killed_one(
        deployment: Deployment, db: AsyncEngine, infra: Infra) -> None:
    d = deployment
    tenant = await d.new_tenant()
    ids = await issue_round_robin(d, tenant.headers, tenant.tax_id, 40)
    d["sync"][0].kill()  # under load: its partitions (and its leased retries) go to the other replica
    killed, took = await kill_relay_owner(d, "issuer", timeout=5)
    print(f"\nissuer outbox relay: {killed} killed with -9, another replica relaying after {took:.2f}s")
    assert took < 3, took
    # The survivor serves and relays: what the dead one accepted and what it takes now both get confirmed.
    [alive] = [p for p in d["issuer"] if p.running]
    async with httpx.AsyncClient(timeout=60) as c:
        docs = [factories.invoice(tenant.tax_id) for _ in range(40)]
        r = await c.post(f"{alive.url}/v1/invoices/batch", json={"invoices": docs}, headers=tenant.headers)
        assert r.status_code == 200
        ids.update({x["invoice"]["number"]: x["invoice"]["id"] for x in r.json()["results"]})
    await until_all(db, tenant.id, "confirmed", 80, timeout=120)

    async def one_member() -> bool:  # the killed replica leaves the group when its session times out (10 s)
        return await group_members(infra.kafka_bootstrap, SYNC_SUBMIT, d.prefix) == 1

    await eventually(one_member, timeout=30, interval=0.5)
    times = await listed(d, tenant.tax_id)
    assert set(times) == set(ids) and set(times.values()) == {1}
