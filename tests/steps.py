"""Steps the pipeline tests share: a registered tenant, invoices issued in bulk, waiting for statuses."""

from __future__ import annotations

from typing import Any

import httpx

from tests import factories
from tests.harness import Pipeline, Tenant, eventually


async def new_tenant(pipeline: Pipeline, *, registered: bool = True, name: str = "同步测试 Sync Test Co.") -> Tenant:
    tenant = await pipeline.issuer.new_tenant(name)
    if registered:
        await pipeline.register(tenant.tax_id)
    return tenant


async def issue(pipeline: Pipeline, tenant: Tenant, n: int, *, chunk: int = 500) -> dict[str, str]:
    """Issue n invoices through the batch API; returns number -> invoice id."""
    ids: dict[str, str] = {}
    for start in range(0, n, chunk):
        docs = [factories.invoice(tenant.tax_id) for _ in range(min(chunk, n - start))]
        r = await pipeline.issuer.client.post("/v1/invoices/batch", json={"invoices": docs}, headers=tenant.headers)
        assert r.status_code == 200, r.text[:300]
        results = r.json()["results"]
        assert all(x["status"] == 201 for x in results), [x for x in results if x["status"] != 201][:3]
        ids.update({x["invoice"]["number"]: x["invoice"]["id"] for x in results})
    return ids


def _logs(pipeline: Pipeline) -> str:
    procs = [pipeline.sync, getattr(pipeline, "reconciler", None)]
    return "\n".join(f"--- {p.name} log tail:\n{p.log_text()[-2500:]}" for p in procs if p is not None)


async def until_all(pipeline: Pipeline, tenant: Tenant, status: str, n: int, timeout: float) -> dict[str, int]:
    """Wait until exactly n of the tenant's invoices show `status` in the issuer."""
    async def check() -> dict[str, int] | None:
        counts = await pipeline.statuses(tenant.id)
        return counts if counts.get(status) == n else None

    try:
        return await eventually(check, timeout=timeout, interval=0.25)
    except AssertionError:
        raise AssertionError(f"not all {n} invoices became {status}: {await pipeline.statuses(tenant.id)}\n"
                             f"{_logs(pipeline)}") from None


def delta(after: dict, before: dict, key: str) -> int:
    return int(after[key]) - int(before[key])


async def detail(pipeline: Pipeline, tenant: Tenant, invoice_id: str) -> dict:
    r = await pipeline.issuer.client.get(f"/v1/invoices/{invoice_id}", headers=tenant.headers)
    assert r.status_code == 200, r.text
    return r.json()


def problem(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The answer is a problem+json of this status and code; its body."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["code"] == code, body
    return body
