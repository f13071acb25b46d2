"""Operations under a drill, seen three ways that must agree: the dashboard page in a real browser (Debian's
Chromium, driven by Playwright), the `fapiao` CLI as a separate process, and the services' own APIs.

The drill: 30 % silent drops first (every invoice still ends confirmed), then an outage at the tax store
switched on from the page itself. Invoices issued during it pile up in Kafka (sync lag grows), pass the stuck
limit (cases, alerts), and recover once the CLI lifts the outage: the lag falls back to zero.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Page, async_playwright
from playwright.async_api import TimeoutError as PlaywrightTimeout

from tests import steps
from tests.harness import ADMIN_TOKEN, ARTIFACTS, REPO, Receiver, ReconPipeline, eventually, process_env
from tests.steps import issue, new_tenant, until_all

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


def cli(p: ReconPipeline, issuer_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = process_env(p.infra, FAPIAO_ISSUER_URL=issuer_url, FAPIAO_RECONCILER_URL=p.reconciler.url,
                      FAPIAO_TAXSTORE_URL=p.taxstore.url, FAPIAO_NOTIFIER_URL=p.notifier.url)
    return subprocess.run([sys.executable, "-m", "fapiao.cli", *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=60)


async def cli_json(p: ReconPipeline, issuer_url: str, *args: str, code: int = 0) -> dict | list:
    done = await asyncio.to_thread(cli, p, issuer_url, *args, "--json")
    assert done.returncode == code, (args, done.stdout[-500:], done.stderr[-500:])
    return json.loads(done.stdout)


async def shown(page: Page) -> dict:
    """The overview the page rendered last (it keeps it on window.__fapiao)."""
    return await page.evaluate("window.__fapiao")


async def _sees(check) -> object:  # type: ignore[no-untyped-def]
    try:
        return await eventually(check, timeout=25, interval=0.3)
    except AssertionError:
        return None


async def _sampler_state(p: ReconPipeline) -> str:
    """What the issuer's sampler is doing, and what its database's sessions wait on (for a failure message)."""
    import time

    import asyncpg

    sampler = p.issuer.app.state.ops_sampler  # type: ignore[attr-defined]
    point = (sampler.latest or {}).get("point") or {}
    age = round(time.time() - point["t"], 1) if point.get("t") else None
    settings = p.issuer.settings
    url = str(settings.database_url).replace("postgresql+asyncpg", "postgresql")  # type: ignore[attr-defined]
    try:
        conn = await asyncpg.connect(url, timeout=5)
        try:
            rows = await conn.fetch("SELECT pid, usename, state, wait_event_type, wait_event, "
                                    "now() - xact_start AS xact, left(query, 120) AS q FROM pg_stat_activity "
                                    "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        finally:
            await conn.close()
        sessions = [dict(r) for r in rows]
    except Exception as exc:  # noqa: BLE001 - a diagnostic only
        sessions = [{"error": repr(exc)}]
    return f"sampler reading {age} s old, sessions {sessions}"


async def text(page: Page, testid: str) -> str:
    return (await page.locator(f"[data-testid={testid}]").first.inner_text()).strip()


async def test_a_drill_on_the_dashboard_and_the_cli(recon_pipeline: ReconPipeline, recon_issuer_http: str,
                                                    chromium: Path, receiver: Receiver) -> None:
    p = recon_pipeline
    p.start_own("reconciler", FAPIAO_STUCK_AFTER="4")
    # An open circuit stays open long enough (10–20 s) for the events issued meanwhile to pile up in Kafka.
    p.start_own("sync", FAPIAO_BREAKER_BASE="10", FAPIAO_BREAKER_CAP="20", FAPIAO_BREAKER_THRESHOLD="2")
    tenant = await new_tenant(p, name="驾驶舱演练 Drill Co.")
    await p.issuer.client.post("/v1/subscriptions", headers=tenant.headers,
                               json={"channel": "webhook", "url": receiver.url(f"/hooks/{uuid.uuid4().hex}")})
    shots = ARTIFACTS / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)

    # Phase 1: silent drops, set with the CLI. Every dropped invoice is found and resynced.
    faults = await cli_json(p, recon_issuer_http, "faults", "set", "drop_rate=0.3", "seed=3")
    assert faults["drop_rate"] == 0.3
    await issue(p, tenant, 60)
    await until_all(p, tenant, "confirmed", 60, timeout=90)

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(chromium), headless=True, args=CHROMIUM_FLAGS)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1800})
            await page.goto(f"{recon_issuer_http}/ops")
            await page.fill("[data-testid=token]", ADMIN_TOKEN)
            await page.click("[data-testid=sign-in]")
            await page.wait_for_function("window.__fapiao !== undefined", timeout=15_000)
            await page.select_option("[data-testid=tenant-filter]", tenant.id)
            await page.wait_for_function(f"window.__fapiao && window.__fapiao.tenant_id === '{tenant.id}'",
                                         timeout=15_000)
            assert await text(page, "total") == "60" and await text(page, "count-confirmed") == "60"
            assert (await p.statuses(tenant.id)) == {"confirmed": 60}
            assert await page.locator("[data-testid=svc-taxstore]").get_attribute("data-ready") == "true"
            assert float(await page.locator("[data-testid=fault-drop_rate]").input_value()) == 0.3

            # Phase 2: the outage, switched on from the page.
            await page.fill("[data-testid=fault-drop_rate]", "0")
            await page.check("[data-testid=fault-outage]")
            await page.click("[data-testid=apply-faults]")
            await page.wait_for_function(
                "document.querySelector('[data-testid=faults-result]').textContent.startsWith('applied')")
            faults = await cli_json(p, recon_issuer_http, "faults", "show")
            assert faults["outage"] is True and faults["drop_rate"] == 0
            ids: dict[str, str] = {}
            for _ in range(4):  # once sync's circuit is open its consumer pauses: later events wait in Kafka
                ids.update(await issue(p, tenant, 15))
                await asyncio.sleep(2)
            try:
                await page.wait_for_function(
                    "Number(document.querySelector('[data-testid=sync-lag]').textContent) > 0", timeout=30_000)
            except PlaywrightTimeout:
                view = await shown(page)
                raise AssertionError(f"sync lag never grew: {view['pipeline']} {view['errors']} "
                                     f"{await _sampler_state(p)} {p.sync.log_text()[-2000:]}") from None
            # The headline counts from the ledger: what waits in Kafka and in sync's retry queue alike.
            await page.wait_for_function(
                "Number(document.querySelector('[data-testid=waiting]').textContent) > 0", timeout=15_000)
            headline = await text(page, "waiting-headline")
            assert "not yet at the authority, oldest" in headline and "most in:" in headline, headline
            # Invoices turn stuck after 4 s here (FAPIAO_STUCK_AFTER), and sync's circuit opens and half-opens: a
            # wave shows in Kafka only for a while. Each wave is read before it moves on; a new wave if missed.
            seen: dict[str, dict | None] = {"headline": None, "cli": None}
            last: list[dict] = []

            async def headline_and_cli_see_the_backlog() -> bool:
                if seen["headline"] is None:
                    during = (await shown(page))["waiting"]
                    last[:] = [during]
                    busy = {s["stage"] for s in during["stages"] if s["count"]}
                    if during["total"] != sum(s["count"] for s in during["stages"]) or \
                            not busy <= {"kafka", "sync_retries", "outbox", "stuck"}:
                        pytest.fail(f"the stages do not add up to the headline: {during}")  # not retried
                    seen["headline"] = during if busy & {"kafka", "sync_retries"} else None
                if seen["cli"] is None:  # the CLI too, while the backlog waits in Kafka
                    status = await cli_json(p, recon_issuer_http, "status")
                    seen["cli"] = status if (status["lag"]["sync"] or 0) > 0 else None
                return all(seen.values())

            for _ in range(4):
                if await _sees(headline_and_cli_see_the_backlog):
                    break
                ids.update(await issue(p, tenant, 15))  # a fresh wave while the circuit is open
            assert all(seen.values()), f"not seen while invoices waited: {seen} {last}"

            n, total = len(ids), 60 + len(ids)
            await until_all(p, tenant, "stuck", n, timeout=60)
            await page.wait_for_function(f"document.querySelector('[data-testid=stuck-count]').textContent === '{n}'",
                                         timeout=20_000)
            view = await shown(page)
            assert view["stuck_total"] == n and len(view["stuck"]) == 50  # the table lists the oldest fifty
            assert await page.locator("[data-testid=stuck] tbody tr").count() == 50
            first = view["stuck"][0]
            detail = await steps.detail(p, tenant, first["id"])
            assert first["case_no"] == detail["case_no"] and first["case_no"].startswith("CASE-")
            row = page.locator(f"[data-testid=stuck] tr[data-invoice='{first['id']}']")
            assert first["case_no"] in await row.inner_text() and "cannot be reached" in await row.inner_text()
            assert (await p.statuses(tenant.id)) == {"confirmed": 60, "stuck": n}
            assert await text(page, "total") == str(total)
            mine = await cli_json(p, recon_issuer_http, "status", "--tenant", tenant.id)
            assert mine["stuck"] == n and mine["counts"] == {"confirmed": 60, "stuck": n}
            assert any(g["kind"] == "stuck" for g in view["gaps"])
            stages = {s["stage"]: s for s in view["waiting"]["stages"]}
            assert view["waiting"]["total"] == n and stages["stuck"]["count"] == n, view["waiting"]
            assert view["waiting"]["most_in"] == "stuck" and stages["stuck"]["oldest_seconds"] > 0
            assert await text(page, "waiting") == str(n) and await text(page, "waiting-stuck") == str(n)
            assert mine["waiting"]["total"] == n

            async def alerts_listed() -> bool:
                shown_alerts = (await shown(page))["alerts"]
                return sum(a["kind"] == "stuck" and a["number"] in ids for a in shown_alerts) >= 10

            await eventually(alerts_listed, timeout=20)
            assert await page.locator("[data-testid=alerts] td.kind-stuck").count() >= 10
            await page.screenshot(path=str(shots / "dashboard-stuck.png"), full_page=True)

            # One stuck invoice, through the CLI: reason, case, timeline; its case; a manual resync.
            number = next(iter(ids))
            inv = await cli_json(p, recon_issuer_http, "invoice", "show", number)
            assert inv["status"] == "stuck" and inv["case_no"] and inv["tenant"]["id"] == tenant.id
            assert "cannot be reached" in inv["reason"] and "stuck" in [t["kind"] for t in inv["timeline"]]
            case = await cli_json(p, recon_issuer_http, "cases", "show", inv["case_no"])
            assert case["status"] == "open" and case["invoice_id"] == inv["id"]
            resynced = await cli_json(p, recon_issuer_http, "resync", inv["id"])
            assert resynced["resync"] == "requested"
            gaps = await cli_json(p, recon_issuer_http, "gaps")
            assert gaps["stuck"] >= n and gaps["unconfirmed"] >= n and gaps["oldest"], gaps

            # Recovery: the CLI lifts the outage; the lag goes back to zero and everything is confirmed.
            faults = await cli_json(p, recon_issuer_http, "faults", "set", "outage=false")
            assert faults["outage"] is False
            await until_all(p, tenant, "confirmed", total, timeout=120)
            await page.wait_for_function(
                "document.querySelector('[data-testid=stuck-count]').textContent === '0'"
                " && document.querySelector('[data-testid=sync-lag]').textContent === '0'"
                " && document.querySelector('[data-testid=waiting]').textContent === '0'", timeout=30_000)
            assert (await text(page, "waiting-headline")).startswith("0 invoices waiting")
            waiting_chart = page.locator("#waiting-chart")
            assert ((await waiting_chart.locator("[data-testid=chart-max]").text_content()) or "").endswith("invoices")
            end = await waiting_chart.locator("[data-testid=chart-end]").text_content() or ""
            assert re.fullmatch(r"\d{2}:\d{2}:\d{2}( [AP]M)?", end), f"clock times on the axis, not {end!r}"
            assert ((await page.locator("#latency-chart [data-testid=chart-max]").text_content()) or "").endswith(" s")
            view = await shown(page)
            lags = [pt["lag"]["sync"] for pt in view["series"] if pt["lag"]]
            assert max(lags) > 0 and lags[-1] == 0, "the chart shows the lag growing and recovering"
            assert int(await page.locator("#lag-chart").get_attribute("data-points")) >= 10
            assert await text(page, "count-confirmed") == str(total)
            await page.screenshot(path=str(shots / "dashboard-recovered.png"), full_page=True)
            assert (shots / "dashboard-stuck.png").stat().st_size > 10_000

            # Phase 3: a month-end batch of 20,000. The headline counts it while any of it waits (wherever: the
            # outbox, Kafka, sync, the store's visibility), and reads 0 once all of it is confirmed.
            # The sampled series counts every tenant (earlier tests' rejected invoices too): compare with before.
            before = [pt["waiting"] for pt in (await shown(page))["series"] if pt.get("waiting") is not None]
            baseline = before[-1] if before else 0
            batch = asyncio.create_task(issue(p, tenant, 20_000, chunk=1000))
            await page.wait_for_function(
                "Number(document.querySelector('[data-testid=waiting]').textContent) > 0", timeout=60_000)
            seen = (await shown(page))["waiting"]
            assert seen["total"] > 0 and "not yet at the authority" in seen["headline"], seen
            total += len(await batch)
            await until_all(p, tenant, "confirmed", total, timeout=300)
            await page.wait_for_function(
                "document.querySelector('[data-testid=waiting]').textContent === '0'", timeout=30_000)

            async def sampled_back() -> list | None:  # the sampler's next reading, a few seconds later
                w = [pt["waiting"] for pt in (await shown(page))["series"] if pt.get("waiting") is not None]
                return w if w and w[-1] <= baseline else None

            waited = await eventually(sampled_back, timeout=30, interval=0.5)
            assert max(waited) >= baseline + 1000, "the chart shows the batch waiting, then gone"
        finally:
            await browser.close()

    # The broker's view the page is built on is exported too (dead letters, each group's lag).
    # (the gauges are the sampler's last reading: sync may commit its last offsets a moment after the store has all)
    drained = f'fapiao_consumer_group_lag_records{{group="{p.issuer.settings.topic_prefix}sync.submit"}} 0.0'

    lag_lines: list[str] = []

    async def metrics_drained() -> str | None:
        async with httpx.AsyncClient() as c:
            text_ = (await c.get(f"{recon_issuer_http}/metrics")).text
        lag_lines[:] = [line for line in text_.splitlines() if line.startswith("fapiao_consumer_group_lag_records")]
        return text_ if drained in text_ else None

    try:
        metrics = await eventually(metrics_drained, timeout=30, interval=0.5)
    except AssertionError:
        pytest.fail(f"sync's group lag never read 0 on /metrics: {lag_lines}")
    assert 'fapiao_dlq_records{topic="invoice.events.v1.dlq"}' in metrics and drained in metrics
    after = await cli_json(p, recon_issuer_http, "status", "--tenant", tenant.id)
    assert after["lag"]["sync"] == 0 and after["stuck"] == 0 and after["counts"] == {"confirmed": total}
    resolved = await cli_json(p, recon_issuer_http, "cases", "list", "--tenant", tenant.id, "--status", "resolved",
                              "--limit", "200")
    # (each outage invoice's case, and any the drops in phase 1 made stuck for a moment)
    assert len(resolved) >= n and all(c["status"] == "resolved" for c in resolved)
    assert await cli_json(p, recon_issuer_http, "cases", "list", "--tenant", tenant.id, "--status", "open") == []
    inv = await cli_json(p, recon_issuer_http, "invoice", "show", number)
    assert inv["status"] == "confirmed" and "recovered" in [t["kind"] for t in inv["timeline"]]
    table = await asyncio.to_thread(cli, p, recon_issuer_http, "status")
    assert table.returncode == 0 and "confirmed" in table.stdout and "\x1b[" not in table.stdout, \
        "plain text when not on a terminal"
    missing = await asyncio.to_thread(cli, p, recon_issuer_http, "invoice", "show", "26" + "0" * 18)
    assert missing.returncode == 1 and "no invoice" in missing.stderr
    bad = await asyncio.to_thread(cli, p, recon_issuer_http, "faults", "set", "drop_rate=2")
    assert bad.returncode == 2 and "drop_rate" in bad.stderr


async def test_the_dashboard_asks_for_the_token_and_refuses_a_wrong_one(recon_pipeline: ReconPipeline,
                                                                         recon_issuer_http: str,
                                                                         chromium: Path) -> None:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(chromium), headless=True, args=CHROMIUM_FLAGS)
        try:
            page = await browser.new_page()
            await page.goto(f"{recon_issuer_http}/ops")
            assert await page.locator("#login").is_visible() and not await page.locator("#main").is_visible()
            await page.fill("[data-testid=token]", "not-the-token")
            await page.click("[data-testid=sign-in]")
            await page.wait_for_function(
                "document.querySelector('[data-testid=login-error]').textContent.includes('refused')")
            assert await page.locator("#login").is_visible()
        finally:
            await browser.close()

    async with httpx.AsyncClient() as c:  # the data behind the page needs the token; the page itself holds none
        assert (await c.get(f"{recon_issuer_http}/ops/api/overview")).status_code == 401
        page_html = (await c.get(f"{recon_issuer_http}/ops")).text
    assert ADMIN_TOKEN not in page_html
