"""The documents of a month and of a case, read back against the JSON of the real pipeline (issuer, tax store,
sync, reconciler over Kafka and PostgreSQL): the monthly summary as CSV and XLSX (GET /v1/summaries/{month},
`fapiao summary --out`), formula cells neutralised, figures equal to the JSON's; a case's evidence pack
(GET /v1/cases/{case_no}/evidence, /admin/cases/{case_no}/evidence, `fapiao cases evidence`), unzipped, its PDF
read with pdftotext and its JSON held against the API's case and timeline; the month's report as PDF (read with
pdftotext) and HTML (parsed: its figures and its chart's bars against the JSON).

One scene serves the module: a tenant issues three invoices during a tax store outage, opens a case about one of
them (with a note that looks like a formula), and the outage ends, so the invoices are confirmed and the case
resolved. Then the store starts to lose what it acknowledges (drop_rate 1): a fourth invoice gets a receipt but
never becomes visible, is resynced in vain and ends stuck, with a case the reconciler opens about it — the month's
one gap. The operators' copies of the month (GET /admin/summaries/{month}, `fapiao summary --tax-id --out`) are
held against the tenant's."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import subprocess
import sys
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from openpyxl import load_workbook

from fapiao.infra.tools import ensure_pdftoppm
from services.issuer.invoices.report import AGES
from services.issuer.invoices.summaries import CASE_COLUMNS, FIGURE_COLUMNS
from tests import factories
from tests.harness import (
    ADMIN,
    ARTIFACTS,
    REPO,
    ReconPipeline,
    ReconProcesses,
    RunningIssuer,
    Tenant,
    eventually,
    process_env,
)
from tests.harness.infra import Infra
from tests.steps import issue, new_tenant, until_all

NOTE = '=HYPERLINK("http://evil.example","看这里") <b onclick="x()">买方查不到</b>'


@dataclass
class Scene:
    p: ReconPipeline
    tenant: Tenant
    other: Tenant
    ids: dict[str, str]  # number -> invoice id
    case_no: str
    case_invoice: str
    month: str
    http: str  # the issuer over real HTTP, for the CLI
    gap_invoice: str  # the invoice the store lost: stuck, the month's gap


@pytest.fixture(scope="module")
async def scene(infra: Infra, recon_issuer: RunningIssuer, recon_processes: ReconProcesses,
                recon_issuer_http: str) -> AsyncIterator[Scene]:
    procs = recon_processes
    p = ReconPipeline(recon_issuer, procs.taxstore, procs.sync, reconciler=procs.reconciler, notifier=procs.notifier,
                      infra=infra, mail_dir=procs.mail_dir, processes=procs, test="month_documents")
    await p.clear_faults()
    try:
        tenant = await new_tenant(p, name="月报测试 Month Report Co.")
        other = await new_tenant(p, name="别家企业 Other Co.")
        await p.faults(outage=True)
        ids = await issue(p, tenant, 3)
        first = ids[sorted(ids)[0]]

        async def failed_once() -> bool:
            shown = (await p.issuer.client.get(f"/v1/invoices/{first}", headers=tenant.headers)).json()
            return any(t["kind"] == "attempt_failed" for t in shown["timeline"])  # the failing store answered

        await eventually(failed_once, timeout=30, interval=0.3)
        r = await p.issuer.client.post(f"/v1/invoices/{first}/cases", headers=tenant.headers, json={"note": NOTE})
        assert r.status_code == 201, r.text
        case_no = r.json()["case_no"]
        await p.faults(outage=False)
        await until_all(p, tenant, "confirmed", 3, timeout=90)

        async def resolved() -> bool:
            r = await p.issuer.client.get(f"/v1/cases/{case_no}", headers=tenant.headers)
            body = r.json()
            return body["status"] == "resolved" and body["history"][-1]["kind"] == "alert"

        await eventually(resolved, timeout=60, interval=0.3)
        shown = (await p.issuer.client.get(f"/v1/invoices/{first}", headers=tenant.headers)).json()
        month = shown["issue_date"][:7]

        await p.faults(drop_rate=1.0)  # acknowledged, stored nowhere: a gap, then stuck after 5 resyncs
        [lost] = (await issue(p, tenant, 1)).values()

        async def stuck() -> bool:
            r = await p.issuer.client.get(f"/v1/summaries/{month}", headers=tenant.headers)
            return any(g["kind"] == "stuck" for g in r.json()["gaps"]) and r.json()["cases"]["total"] == 2

        await eventually(stuck, timeout=60, interval=0.5)
        yield Scene(p, tenant, other, ids, case_no, first, month, recon_issuer_http, lost)
    finally:
        await p.clear_faults()


async def _summary(s: Scene, tenant: Tenant | None = None) -> dict[str, Any]:
    r = await s.p.issuer.client.get(f"/v1/summaries/{s.month}", headers=(tenant or s.tenant).headers)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json"), r.text
    return r.json()


def _expected_figures(summary: dict[str, Any]) -> dict[tuple[str, str], tuple[Any, Any]]:
    """The figures the documents must show, straight from the JSON (amounts as Decimal)."""
    out: dict[tuple[str, str], tuple[Any, Any]] = {}
    for colour in ("blue", "red", "net"):
        ours, theirs = summary["ours"][colour], summary["authority"][colour]
        out[(colour, "count")] = (ours["count"], theirs["count"])
        out[(colour, "total")] = (Decimal(ours["total"]), Decimal(theirs["total"]))
        out[(colour, "total_amount")] = (Decimal(ours["total_amount"]), None)
    for state, n in summary["states"].items():
        out[("state", state)] = (n, None)
    for status, n in summary["cases"]["by_status"].items():
        out[("cases", status)] = (n, None)
    for day in summary["daily"]:
        out[("day_issued_confirmed", day["date"])] = (day["issued"], day["confirmed"])
    return out


async def test_the_monthly_summary_as_csv_and_xlsx_holds_the_jsons_figures(scene: Scene) -> None:
    s = scene
    summary = await _summary(s)
    assert summary["ours"]["blue"]["count"] == 4 and summary["states"] == {"confirmed": 3, "stuck": 1}, summary
    assert summary["ours"]["net"]["total"] == summary["ours"]["blue"]["total"], "no red invoices: net is blue"
    assert summary["cases"]["by_status"] == {"open": 1, "resolved": 1}, "the tenant's, and the stuck invoice's"
    [case] = [c for c in summary["cases"]["items"] if c["case_no"] == s.case_no]
    assert case["note"] == NOTE
    days = {d["date"]: d for d in summary["daily"]}
    assert sum(d["issued"] for d in days.values()) == 4 and sum(d["confirmed"] for d in days.values()) >= 1
    wanted = _expected_figures(summary)

    # XLSX, chosen by the format parameter.
    r = await s.p.issuer.client.get(f"/v1/summaries/{s.month}", params={"format": "xlsx"}, headers=s.tenant.headers)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/vnd.openxmlformats"), r.text
    assert f"summary-{s.tenant.tax_id}-{s.month}.xlsx" in r.headers["content-disposition"]
    book = load_workbook(io.BytesIO(r.content), read_only=True)
    rows = _sheet(book["summary"], len(FIGURE_COLUMNS))
    assert tuple(rows[0]) == FIGURE_COLUMNS
    got = {(str(sec), str(item)): (here, there) for sec, item, here, there in rows[1:]}
    for key, (here, there) in wanted.items():
        cell_here, cell_there = got[key]
        for want, cell in ((here, cell_here), (there, cell_there)):
            if want is None:
                continue
            assert isinstance(cell, int | float), (key, cell, "a number, not text")
            assert Decimal(str(cell)).quantize(Decimal("0.01")) == Decimal(want).quantize(Decimal("0.01")), (key, cell)
    cases = _sheet(book["cases"], len(CASE_COLUMNS))
    assert tuple(cases[0]) == CASE_COLUMNS and len(cases) == 1 + len(summary["cases"]["items"])
    [by] = [dict(zip(CASE_COLUMNS, row, strict=True)) for row in cases[1:] if row[0] == s.case_no]
    assert by["status"] == "resolved"
    assert by["note"] == "'" + NOTE, "a formula stays text"

    # CSV, chosen by the Accept header; the same figures as text.
    r = await s.p.issuer.client.get(f"/v1/summaries/{s.month}", headers={**s.tenant.headers, "Accept": "text/csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv"), r.text
    assert r.content.startswith("\ufeff".encode())
    lines = list(csv.reader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert tuple(lines[0]) == FIGURE_COLUMNS
    text = {(sec, item): (here, there) for sec, item, here, there in lines[1:]}
    for key, (here, there) in wanted.items():
        assert text[key] == (str(here), "" if there is None else str(there)), (key, text[key])
    assert text[("case", s.case_no)][0] == "resolved"
    assert all(not cell.startswith(("=", "+", "@")) for line in lines for cell in line), "nothing runs as a formula"

    # Another tenant's month holds none of this; bad formats are refused in problem+json.
    theirs = await _summary(s, s.other)
    assert theirs["ours"]["blue"]["count"] == 0 and theirs["cases"]["total"] == 0
    bad = await s.p.issuer.client.get(f"/v1/summaries/{s.month}", params={"format": "docx"}, headers=s.tenant.headers)
    assert bad.status_code == 422 and bad.json()["errors"][0]["path"] == "format", bad.text
    refused = await s.p.issuer.client.get(f"/v1/summaries/{s.month}",
                                          headers={**s.tenant.headers, "Accept": "image/png"})
    assert refused.status_code == 406 and refused.headers["content-type"].startswith("application/problem+json")
    assert "text/csv" in refused.json()["available"]
    weighted = await s.p.issuer.client.get(f"/v1/summaries/{s.month}", headers={
        **s.tenant.headers, "Accept": "application/json;q=0.5, text/csv;q=0.9"})
    assert weighted.headers["content-type"].startswith("text/csv"), "the higher q wins"

    # `fapiao summary --out`: the tenant's file, whole.
    out = s.p.infra.workdir / f"summary-{s.tenant.tax_id}.xlsx"
    done = await asyncio.to_thread(_cli, s, "summary", "--month", s.month, "--out", str(out))
    assert done.returncode == 0, done.stderr
    again = _sheet(load_workbook(io.BytesIO(await asyncio.to_thread(out.read_bytes)), read_only=True)["summary"],
                   len(FIGURE_COLUMNS))
    assert again == rows, "the same figures as the API's file"
    assert not await asyncio.to_thread(Path(f"{out}.partial").exists)


async def _keep(name: str, content: bytes) -> None:
    """A document for a person to look at after the run, in .test-artifacts/documents."""
    def write() -> None:
        (ARTIFACTS / "documents").mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "documents" / name).write_bytes(content)

    await asyncio.to_thread(write)


def _sheet(sheet: Any, width: int) -> list[tuple[Any, ...]]:
    """A sheet's rows, each `width` cells long (a read-only sheet leaves trailing empty cells out)."""
    return [tuple(row) + (None,) * (width - len(row)) for row in sheet.iter_rows(values_only=True)]


def _cli(s: Scene, *args: str, as_tenant: bool = True) -> subprocess.CompletedProcess[str]:
    """`fapiao ...` against the scene's issuer, with the tenant's API key (or, not as_tenant, the admin token)."""
    key = {"FAPIAO_API_KEY": s.tenant.headers["Authorization"].removeprefix("Bearer ")} if as_tenant else {}
    env = process_env(s.p.infra, FAPIAO_ISSUER_URL=s.http, **key)
    return subprocess.run([sys.executable, "-m", "fapiao.cli", *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=60)


@pytest.fixture(scope="module")
def pdftotext() -> Path:
    """poppler's pdftotext, installed with its pdftoppm (poppler-utils) when missing."""
    try:
        return ensure_pdftoppm().with_name("pdftotext")
    except Exception as exc:  # noqa: BLE001 - the test fails, saying why
        pytest.fail(f"the document tests need poppler's pdftotext: {exc}", pytrace=False)


def _words(pdf: bytes) -> str:
    """A PDF's text as poppler's pdftotext reads it, without white space."""
    done = subprocess.run(["pdftotext", "-", "-"], input=pdf, capture_output=True, timeout=60, check=True)
    return "".join(done.stdout.decode().split())


def _utc(at: str) -> str:
    from datetime import UTC, datetime

    return datetime.fromisoformat(at).astimezone(UTC).strftime("%Y-%m-%d%H:%M:%S")


async def test_a_cases_evidence_pack_holds_the_invoice_and_every_step(scene: Scene, pdftotext: Path) -> None:
    s = scene
    r = await s.p.issuer.client.get(f"/v1/cases/{s.case_no}/evidence", headers=s.tenant.headers)
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip", r.text[:300]
    assert f"evidence-{s.case_no}.zip" in r.headers["content-disposition"]
    pack = zipfile.ZipFile(io.BytesIO(r.content))
    assert sorted(pack.namelist()) == ["evidence.json", "evidence.pdf", "invoice.pdf"]
    facts = json.loads(pack.read("evidence.json"))

    case = (await s.p.issuer.client.get(f"/v1/cases/{s.case_no}", headers=s.tenant.headers)).json()
    invoice = (await s.p.issuer.client.get(f"/v1/invoices/{s.case_invoice}", headers=s.tenant.headers)).json()
    assert facts["case_no"] == s.case_no
    assert facts["case"] == {k: v for k, v in case.items() if k != "invoice"}, "the case as GET /v1/cases shows it"
    assert facts["invoice"]["timeline"] == invoice["timeline"] and facts["invoice"]["invoice"] == invoice["invoice"]
    steps = facts["timeline"]
    assert len(steps) == len(invoice["timeline"]) + len(case["history"])
    assert [x["at"] for x in steps if x["source"] == "case"] == [h["at"] for h in case["history"]]
    assert [x["at"] for x in steps if x["source"] == "invoice"] == [t["at"] for t in invoice["timeline"]]
    kinds = {x["kind"] for x in steps}
    assert {"opened", "check", "resolved", "alert"} <= kinds, kinds  # the case's side
    assert "accepted" in kinds and "confirmed" in kinds, kinds  # the invoice's side
    failed = [x for x in steps if x["kind"] == "attempt_failed"]
    assert failed and all("503" in x["detail"]["error"] for x in failed), "the outage's failed attempts, answers kept"
    receipts = {(x["detail"] or {}).get("receipt_no") for x in steps} - {None}
    assert invoice["receipt_no"] in receipts, "the authority's receipt, as it answered it"

    await _keep("evidence.pdf", pack.read("evidence.pdf"))
    words = _words(pack.read("evidence.pdf"))
    for expected in (s.case_no, invoice["number"], invoice["receipt_no"], f"¥{invoice['total']}", "时间线",
                     "买方查不到"):
        assert expected in words, (expected, words[:400])
    for step in steps:
        assert _utc(step["at"]) in words, (step, "every step with its time")
        assert step["kind"] in words, step["kind"]
    invoice_page = _words(pack.read("invoice.pdf"))
    assert invoice["number"] in invoice_page and "价税合计（大写）" in invoice_page

    # Tenant-isolated; the operators' copy is the same pack.
    assert (await s.p.issuer.client.get(f"/v1/cases/{s.case_no}/evidence", headers=s.other.headers)).status_code == 404
    for unknown in ("CASE-20991231-999999", "not-a-case"):
        missing = await s.p.issuer.client.get(f"/v1/cases/{unknown}/evidence", headers=s.tenant.headers)
        assert missing.status_code == 404 and missing.headers["content-type"].startswith("application/problem+json")
    assert (await s.p.issuer.client.get(f"/v1/cases/{s.case_no}/evidence")).status_code == 401
    admin = await s.p.issuer.client.get(f"/admin/cases/{s.case_no}/evidence", headers=ADMIN)
    assert admin.status_code == 200, admin.text[:300]
    theirs = json.loads(zipfile.ZipFile(io.BytesIO(admin.content)).read("evidence.json"))
    assert {k: v for k, v in theirs.items() if k != "generated_at"} == {k: v for k, v in facts.items()
                                                                        if k != "generated_at"}
    assert (await s.p.issuer.client.get(f"/admin/cases/{s.case_no}/evidence",
                                        headers=s.tenant.headers)).status_code in (401, 403)

    # `fapiao cases evidence`: as the tenant, as an operator, and for no case (the three at once).
    outs = [s.p.infra.workdir / f"evidence-{s.case_no}-{who}.zip" for who in ("tenant", "operator")]
    mine, operators, gone = await asyncio.gather(
        asyncio.to_thread(_cli, s, "cases", "evidence", s.case_no, "--out", str(outs[0])),
        asyncio.to_thread(_cli, s, "cases", "evidence", s.case_no, "--out", str(outs[1]), as_tenant=False),
        asyncio.to_thread(_cli, s, "cases", "evidence", "CASE-20991231-999999", "--out",
                          str(s.p.infra.workdir / "none.zip")))
    for done, out in ((mine, outs[0]), (operators, outs[1])):
        assert done.returncode == 0, done.stderr
        got = json.loads(zipfile.ZipFile(io.BytesIO(await asyncio.to_thread(out.read_bytes))).read("evidence.json"))
        assert got["timeline"] == facts["timeline"]
    assert gone.returncode == 1 and "no case" in gone.stderr, gone.stderr


class _Figures(HTMLParser):
    """The report page's named figures (`data-figure`), the chart's bars, and whether anything could run."""

    def __init__(self) -> None:
        super().__init__()
        self.figures: dict[str, str] = {}
        self.bars: list[dict[str, str]] = []
        self.cells: list[str] = []
        self.active: list[str] = []
        self.open: str | None = None
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "script" or any(k.startswith("on") for k in a) or tag not in _TAGS:
            self.active.append(tag)
        if tag == "rect" and "data-series" in a:
            self.bars.append(a)
        if "data-figure" in a:
            self.open, self.text = a["data-figure"], []
        elif tag == "td":
            self.open, self.text = "", []

    def handle_data(self, data: str) -> None:
        if self.open is not None:
            self.text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if self.open is not None and tag in ("td", "span", "b", "p"):
            if self.open:
                self.figures[self.open] = "".join(self.text).strip()
            else:
                self.cells.append("".join(self.text))
            self.open = None


_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "span", "b", "table", "tr", "th", "td",
         "svg", "line", "text", "rect"}


async def test_the_months_report_as_pdf_and_html_shows_the_jsons_figures(scene: Scene, pdftotext: Path) -> None:
    s = scene
    for _ in range(3):  # the gap's age bucket moves on as it ages: the documents and a JSON on either side agree
        summary = await _summary(s)
        r = await s.p.issuer.client.get(f"/v1/summaries/{s.month}", params={"format": "pdf"},
                                        headers=s.tenant.headers)
        page = await s.p.issuer.client.get(f"/v1/summaries/{s.month}", headers={**s.tenant.headers,
                                                                                 "Accept": "text/html,*/*;q=0.8"})
        if (await _summary(s))["gaps"] == summary["gaps"]:
            break
    daily = summary["daily"]
    assert r.status_code == 200 and r.headers["content-type"] == "application/pdf", r.text[:300]
    await _keep("report.pdf", r.content)
    words = _words(r.content)
    gaps = summary["gaps"]
    assert any(g["kind"] == "stuck" for g in gaps), gaps
    assert "Nogaps" not in words
    for kind in {g["kind"] for g in gaps}:  # its row: the kind, then the count in each age bucket, in order
        counts = {g["age"]: g["count"] for g in gaps if g["kind"] == kind}
        assert kind + "".join(str(counts.get(age, 0)) for age, _ in AGES) in words, (kind, counts, words)
    for colour in ("blue", "red", "net"):
        for side in ("ours", "authority"):
            assert f"¥{summary[side][colour]['total']}" in words, (colour, side, words[:500])
    issued, confirmed = sum(d["issued"] for d in daily), sum(d["confirmed"] for d in daily)
    for expected in ("月度报告", f"Monthlyreport{s.month}", s.tenant.tax_id, s.case_no, "resolved:1",
                     f"Inall:{issued}issued,{confirmed}confirmed",
                     *(f"{k}:{v}" for k, v in summary["states"].items())):
        assert expected in words, (expected, words[:600])

    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html"), page.text[:300]
    assert "default-src 'none'" in page.headers["content-security-policy"]
    await _keep("report.html", page.content)
    parsed = _Figures()
    parsed.feed(page.text)
    assert parsed.active == [], ("nothing on the page can run or load", parsed.active)
    assert "<b onclick" not in page.text and any(NOTE == c for c in parsed.cells), "the note, escaped, as text"
    f = parsed.figures
    for colour in ("blue", "red", "net"):
        for side, where in (("ours", "here"), ("authority", "authority")):
            for key, value in summary[side][colour].items():
                assert f[f"{colour}.{key}.{where}"] == str(value), (colour, key, where)
    for state, n in summary["states"].items():
        assert f[f"state.{state}"] == str(n)
    assert f["cases.total"] == str(summary["cases"]["total"]) and f["cases.resolved"] == "1"
    assert (f["daily.issued"], f["daily.confirmed"]) == (str(issued), str(confirmed))
    assert f["matches"] == ("yes" if summary["matches"] else "no") and f["month"] == s.month
    assert "no_gaps" not in f
    for g in gaps:
        assert f[f"gap.{g['kind']}.{g['age']}"] == str(g["count"]), g
    shown = {k for k in f if k.startswith("gap.") and f[k] != "0"}
    assert shown == {f"gap.{g['kind']}.{g['age']}" for g in gaps}, "no gap the JSON does not have"
    assert len(parsed.bars) == 2 * len(daily), "a bar of each series for every day"
    for bar in parsed.bars:
        day = next(d for d in daily if d["date"] == bar["data-date"])
        assert int(bar["data-value"]) == day[bar["data-series"]]
        assert (float(bar["height"]) > 0) == (day[bar["data-series"]] > 0), bar

    out = s.p.infra.workdir / f"report-{s.month}.pdf"
    done = await asyncio.to_thread(_cli, s, "summary", "--month", s.month, "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert s.case_no in _words(await asyncio.to_thread(out.read_bytes))


def _steady(rows: list[Any]) -> list[Any]:
    """A summary file's rows but the gaps' (a gap's age bucket may move on between two requests)."""
    return [r for r in rows if not str(r[0]).startswith("gap:")]


async def test_an_operator_gets_any_tenants_month_as_its_tenant_does(scene: Scene, pdftotext: Path) -> None:
    s = scene
    path, c = f"/admin/summaries/{s.month}", s.p.issuer.client
    seller = {"seller_tax_id": s.tenant.tax_id.lower()}  # any case, as the CLI and the other admin routes take it
    mine, theirs = await asyncio.gather(
        c.get(f"/v1/summaries/{s.month}", params={"format": "csv"}, headers=s.tenant.headers),
        c.get(path, params={**seller, "format": "csv"}, headers=ADMIN))
    assert theirs.status_code == 200 and theirs.headers["content-type"].startswith("text/csv"), theirs.text[:300]
    assert f"summary-{s.tenant.tax_id}-{s.month}.csv" in theirs.headers["content-disposition"]
    rows = [list(csv.reader(io.StringIO(x.content.decode("utf-8-sig")))) for x in (mine, theirs)]
    assert _steady(rows[1]) == _steady(rows[0]) and len(rows[1]) > 20, "the tenant's own figures"
    as_json = (await c.get(path, params=seller, headers=ADMIN)).json()
    assert as_json["seller_tax_id"] == s.tenant.tax_id and as_json["ours"] == (await _summary(s))["ours"]
    other = (await c.get(path, params={"seller_tax_id": s.other.tax_id}, headers=ADMIN)).json()
    assert other["seller_tax_id"] == s.other.tax_id and other["ours"]["blue"]["count"] == 0, "the tenant asked for"

    pdf, html = await asyncio.gather(c.get(path, params={**seller, "format": "pdf"}, headers=ADMIN),
                                     c.get(path, params=seller, headers={**ADMIN, "Accept": "text/html"}))
    assert pdf.headers["content-type"] == "application/pdf" and html.headers["content-type"].startswith("text/html")
    words = _words(pdf.content)
    assert all(w in words for w in ("月度报告", s.tenant.tax_id, s.case_no)), words[:400]
    assert "default-src 'none'" in html.headers["content-security-policy"]
    parsed = _Figures()
    parsed.feed(html.text)
    assert parsed.active == [] and parsed.figures["seller_tax_id"] == s.tenant.tax_id
    assert parsed.figures["blue.count.here"] == str(as_json["ours"]["blue"]["count"])


    unknown = await c.get(path, params={"seller_tax_id": factories.uscc(), "format": "xlsx"}, headers=ADMIN)
    assert unknown.status_code == 404 and unknown.headers["content-type"].startswith("application/problem+json")
    for bad in ({"seller_tax_id": "not a tax id!"}, {}):
        refused = await c.get(path, params=bad, headers=ADMIN)
        assert refused.status_code == 422 and refused.json()["errors"][0]["path"] == "seller_tax_id", refused.text
    assert (await c.get("/admin/summaries/2026-13", params=seller, headers=ADMIN)).status_code == 422
    assert (await c.get(path, params=seller, headers=s.tenant.headers)).status_code in (401, 403)

    # `fapiao summary --tax-id --out`: the operator's file, whole; an unknown seller is exit 1.
    out = s.p.infra.workdir / f"summary-{s.tenant.tax_id}-operator.xlsx"
    xlsx = await c.get(f"/v1/summaries/{s.month}", params={"format": "xlsx"}, headers=s.tenant.headers)
    done, gone = await asyncio.gather(
        asyncio.to_thread(_cli, s, "summary", "--month", s.month, "--tax-id", s.tenant.tax_id, "--out", str(out),
                          as_tenant=False),
        asyncio.to_thread(_cli, s, "summary", "--month", s.month, "--tax-id", factories.uscc(), "--out",
                          str(s.p.infra.workdir / "nobody.csv"), as_tenant=False))
    assert done.returncode == 0, done.stderr
    got = _sheet(load_workbook(io.BytesIO(await asyncio.to_thread(out.read_bytes)), read_only=True)["summary"],
                 len(FIGURE_COLUMNS))
    want = _sheet(load_workbook(io.BytesIO(xlsx.content), read_only=True)["summary"], len(FIGURE_COLUMNS))
    assert _steady(got) == _steady(want)
    assert gone.returncode == 1 and "no tenant" in gone.stderr, gone.stderr
    assert not await asyncio.to_thread((s.p.infra.workdir / "nobody.csv").exists)
