"""The check round's cost follows the unconfirmed invoices, not the ledger: over a million confirmed rows, a
round reads the partial due-index and never scans the ledger. Measured with PostgreSQL's own per-table and
per-index counters, not with a clock."""

from __future__ import annotations

import uuid

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from services.reconciler import ledger, reports
from services.reconciler.app import MIGRATIONS
from services.reconciler.rules import Policy, Seen
from services.reconciler.writes import Topics
from shared.db import session_factory, transaction
from shared.migrate import upgrade_async
from tests.harness import Infra, fresh_database

CONFIRMED = 1_000_000
DUE = 200
POLICY = Policy(visibility_sla=30, first_check_after=1, stuck_after=600, stuck_after_resyncs=5, resync_base=10,
                resync_cap=300, stuck_recheck=60)


async def _counters(engine, table: str = "ledger") -> dict[str, int]:  # type: ignore[no-untyped-def]
    async with engine.connect() as conn:
        await conn.execute(text("select pg_stat_force_next_flush()"))
    async with engine.connect() as conn:  # a new transaction: a fresh statistics snapshot
        t = (await conn.execute(text(
            "select seq_scan, coalesce(idx_scan, 0) from pg_stat_user_tables "
            "where schemaname = 'reconciler' and relname = :t"), {"t": table})).one()
        due_idx = (await conn.execute(text(
            "select idx_scan from pg_stat_user_indexes where schemaname = 'reconciler' "
            "and indexrelname = 'ix_ledger_due'"))).scalar_one()
        blocks = (await conn.execute(text(
            "select coalesce(heap_blks_read, 0) + coalesce(heap_blks_hit, 0) + coalesce(idx_blks_read, 0) "
            "+ coalesce(idx_blks_hit, 0) from pg_statio_user_tables where schemaname = 'reconciler' "
            "and relname = :t"), {"t": table})).scalar_one()
        pages = (await conn.execute(text("select relpages from pg_class where oid = 'reconciler.ledger'::regclass"))
                 ).scalar_one()
    return {"seq_scan": int(t[0]), "idx_scan": int(t[1]), "due_idx_scan": int(due_idx), "blocks": int(blocks),
            "pages": int(pages)}


async def test_a_check_round_over_a_million_confirmed_rows_reads_only_the_due_ones(infra: Infra) -> None:
    url = await fresh_database(infra, f"recon_scale_{uuid.uuid4().hex[:8]}")
    await upgrade_async(migrations_dir=MIGRATIONS, database_url=url, schema="reconciler")
    engine = create_async_engine(url)
    tenant = uuid.uuid4()
    try:
        async with engine.begin() as conn:
            await conn.execute(text("""
                insert into reconciler.ledger (invoice_id, tenant_id, seller_tax_id, number, issue_date, total_amount,
                    total_tax, total, content_hash, accepted_at, since, acked_at, confirmed_at, receipt_no, state)
                select gen_random_uuid(), :t, '91350100M000100Y43', lpad(g::text, 20, '0'),
                       date '2026-11-01' + (g % 25), 100, 13, 113, repeat('a', 64), now() - interval '2 days',
                       now() - interval '2 days', now() - interval '2 days', now() - interval '2 days', 'R' || g,
                       'confirmed'
                from generate_series(1, :n) g"""), {"t": tenant, "n": CONFIRMED})
            await conn.execute(text("""
                insert into reconciler.ledger (invoice_id, tenant_id, seller_tax_id, number, issue_date, total_amount,
                    total_tax, total, content_hash, accepted_at, since, acked_at, receipt_no, state, next_check_at)
                select gen_random_uuid(), :t, '91350100M000100Y43', lpad((:n + g)::text, 20, '0'), date '2026-11-25',
                       100, 13, 113, repeat('b', 64), now() - interval '5 seconds', now() - interval '5 seconds',
                       now() - interval '4 seconds', 'R' || (:n + g), 'awaiting', now() - interval '1 second'
                from generate_series(1, :d) g"""), {"t": tenant, "n": CONFIRMED, "d": DUE})
        async with engine.connect() as conn:
            await conn.execute(text("commit"))
            await conn.execute(text("analyze reconciler.ledger"))
        sessions = session_factory(engine)
        before = await _counters(engine)

        async with transaction(sessions) as session:
            due = await ledger.claim_due(session=session, limit=1000, lease_seconds=60)
        assert len(due) == DUE  # exactly the unconfirmed ones, none of the million confirmed
        seen = {r.invoice_id: Seen("visible", content_hash="b" * 64, receipt_no="R") for r in due}
        topics = Topics.of("scale.")
        async with transaction(sessions) as session:
            stats = await ledger.apply_checks(session=session, seen=seen, policy=POLICY, topics=topics)
            report = await reports.gap_report(session=session)
            oldest = await reports.list_unconfirmed(session=session, limit=50)
        assert stats.confirmed == DUE and report.unconfirmed == 0 and oldest == []
        async with transaction(sessions) as session:
            assert await ledger.claim_due(session=session, limit=1000, lease_seconds=60) == []

        after = await _counters(engine)
        assert after["pages"] > 10_000, after  # the ledger really is large
        assert after["seq_scan"] == before["seq_scan"], (before, after)  # never read the ledger through
        assert after["due_idx_scan"] > before["due_idx_scan"]
        touched = after["blocks"] - before["blocks"]
        # Claiming, locking, updating (each update also maintains the ledger's four indexes) and reporting costs
        # a bounded number of blocks per due row (about 43 here), whatever the ledger's size; a scan would read
        # all of its pages.
        assert touched <= 60 * DUE, (touched, after["pages"])
    finally:
        await engine.dispose()
