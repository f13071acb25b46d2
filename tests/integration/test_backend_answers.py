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
from tests.conftest import REPO, ReconPipeline, process_env
from tests.steps import new_tenant

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
