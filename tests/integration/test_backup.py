"""Backup and restore (`fapiao backup create` / `restore`), as an operator would run them: a backup, more invoices,
the restore of the backup, and then every invoice issued after it accounted for — found at the authority by the
reconciler, reported as lost by the restore with what to do, re-issued, and confirmed with its original receipt."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tarfile
import uuid
from datetime import date
from pathlib import Path

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from shared.consumers import SYNC_SUBMIT
from shared.envelope import decode
from shared.topics import ALERTS, INVOICE_EVENTS
from shared.uscc import check_char
from tests import factories
from tests.harness import (
    ADMIN,
    REPO,
    Infra,
    eventually,
    fresh_database,
    issuer_settings,
    process_env,
    read_topic,
    running_issuer,
    start_all,
    stop_all,
)
from tests.harness.pipelines import plan_recon


def _cli(infra: Infra, database: str, prefix: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = process_env(infra, FAPIAO_DATABASE_URL=database, FAPIAO_TOPIC_PREFIX=prefix)
    return subprocess.run([sys.executable, "-m", "fapiao.cli", "backup", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)


async def _statuses(issuer, tenant_id: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    async with issuer.app.state.engine.connect() as conn:
        rows = (await conn.execute(text("select number, status from issuer.invoices where tenant_id = :t"),
                                   {"t": uuid.UUID(tenant_id)})).all()
    return {r[0]: r[1] for r in rows}


async def test_a_restored_backup_heals_every_invoice_issued_after_it(infra: Infra, tmp_path: Path) -> None:
    database = await fresh_database(infra, f"backup_{uuid.uuid4().hex[:8]}")
    plan = plan_recon(infra, database)
    start_all(plan.all)
    settings = issuer_settings(infra, database_url=database, topic_prefix=plan.prefix,
                               reconciler_url=plan.reconciler.url, notifier_url=plan.notifier.url,
                               taxstore_url=plan.taxstore.url, sync_url=plan.sync.url)
    tax_id = "91310000MA1BKP000"
    tax_id += check_char(tax_id)
    try:
        async with running_issuer(settings) as issuer:
            created = await issuer.client.post("/admin/tenants", headers=ADMIN,
                                               json={"name": "备份演练 Backup Co.", "tax_id": tax_id})
            assert created.status_code == 201, created.text
            tenant_id, headers = created.json()["id"], {"Authorization": f"Bearer {created.json()['api_key']}"}
            async with httpx.AsyncClient(timeout=10) as c:
                r = await c.put(f"{plan.taxstore.url}/admin/sellers/{tax_id}", headers=ADMIN, json={"name": "备份"})
                assert r.status_code in (200, 201), r.text
            before = [factories.invoice(tax_id) for _ in range(5)]
            after = [factories.invoice(tax_id) for _ in range(4)]

            async def issued(docs: list[dict]) -> None:
                for doc in docs:
                    r = await issuer.client.post("/v1/invoices", headers=headers, json=doc)
                    assert r.status_code == 201, r.text

            async def all_confirmed(n: int) -> bool:
                s = await _statuses(issuer, tenant_id)
                return len(s) == n and set(s.values()) == {"confirmed"}

            await issued(before)
            await eventually(lambda: all_confirmed(5), timeout=60)

            made = await asyncio.to_thread(_cli, infra, database, plan.prefix, "create", "--out", str(tmp_path),
                                           "--json")
            assert made.returncode == 0, made.stderr
            backup = json.loads(made.stdout)
            file = Path(backup["file"])
            assert file.parent == tmp_path and backup["schemas"] == ["issuer", "sync", "reconciler", "notifier"]
            with tarfile.open(file) as tar:
                assert sorted(tar.getnames()) == ["database.dump", "manifest.json"]
            events = INVOICE_EVENTS.qualified(plan.prefix)
            assert sum(backup["kafka"]["topics"][events].values()) >= 5, backup["kafka"]
            committed = backup["kafka"]["groups"][SYNC_SUBMIT.qualified(plan.prefix)]
            assert sum(committed[events].values()) >= 5, backup["kafka"]  # sync had taken all five

            await issued(after)
            await eventually(lambda: all_confirmed(9), timeout=60)
            receipts = {}
            async with httpx.AsyncClient(timeout=10) as c:
                for doc in after:
                    r = await c.get(f"{plan.taxstore.url}/v1/invoices/{tax_id}/{doc['number']}")
                    assert r.status_code == 200, r.text
                    receipts[doc["number"]] = r.json()["receipt_no"]

        # The restore: the services are stopped (a running one would only wait for its locks).
        stop_all(plan.all)
        refused = await asyncio.to_thread(_cli, infra, database, plan.prefix, "restore", str(file))
        assert refused.returncode == 2 and "--yes" in refused.stderr
        done = await asyncio.to_thread(_cli, infra, database, plan.prefix, "restore", str(file), "--yes", "--json")
        assert done.returncode == 0, done.stderr
        # Every day from the one before the backup through today east of UTC is made due for a sweep: two days or
        # three, by the hour of the run; whatever the hour, the days the invoices were issued on (UTC+8) are in it.
        windows = json.loads(done.stdout)["sweep_windows"]
        engine = create_async_engine(database)
        try:
            async with engine.connect() as conn:
                due = set((await conn.scalars(text(
                    "select issue_date from reconciler.sweep_windows where seller_tax_id = :s "
                    "and next_sweep_at >= now() - interval '5 minutes'"), {"s": tax_id})).all())
        finally:
            await engine.dispose()
        assert windows == len(due) >= 2, (windows, due)
        assert {date.fromisoformat(d["issue_date"]) for d in before + after} <= due, due
        start_all(plan.all)

        async with running_issuer(settings) as issuer:
            s = await _statuses(issuer, tenant_id)
            assert set(s) == {d["number"] for d in before}, "the issuer is as it was at the backup"

            # The reconciler finds each invoice issued after the backup at the authority, and says what happened.
            topic = ALERTS.qualified(plan.prefix)
            wanted = {f"orphan:{tax_id}:{d['number']}" for d in after}

            def lost(records: list) -> list:  # type: ignore[type-arg]
                return [a for a in map(decode, (r.value for r in records)) if a.subject in wanted]

            records = await read_topic(settings.kafka_bootstrap, topic, until=lambda rs: len(
                {a.subject for a in lost(rs)}) == len(wanted), timeout=60)
            alerts = lost(records)
            assert {a.subject for a in alerts} == wanted
            for a in alerts:
                assert "restored" in a.data["reason"] and "backup taken at" in a.data["reason"], a.data
                assert a.data["next_action"].startswith("Re-issue it from the ERP"), a.data

            # The ERP re-issues them: recorded again, and the authority answers with the original receipts.
            for doc in after:
                r = await issuer.client.post("/v1/invoices", headers={"Authorization": headers["Authorization"]},
                                             json=doc)
                assert r.status_code == 201, r.text
            await eventually(lambda: all_confirmed(9), timeout=90)
            async with issuer.app.state.engine.connect() as conn:
                again = dict((await conn.execute(text(
                    "select number, receipt_no from issuer.invoices where tenant_id = :t"),
                    {"t": uuid.UUID(tenant_id)})).all())
            assert {n: again[n] for n in receipts} == receipts
    finally:
        stop_all(plan.all)
