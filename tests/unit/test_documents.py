"""The document makers on their own: how a summary's format is chosen, what its spreadsheet rows neutralise and
what they leave alone (a red total's minus sign), the report page's escaping, and the evidence timeline's order
across the two services' ways of writing a time. The documents against the real pipeline are in
tests/integration/test_month_documents.py."""

from __future__ import annotations

import csv
import io
from decimal import Decimal
from typing import Any

import pytest

from services.issuer.api.cases import NotAcceptable, summary_format
from services.issuer.invoices import evidence, report, summaries


@pytest.mark.parametrize(("fmt", "accept", "chosen"), [
    (None, None, "json"), (None, "", "json"), (None, "*/*", "json"), (None, "application/*", "json"),
    (None, "text/csv", "csv"), (None, "application/pdf", "pdf"),
    (None, "application/json;q=0.5, text/csv;q=0.9", "csv"),
    (None, "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", "html"),  # a browser's
    (None, "image/png, application/vnd.openxmlformats-officedocument.spreadsheetml.sheet;q=0.1", "xlsx"),
    ("csv", "application/pdf", "csv"),  # the parameter wins
])
def test_the_format_is_the_parameter_or_the_most_preferred_type_we_have(fmt: str | None, accept: str | None,
                                                                        chosen: str) -> None:
    assert summary_format(fmt, accept) == chosen


@pytest.mark.parametrize("accept", ["image/png", "text/csv;q=0", "application/xml, image/*", "text/plain;q=abc"])
def test_an_accept_header_that_asks_for_none_of_them_is_406(accept: str) -> None:
    with pytest.raises(NotAcceptable) as refused:
        summary_format(None, accept)
    assert refused.value.status == 406 and "text/csv" in refused.value.extra["available"]


def _summary(note: str = "=1+1 客户查不到") -> dict[str, Any]:
    sums = {"count": 2, "total": "452.00", "total_amount": "400.00", "total_tax": "52.00"}
    red = {"count": 1, "total": "-226.00", "total_amount": "-200.00", "total_tax": "-26.00"}
    net = {"count": 3, "total": "226.00", "total_amount": "200.00", "total_tax": "26.00"}
    return {
        "seller_tax_id": "91310115MA1K4DEM05", "month": "2026-11", "period": {"from": "2026-11-01", "to": "2026-11-30"},
        "ours": {"blue": sums, "red": red, "net": net},
        "authority": {"blue": {"count": 2, "total": "452.00"}, "red": {"count": 0, "total": "0.00"},
                      "net": {"count": 2, "total": "452.00"}},
        "not_expected_at_authority": {"voided": 0, "rejected": 0}, "matches": False,
        "difference_counts": {"missing_at_authority": 1},
        "differences": [{"number": "26110000000000000001", "kind": "missing_at_authority", "authority": None,
                         "ours": {"invoice_id": "x", "state": "gap", "total": "-226.00"}}],
        "states": {"confirmed": 2, "gap": 1}, "gaps": [{"kind": "missing", "age": "lt_1m", "count": 1}],
        "cases": {"by_status": {"open": 1}, "total": 1, "truncated": False, "items": [
            {"case_no": "CASE-20261103-000001", "number": "26110000000000000001", "status": "open",
             "opened_by": "tenant", "opened_at": "2026-11-03T01:02:03+00:00", "resolved_at": None,
             "resolution": "+ not found yet", "note": note}]},
        "daily": [{"date": f"2026-11-{d:02d}", "issued": 3 if d == 3 else 0, "confirmed": 2 if d == 4 else 0}
                  for d in range(1, 31)],
    }


def test_spreadsheet_rows_neutralise_text_but_not_a_red_totals_minus_sign() -> None:
    rows = list(csv.reader(io.StringIO(summaries.summary_csv(_summary()).decode("utf-8-sig"))))
    by = {(r[0], r[1]): (r[2], r[3]) for r in rows[1:]}
    assert by[("red", "total")] == ("-226.00", "0.00") and by[("net", "total")] == ("226.00", "452.00")
    assert by[("difference:missing_at_authority", "26110000000000000001")] == ("-226.00", "")
    assert by[("case", "CASE-20261103-000001")] == ("open", "'+ not found yet")
    assert by[("day_issued_confirmed", "2026-11-03")] == ("3", "0")
    figures = {(sec, item): (here, there) for sec, item, here, there in summaries.figures(_summary())}
    assert figures[("red", "total")] == (Decimal("-226.00"), Decimal("0.00")), "amounts stay numbers"


def test_the_report_page_escapes_a_tenants_text_and_names_its_figures() -> None:
    page = report.report_html(_summary(note='<script>alert("x")</script><img src=x onerror=y()>'))
    assert "<script>" not in page and "<img" not in page and "&lt;script&gt;" in page
    assert 'data-figure="red.total.here">-226.00<' in page and 'data-figure="net.count.authority">2<' in page
    assert 'data-series="issued" data-value="3"' in page and 'data-figure="gap.missing.lt_1m">1<' in page
    assert report.report_pdf(_summary()).startswith(b"%PDF")


def test_the_evidence_timeline_is_one_list_oldest_first_whatever_the_time_format() -> None:
    case = {"case_no": "CASE-20261103-000001", "history": [
        {"at": "2026-11-03T01:00:01.500000+00:00", "kind": "opened", "message": "Opened"},
        {"at": "2026-11-03T01:00:03+00:00", "kind": "resolved", "message": "Resolved"}]}
    invoice = {"timeline": [{"at": "2026-11-03T01:00:00Z", "kind": "accepted", "message": "Accepted"},
                            {"at": "2026-11-03T01:00:02.250Z", "kind": "submitted", "message": "Submitted"}]}
    steps = evidence.merged_timeline(case, invoice)
    assert [s["kind"] for s in steps] == ["accepted", "opened", "submitted", "resolved"]
    assert [s["source"] for s in steps] == ["invoice", "case", "invoice", "case"]
    assert evidence.merged_timeline(case, None)[0]["kind"] == "opened", "no invoice: the case's history alone"


def test_wrapped_lines_fit_their_width_and_lose_nothing() -> None:
    from services.issuer.invoices import document

    pdf = document.new_pdf(title="wrap", orientation="P", page="A4")
    pdf.set_font("cjk", size=7)
    pdf.add_page()
    text = "Attempt 3 failed after 36 ms: HTTP 503 税务机关暂时无法访问（模拟故障）; retry later " * 6 + "长" * 300
    lines = document.wrap(pdf, text + "\nerror=HTTP 503", 80)
    assert len(lines) > 10 and lines[-1] == "error=HTTP 503"
    assert all(pdf.get_string_width(line) <= 80 + 0.01 for line in lines), "each line fits"
    assert "".join(lines[:-1]).replace(" ", "") == text.replace(" ", ""), "nothing lost but the spaces broken at"
    one = document.cut(pdf, text, 50)
    assert one.endswith("…") and pdf.get_string_width(one) <= 50 + 0.01 and text.startswith(one[:-1])
    assert document.cut(pdf, "short", 50) == "short"
    assert document.finish(pdf).startswith(b"%PDF")  # and the font file it read is closed again


def test_the_embedded_font_is_the_simplified_chinese_face() -> None:
    import os

    import cvttf_NotoSansCJK_Regular as noto  # type: ignore[import-untyped]
    from fontTools.ttLib import TTFont  # type: ignore[import-untyped]

    from services.issuer.invoices import document

    with TTFont(document.font_path(), lazy=True) as sc, TTFont(
            os.path.join(os.path.dirname(noto.__file__), "NotoSansCJKtc-Regular.otf"), lazy=True) as tc:
        _same_but_simplified(sc, tc)


def _same_but_simplified(sc: Any, tc: Any) -> None:
    assert sc["name"].getDebugName(6) == "NotoSansCJKsc-Regular" and "CJK SC" in sc["name"].getDebugName(4)
    sc_map, tc_map = sc.getBestCmap(), tc.getBestCmap()
    # 票, 角 (of an amount in capitals), 通 (普通发票) and 名 (名称) are drawn differently in Simplified and Traditional
    differ = [ch for ch in "骨票角令通名" if sc_map[ord(ch)] != tc_map[ord(ch)]]
    assert differ == list("骨票角令通名"), "where the two forms differ, the Simplified one"
    assert all(sc_map[ord(ch)] == tc_map[ord(ch)] for ch in "发号码税额"), "a character of one form keeps it"


def test_the_reports_cases_table_wraps_a_long_outcome_and_loses_none_of_it() -> None:
    import subprocess

    from fapiao.infra.tools import ensure_pdftoppm

    outcome = ("Resolved: visible at the tax authority after 3 resyncs, receipt R-20261103-000123; 买方已在电子税务局"
               "查到该发票，金额与税额一致，无需重开。 ") * 3 + "END-OF-OUTCOME"
    s = _summary()
    s["cases"]["items"][0]["resolution"] = outcome
    done = subprocess.run([str(ensure_pdftoppm().with_name("pdftotext")), "-", "-"], input=report.report_pdf(s),
                          capture_output=True, timeout=60, check=True)
    words = "".join(done.stdout.decode().split())
    assert "".join(outcome.split()) in words, "every word of the outcome, in order, none cut"


def test_the_remarks_name_the_blue_invoice_of_a_red_one_and_what_is_left_of_a_blue_one() -> None:
    from services.issuer.invoices import document

    red = {"invoice": {"remarks": "退货"}, "status": "confirmed", "red_letter_of": "26120300000000000001"}
    assert document.remarks(red) == "被红冲蓝字发票号码：26120300000000000001　退货"
    partly = {"invoice": {}, "status": "confirmed",
              "red_letter": {"red_letter_of": None, "red_lettered_total": "113.00", "remaining_total": "113.00"}}
    assert document.remarks(partly) == "已部分红冲 ¥113.00，余额 ¥113.00"
    whole = {**partly, "status": "red_lettered"}  # the watermark says it; the remarks stay the invoice's own
    assert document.remarks(whole) == "" and document.red_letter_of(whole) is None
    assert document.remarks({"invoice": {"remarks": "x"}, "status": "confirmed", "red_letter": None}) == "x"


def test_deriving_the_sc_face_leaves_no_file_open(tmp_path: Any) -> None:
    """A cold cache (the first PDF on a machine or a new font package) derives the face; the two lazily
    opened fonts must be closed, or the collector's ResourceWarning fails whichever later test it lands in."""
    import gc
    import os
    import warnings

    import cvttf_NotoSansCJK_Regular as noto  # type: ignore[import-untyped]

    from services.issuer.invoices import document

    source = os.path.join(os.path.dirname(noto.__file__), "NotoSansCJKtc-Regular.otf")
    target = str(tmp_path / "sc.otf")
    gc.collect()  # what earlier tests left for the collector is theirs, not this one's
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        document._simplified_face(source, target)
        gc.collect()
    assert os.path.getsize(target) > 1_000_000
    fonts = [str(w.message) for w in seen if issubclass(w.category, ResourceWarning) and ".otf" in str(w.message)]
    assert not fonts, fonts
