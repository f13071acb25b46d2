"""What the tenant hears when the issuer asks the reconciler on its behalf, with the real reconciler running:
months are checked the same way by the issuer, the reconciler and the CLI (shared.validators.parse_month),
and the reconciler's 4xx reaches the tenant as that very problem instead of a 503.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import httpx

from shared.validators import MONTH_RULE
from tests.harness import REPO, ReconPipeline, eventually, process_env
from tests.steps import issue, new_tenant, until_all

NOT_MONTHS = ("9999-12", "2100-12", "1900-01", "1999-12", "2026-13", "2026-00", "2026-1", "26-11", "november",
              "\uff12\uff10\uff12\uff16-11", "2026-11-01", "")


def _problem(r: httpx.Response) -> dict[str, Any]:
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    return {k: v for k, v in r.json().items() if k != "correlation_id"}


def _cli(p: ReconPipeline, *args: str) -> subprocess.CompletedProcess[str]:
    env = process_env(p.infra, FAPIAO_RECONCILER_URL=p.reconciler.url)
    return subprocess.run([sys.executable, "-m", "fapiao.cli", "summary", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=60)


async def test_months_are_checked_the_same_way_by_the_issuer_the_reconciler_and_the_cli(
        recon_pipeline: ReconPipeline) -> None:
    p = recon_pipeline
    tenant = await new_tenant(p)
    for month in NOT_MONTHS:
        direct = await p.recon("GET", "/admin/summary", params={"seller_tax_id": tenant.tax_id, "month": month})
        assert direct.status_code == 422, (month, direct.status_code, direct.text)  # 9999-12 was a 500
        assert _problem(direct)["errors"] == [{"path": "month", "reason": MONTH_RULE}], (month, direct.text)
        if month:  # (an empty path segment is another route)
            via = await p.issuer.client.get(f"/v1/summaries/{month}", headers=tenant.headers)
            assert via.status_code == 422, (month, via.status_code, via.text)  # 9999-12 was a 503
            assert _problem(via)["errors"] == [{"path": "month", "reason": MONTH_RULE}], (month, via.text)
    assert "2000-01" in MONTH_RULE and "2099-12" in MONTH_RULE, "the rule names its range"

    for month in ("2000-01", "2099-12"):  # the edges of the range are months
        direct = await p.recon("GET", "/admin/summary", params={"seller_tax_id": tenant.tax_id, "month": month})
        via = await p.issuer.client.get(f"/v1/summaries/{month}", headers=tenant.headers)
        assert (direct.status_code, via.status_code) == (200, 200), (month, direct.text, via.text)
        assert direct.json()["month"] == via.json()["month"] == month
        assert via.json()["matches"] is True and via.json()["ours"]["blue"]["count"] == 0

    for month in ("9999-12", "2100-12", "1900-01"):  # the CLI refuses them before asking anyone
        done = await asyncio.to_thread(_cli, p, "--month", month, "--tax-id", tenant.tax_id)
        assert done.returncode == 2, (month, done.stdout, done.stderr)
        assert "--month" in done.stderr and "2099-12" in " ".join(done.stderr.split()), done.stderr
        assert "Traceback" not in done.stderr
    edge = await asyncio.to_thread(_cli, p, "--month", "2099-12", "--tax-id", tenant.tax_id, "--json")
    assert edge.returncode == 0, edge.stderr  # an empty month matches
    assert '"month": "2099-12"' in edge.stdout


async def test_the_reconcilers_4xx_reaches_the_tenant_as_that_same_problem(recon_pipeline: ReconPipeline) -> None:
    p = recon_pipeline
    tenant = await new_tenant(p, registered=False)  # the authority rejects this seller's invoices
    [(number, iid)] = (await issue(p, tenant, 1)).items()
    await until_all(p, tenant, "rejected", 1, timeout=60)
    await eventually(lambda: _ledger_is(p, tenant.id, {"rejected": 1}), timeout=30)

    note = "买方查不到 the buyer cannot find it"
    via = await p.issuer.client.post(f"/v1/invoices/{iid}/cases", json={"note": note}, headers=tenant.headers)
    # The reconciler's own answer to the same question, asked directly with the admin token.
    direct = await p.recon("POST", "/admin/cases", json={"invoice_id": iid, "tenant_id": tenant.id,
                                                          "seller_tax_id": tenant.tax_id, "number": number,
                                                          "note": note})
    assert (via.status_code, direct.status_code) == (409, 409), (via.text, direct.text)
    assert "retry-after" not in via.headers, "a verdict on the request, not an outage"
    answer = _problem(via)
    assert answer == _problem(direct), "detail, code and every other member as the reconciler said them"
    assert answer["invoice_state"] == "rejected" and answer["code"] == "conflict"
    assert answer["detail"].startswith("the invoice is rejected: ") and "SELLER_NOT_REGISTERED" in answer["detail"]
    assert via.json()["correlation_id"] == via.headers["x-correlation-id"], "the issuer's own correlation id"
    view = (await p.issuer.client.get(f"/v1/invoices/{iid}", headers=tenant.headers)).json()
    assert view["case_no"] is None and "case_opened" not in [t["kind"] for t in view["timeline"]]

    # Only a reconciler that cannot answer (not reachable, timed out, 5xx) is a 503 with Retry-After.
    p.reconciler.stop()
    try:
        down = await p.issuer.client.get("/v1/summaries/2026-11", headers=tenant.headers)
        assert down.status_code == 503 and down.headers["retry-after"] == "5", down.text
        assert down.json()["detail"] == "the reconciler is not reachable right now; retry shortly"
    finally:
        p.reconciler.start()


async def _ledger_is(p: ReconPipeline, tenant_id: str, wanted: dict[str, int]) -> bool:
    return await p.ledger(tenant_id) == wanted
