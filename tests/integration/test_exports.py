"""The invoice list as CSV and XLSX (GET /v1/invoices/export, `fapiao export`): the list's filters, the tenant's
own invoices only, formula cells neutralised, numbers as numbers in XLSX, and 100,000 invoices streamed with
bounded memory."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sys
import time
import uuid
from datetime import date, timedelta
from pathlib import Path

from openpyxl import load_workbook
from sqlalchemy import text

from fapiao.infra import free_port
from services.issuer import models as m
from services.issuer.invoices.exports import COLUMNS
from tests import factories
from tests.harness import REPO, RunningIssuer, Tenant, process_env, serve_app
from tests.harness.infra import Infra

# (A leading tab or carriage return never gets this far: the issuer strips names.)
HOSTILE = ['=HYPERLINK("http://evil.example","open")', "+1+2", "@SUM(A1)", "-3+4", "=cmd|' /C calc'!A0"]


async def _issue(issuer: RunningIssuer, tenant: Tenant, names: list[str]) -> list[dict]:
    out = []
    for name in names:
        doc = factories.invoice(tenant.tax_id, buyer={"tax_id": factories.uscc(), "name": name})
        r = await issuer.client.post("/v1/invoices", headers=tenant.headers, json=doc)
        assert r.status_code == 201, r.text
        out.append(r.json())
    return out


async def test_csv_and_xlsx_hold_the_filtered_list_with_formulas_neutralised(issuer: RunningIssuer,
                                                                            tenant: Tenant) -> None:
    made = await _issue(issuer, tenant, HOSTILE)
    other = await issuer.new_tenant()
    await _issue(issuer, other, ["别人的 Someone else's"])

    r = await issuer.client.get("/v1/invoices/export", headers=tenant.headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv") and "attachment" in r.headers["content-disposition"]
    assert r.content.startswith("\ufeff".encode())
    rows = list(csv.reader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert tuple(rows[0]) == COLUMNS and len(rows) == 1 + len(HOSTILE), "the tenant's own five, nobody else's"
    by = {row[0]: dict(zip(COLUMNS, row, strict=True)) for row in rows[1:]}
    assert [row[0] for row in rows[1:]] == [inv["number"] for inv in reversed(made)], "newest first, as the list"
    for inv, name in zip(made, HOSTILE, strict=True):
        row = by[inv["number"]]
        assert row["buyer_name"] == "'" + name, (row["buyer_name"], "a formula stays text")
        assert (row["total"], row["issue_date"]) == (inv["total"], inv["issue_date"])
        assert row["status"] in ("accepted", "published"), row["status"]  # the relay may have moved it on since

    one = await issuer.client.get("/v1/invoices/export", headers=tenant.headers,
                                  params={"number": made[0]["number"], "format": "xlsx"})
    assert one.status_code == 200 and one.headers["content-type"].startswith("application/vnd.openxmlformats")
    sheet = load_workbook(io.BytesIO(one.content), read_only=True)["invoices"]
    values = list(sheet.iter_rows(values_only=True))
    assert len(values) == 2 and values[0][0] == "number" and values[1][0] == made[0]["number"]
    cells = dict(zip(COLUMNS, values[1], strict=True))
    assert isinstance(cells["total"], int | float) and f"{cells['total']:.2f}" == made[0]["total"], "a number"
    assert cells["buyer_name"] == "'" + HOSTILE[0]
    assert cells["issue_date"].date().isoformat() == made[0]["issue_date"]

    bad = await issuer.client.get("/v1/invoices/export", headers=tenant.headers, params={"format": "pdf"})
    assert bad.status_code == 422 and bad.json()["errors"][0]["path"] == "format"
    assert (await issuer.client.get("/v1/invoices/export")).status_code == 401


def _count(path: Path) -> tuple[int, int]:
    with path.open(encoding="utf-8-sig") as f:
        return sum(1 for _ in f), path.stat().st_size


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


async def _copies(issuer: RunningIssuer, tenant: Tenant, seed: dict, n: int, **over: str) -> None:
    """`n` copies of the seed invoice, numbered 99000…, inserted in one statement; `over` gives SQL expressions
    of `g` (1 … n) for columns that should vary from copy to copy."""
    cols = [c.name for c in m.invoices.c if c.name not in ("id", "seq", "number")]
    values = [f"({over[c]})" if c in over else c for c in cols]
    async with issuer.app.state.engine.begin() as conn:  # type: ignore[attr-defined]
        await conn.execute(text(
            f"insert into issuer.invoices (id, number, {', '.join(cols)}) "  # noqa: S608 - names from the model
            f"select gen_random_uuid(), '99' || lpad(g::text, 18, '0'), {', '.join(values)} "
            "from issuer.invoices, generate_series(1, :n) g where id = :id"), {"n": n, "id": seed["id"]})


async def _export_watched(infra: Infra, issuer: RunningIssuer, tenant: Tenant, out: Path,
                          *args: str) -> tuple[float, float]:
    """`fapiao export --out OUT ARGS` against this process's issuer over HTTP, the issuer's resident memory
    sampled every 0.2 s while it streams: (growth of the peak over the start in MiB, seconds)."""
    port = free_port()
    server, task = await serve_app(issuer.app, port)
    env = process_env(infra, FAPIAO_ISSUER_URL=f"http://127.0.0.1:{port}",
                      FAPIAO_API_KEY=tenant.headers["Authorization"].removeprefix("Bearer "))
    before, peak = _rss_kib(), 0
    started = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fapiao.cli", "export", "--out", str(out), *args, env=env, cwd=str(REPO),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        while proc.returncode is None:  # the server side is this process: watch its memory while it streams
            peak = max(peak, _rss_kib())
            try:
                await asyncio.wait_for(proc.wait(), 0.2)
            except TimeoutError:
                if time.monotonic() - started > 300:
                    proc.kill()
                    raise AssertionError("the export took more than 300 s") from None
        _, stderr = await proc.communicate()
        assert proc.returncode == 0, stderr.decode()
    finally:
        server.should_exit = True  # type: ignore[attr-defined]
        await asyncio.wait_for(task, 10)
    return (peak - before) / 1024, time.monotonic() - started


async def test_a_hundred_thousand_invoices_stream_with_bounded_memory(infra: Infra, issuer: RunningIssuer,
                                                                      tenant: Tenant) -> None:
    [seed] = await _issue(issuer, tenant, ["批量 Bulk Buyer"])
    n = 100_000
    await _copies(issuer, tenant, seed, n - 1)
    out = infra.workdir / "export-100k.csv"
    grew_mib, seconds = await _export_watched(infra, issuer, tenant, out)
    lines, size = await asyncio.to_thread(_count, out)
    print(json.dumps({"invoices": n, "csv_bytes": size, "seconds": round(seconds, 1),
                      "issuer_rss_growth_mib": round(grew_mib, 1)}))
    assert lines == n + 1, lines
    assert grew_mib < max(64, size / 2**20 / 2), f"the issuer grew by {grew_mib:.0f} MiB for a {size >> 20} MiB file"


def _xlsx_rows(path_or_bytes: Path | bytes) -> list[tuple]:
    source = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
    book = load_workbook(source, read_only=True)
    try:
        return list(book["invoices"].iter_rows(values_only=True))
    finally:
        book.close()


async def test_a_large_xlsx_export_streams_with_bounded_memory_and_the_filters_count_right(
        infra: Infra, issuer: RunningIssuer) -> None:
    # 20,000 rows, not the CSV's 100,000: openpyxl writes (and, to count them, reads back) an XLSX row some ten
    # times slower than a CSV line, and 100,000 would add about two minutes to the suite. The bound is the CSV
    # test's floor, 64 MiB, which a workbook held in memory exceeds several times over at this size (openpyxl
    # keeps every cell of a normal workbook as an object: 320,000 of them here).
    tenant = await issuer.new_tenant()
    [seed] = await _issue(issuer, tenant, ["表格 Spreadsheet Buyer"])
    n = 20_000
    # A quarter confirmed, the rest as issued; issue dates spread over the 30 days up to the seed's.
    await _copies(issuer, tenant, seed, n - 1, status="case when g % 4 = 0 then 'confirmed' else status end",
                  issue_date="issue_date - (g % 30)")
    out = infra.workdir / "export-20k.xlsx"
    grew_mib, seconds = await _export_watched(infra, issuer, tenant, out, "--format", "xlsx")
    rows = await asyncio.to_thread(_xlsx_rows, out)
    print(json.dumps({"invoices": n, "xlsx_bytes": out.stat().st_size, "seconds": round(seconds, 1),
                      "issuer_rss_growth_mib": round(grew_mib, 1)}))
    assert len(rows) == n + 1 and rows[0][0] == "number", len(rows)
    assert len({r[0] for r in rows[1:]}) == n, "every invoice once"
    assert grew_mib < 64, f"the issuer grew by {grew_mib:.0f} MiB for a {n}-row XLSX"

    # The list's other filters, counted against the table itself.
    async def counted(where: str, **params: object) -> int:
        async with issuer.app.state.engine.begin() as conn:  # type: ignore[attr-defined]
            return int((await conn.execute(text(
                f"select count(*) from issuer.invoices where tenant_id = :t and {where}"),  # noqa: S608 - ours
                {"t": uuid.UUID(tenant.id), **params})).scalar_one())

    day = date.fromisoformat(seed["issue_date"])
    first, last = day - timedelta(days=12), day - timedelta(days=6)  # even offsets: a confirmed copy has one
    confirmed = await issuer.client.get("/v1/invoices/export", headers=tenant.headers,
                                        params={"status": "confirmed", "format": "xlsx"})
    got = await asyncio.to_thread(_xlsx_rows, confirmed.content)
    want = await counted("status = 'confirmed'")
    assert want == (n - 1) // 4 and len(got) == want + 1, (len(got), want)
    assert {r[COLUMNS.index("status")] for r in got[1:]} == {"confirmed"}
    window = await issuer.client.get("/v1/invoices/export", headers=tenant.headers, params={
        "issued_from": first.isoformat(), "issued_to": last.isoformat(), "status": "confirmed"})
    lines = list(csv.reader(io.StringIO(window.content.decode("utf-8-sig"))))
    want = await counted("status = 'confirmed' and issue_date between :a and :b", a=first, b=last)
    assert 0 < want < (n - 1) // 4 and len(lines) == want + 1, (len(lines), want)
    dates = {date.fromisoformat(r[COLUMNS.index("issue_date")]) for r in lines[1:]}
    assert min(dates) == first and max(dates) == last, (min(dates), max(dates))
