"""A deployment with several replicas of a service: every service a real process (the issuer too), on a database
and topic prefix of their own, so a test can start two of sync, the reconciler, the notifier or the issuer side by
side the way `FAPIAO_REPLICAS` does for `make up`.

    deployment = plan_replicas(infra, database_url, {"sync": 2, "reconciler": 2, "notifier": 2, "issuer": 2})
    deployment.start()
    ...
    deployment.stop()

Replicas of one service share its consumer groups (Kafka splits the partitions between them) and its schema
(advisory locks and leases decide who does what must run once). Each replica has its own port and log.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx

from fapiao.infra import ServiceProcess
from tests.harness.infra import ADMIN, Infra
from tests.harness.issuer import Tenant
from tests.harness.pipelines import NOTIFIER_ENV, RECONCILER_ENV, SYNC_ENV, start_all, stop_all
from tests.harness.polling import metric
from tests.harness.processes import process_env, service_process

__all__ = ["REPLICATED", "Deployment", "plan_replicas"]

REPLICATED = ("issuer", "sync", "reconciler", "notifier")
ISSUER_ENV = dict(
    FAPIAO_RELAY_POLL_INTERVAL="0.3", FAPIAO_KAFKA_PARTITIONS="3", FAPIAO_IDEMPOTENCY_WAIT_SECONDS="3",
    FAPIAO_OPS_SAMPLE_INTERVAL="1", FAPIAO_SELF_CHECK_INTERVAL="2", FAPIAO_SELF_CHECK_GRACE="5",
)
_ENV = {"issuer": ISSUER_ENV, "sync": SYNC_ENV, "reconciler": RECONCILER_ENV, "notifier": NOTIFIER_ENV}


@dataclass
class Deployment:
    """The tax store (one) and `replicas[name]`, the processes of each replicated service, in start order."""

    prefix: str
    database_url: str
    taxstore: ServiceProcess
    replicas: dict[str, list[ServiceProcess]]
    admin: dict[str, str] = field(default_factory=lambda: dict(ADMIN))

    @property
    def all(self) -> list[ServiceProcess]:
        return [self.taxstore, *(p for name in REPLICATED for p in self.replicas[name])]

    def start(self, timeout: float = 90) -> None:
        """Start whatever is not running (all side by side) and wait until each is ready."""
        start_all(self.all, timeout)

    def stop(self) -> None:
        stop_all(self.all)

    def __getitem__(self, name: str) -> list[ServiceProcess]:
        return self.replicas[name]

    async def relay_leaders(self, name: str) -> list[ServiceProcess]:
        """The running replicas of `name` that say (fapiao_outbox_relay_leader) they relay the outbox now."""
        out = []
        for p in self.replicas[name]:
            if p.running:
                try:
                    if await metric(p.url, "fapiao_outbox_relay_leader", service=name) == 1:
                        out.append(p)
                except httpx.HTTPError:
                    continue
        return out

    async def new_tenant(self, name: str = "多副本测试 Replica Test Co.") -> Tenant:
        """A tenant (through the first issuer) whose seller is registered at the tax store."""
        from tests.factories import uscc

        async with httpx.AsyncClient(timeout=30) as c:
            r = await c.post(f"{self.replicas['issuer'][0].url}/admin/tenants",
                             json={"name": name, "tax_id": uscc()}, headers=self.admin)
            assert r.status_code == 201, r.text
            body = r.json()
            r = await c.put(f"{self.taxstore.url}/admin/sellers/{body['tax_id']}", json={"name": name},
                            headers=self.admin)
            assert r.status_code in (200, 201), r.text
        return Tenant(body["id"], body["tax_id"], {"Authorization": f"Bearer {body['api_key']}"})

    async def faults(self, **values: object) -> dict:
        async with httpx.AsyncClient(timeout=10) as c:
            r = await c.put(f"{self.taxstore.url}/admin/faults", json=values, headers=self.admin)
        assert r.status_code == 200, r.text
        return r.json()

    async def store_stats(self) -> dict:
        async with httpx.AsyncClient(timeout=10) as c:
            r = await c.get(f"{self.taxstore.url}/admin/stats", headers=self.admin)
        assert r.status_code == 200, r.text
        return r.json()


def plan_replicas(infra: Infra, database_url: str, counts: Mapping[str, int],
                  env: Mapping[str, Mapping[str, str]] | None = None) -> Deployment:
    """The processes of a deployment with `counts[name]` replicas of each of issuer, sync, reconciler and notifier
    (1 when not named), not started; `env[name]`: settings over the test defaults for that service's replicas.
    The issuers talk to the first replica of each of the others."""
    unknown = set(counts) - set(REPLICATED)
    if unknown:
        raise ValueError(f"replicas of {sorted(unknown)}: only {', '.join(REPLICATED)} run in replicas")
    env = env or {}
    prefix = f"x{uuid.uuid4().hex[:8]}."
    db = {"FAPIAO_DATABASE_URL": database_url}
    taxstore = service_process("taxstore", infra, env=process_env(infra, FAPIAO_REQUIRE_REGISTRATION="true", **db))
    replicas: dict[str, list[ServiceProcess]] = {}
    peers = {"FAPIAO_TAXSTORE_URL": taxstore.url}
    for name in ("sync", "reconciler", "notifier", "issuer"):
        replicas[name] = [
            service_process(name, infra, env=process_env(
                infra, **{**db, "FAPIAO_TOPIC_PREFIX": prefix, **peers, **_ENV[name], **env.get(name, {})}))
            for _ in range(counts.get(name, 1))
        ]
        peers[f"FAPIAO_{name.upper()}_URL"] = replicas[name][0].url
    return Deployment(prefix, database_url, taxstore, {n: replicas[n] for n in REPLICATED})
