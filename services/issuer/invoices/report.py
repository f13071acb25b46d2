"""The month's report (月度报告): GET /v1/summaries/{month} as a page to read, print or mail — HTML or PDF.

Both show, from the summary's JSON and nothing else: the counts and amounts (blue, red and net) here and at the
tax authority, whether the two sides agree and the differences, the month's invoices by state, the gaps among
them by kind and age, the cases about them and their outcomes, and a small chart of each day's issued invoices
against the confirmations that day. The HTML is one self-contained page (inline CSS, the chart an inline SVG, no
script) whose figures carry `data-figure` names, so a program can read them back; every text from a tenant (a
case's note) is escaped. The PDF (A4, the invoices' embedded CJK font) draws the same chart with lines and bars.
Rendering the PDF is blocking: the route runs it in a thread.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from html import escape
from typing import Any

from fpdf import FPDF

from services.issuer.invoices import document

__all__ = ["AGES", "report_html", "report_pdf"]

AGES = (("lt_1m", "< 1 min"), ("1m_10m", "1–10 min"), ("10m_1h", "10 min–1 h"), ("1h_1d", "1 h–1 d"),
        ("gt_1d", "> 1 d"))
COLOURS = (("blue", "蓝字 blue"), ("red", "红字 red"), ("net", "净额 net"))
ISSUED, CONFIRMED = (70, 110, 190), (40, 150, 80)  # the chart's two series
MAX_CASES, MAX_DIFFERENCES = 40, 30  # rows the page shows; the JSON, CSV and XLSX hold them all


def _gaps(s: dict[str, Any]) -> dict[str, dict[str, int]]:
    by: dict[str, dict[str, int]] = {}
    for g in s.get("gaps") or []:
        by.setdefault(g["kind"], {})[g["age"]] = int(g["count"])
    return dict(sorted(by.items()))


def _yuan(amount: str | None) -> str:
    """¥1234.50 or -¥226.00 (a red total); empty for none."""
    if amount is None:
        return ""
    value = Decimal(str(amount))
    return f"{'-' if value < 0 else ''}¥{abs(value):.2f}"


def _day(d: str) -> int:
    return date.fromisoformat(d).day


# --- HTML ---------------------------------------------------------------------------------------------------------

_CSS = """
body{font-family:"Noto Sans CJK SC","Noto Sans SC","PingFang SC","Microsoft YaHei",sans-serif;margin:2em auto;
max-width:60em;color:#222;padding:0 1em}
h1{color:#96281e;font-weight:500;margin-bottom:.2em}h2{color:#96281e;font-weight:500;margin-top:1.6em;
border-bottom:1px solid #e4c8c4}table{border-collapse:collapse;margin:.5em 0}th,td{padding:.25em .7em;
border-bottom:1px solid #eee;text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}
td{overflow-wrap:anywhere}table.cases td{font-size:.85em}
.ok{color:#287a3c}.bad{color:#b2401e}.muted{color:#777;font-size:.9em}svg text{font-size:10px;fill:#555}
"""


def _td(value: Any, figure: str | None = None, *, number: bool = True) -> str:
    attr = f' data-figure="{escape(figure)}"' if figure else ""
    cls = ' class="n"' if number else ""
    return f"<td{cls}{attr}>{escape(str(value))}</td>"


def _chart_svg(daily: list[dict[str, Any]]) -> str:
    """Bars side by side for each day: issued, then confirmed; the scale is the busiest day's count."""
    if not daily:
        return ""
    top = max([1] + [max(int(d["issued"]), int(d["confirmed"])) for d in daily])
    slot, bar, height, left, base = 18, 7, 120, 30, 140
    width = left + slot * len(daily) + 10
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" height="{base + 40}" '
             f'viewBox="0 0 {width} {base + 40}" aria-label="issued and confirmed invoices by day" '
             'data-chart="daily">',
             f'<line x1="{left}" y1="{base}" x2="{width - 5}" y2="{base}" stroke="#999"/>',
             f'<text x="{left - 4}" y="{base - height + 4}" text-anchor="end">{top}</text>',
             f'<text x="{left - 4}" y="{base + 4}" text-anchor="end">0</text>']
    for i, d in enumerate(daily):
        x = left + i * slot + 2
        for j, (series, colour) in enumerate((("issued", ISSUED), ("confirmed", CONFIRMED))):
            n = int(d[series])
            h = round(height * n / top, 1)
            parts.append(f'<rect x="{x + j * bar}" y="{base - h}" width="{bar - 1}" height="{h}" '
                         f'fill="rgb{colour}" data-date="{escape(d["date"])}" data-series="{series}" '
                         f'data-value="{n}"><title>{escape(d["date"])}: {n} {series}</title></rect>')
        if _day(d["date"]) in (1, 5, 10, 15, 20, 25) or i == len(daily) - 1:
            parts.append(f'<text x="{x + bar}" y="{base + 14}" text-anchor="middle">{_day(d["date"])}</text>')
    legend_y = base + 32
    parts.append(f'<rect x="{left}" y="{legend_y - 8}" width="10" height="8" fill="rgb{ISSUED}"/>'
                 f'<text x="{left + 14}" y="{legend_y}">开具 issued</text>'
                 f'<rect x="{left + 90}" y="{legend_y - 8}" width="10" height="8" fill="rgb{CONFIRMED}"/>'
                 f'<text x="{left + 104}" y="{legend_y}">确认 confirmed at the authority</text>')
    parts.append("</svg>")
    return "".join(parts)


def report_html(s: dict[str, Any], *, now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    out: list[str] = []
    add = out.append
    add(f'<!doctype html><html lang="zh-CN"><head><meta charset="utf-8"><title>月度报告 {escape(s["month"])} '
        f'{escape(s["seller_tax_id"])}</title><style>{_CSS}</style></head><body>')
    add(f'<h1>月度报告 Monthly report <span data-figure="month">{escape(s["month"])}</span></h1>')
    agree = ('<span class="ok" data-figure="matches">yes</span> — both sides agree' if s["matches"] else
             '<span class="bad" data-figure="matches">no</span> — the two sides differ (see Differences)')
    add(f'<p>Seller <b data-figure="seller_tax_id">{escape(s["seller_tax_id"])}</b>, '
        f'{escape(s["period"]["from"])} – {escape(s["period"]["to"])}. Here and at the tax authority: {agree}.</p>')

    add("<h2>发票汇总 Counts and amounts</h2><table><tr><th></th><th>invoices here</th><th>total here</th>"
        "<th>amount here</th><th>tax here</th><th>at the authority</th><th>total there</th></tr>")
    for colour, label in COLOURS:
        o, t = s["ours"].get(colour) or {}, s["authority"].get(colour) or {}
        add(f"<tr><th>{label}</th>" + "".join(
            _td(side.get(key, ""), f"{colour}.{key}.{where}") for side, where, key in (
                (o, "here", "count"), (o, "here", "total"), (o, "here", "total_amount"), (o, "here", "total_tax"),
                (t, "authority", "count"), (t, "authority", "total"))) + "</tr>")
    add("</table>")
    skipped = {k: v for k, v in (s.get("not_expected_at_authority") or {}).items() if v}
    if skipped:
        add("<p>Not expected at the authority: " + ", ".join(
            f'<span data-figure="not_expected.{escape(k)}">{v}</span> {escape(k)}' for k, v in skipped.items())
            + "</p>")

    add("<h2>状态 The month's invoices by state</h2><table><tr>" + "".join(
        f"<th>{escape(k)}</th>" for k in (s.get("states") or {})) + "</tr><tr>" + "".join(
        _td(v, f"state.{k}") for k, v in (s.get("states") or {}).items()) + "</tr></table>")

    add("<h2>差异 Gaps by kind and age</h2>")
    gaps = _gaps(s)
    if gaps:
        add("<table><tr><th>kind</th>" + "".join(f"<th>{label}</th>" for _, label in AGES) + "</tr>")
        for kind, row in gaps.items():
            add(f"<tr><th>{escape(kind)}</th>" + "".join(
                _td(row.get(age, 0), f"gap.{kind}.{age}") for age, _ in AGES) + "</tr>")
        add("</table>")
    else:
        add('<p class="ok" data-figure="no_gaps">No gaps: every invoice of the month is confirmed or settled.</p>')

    cases = s.get("cases") or {"by_status": {}, "items": [], "total": 0}
    add(f'<h2>案件 Cases (<span data-figure="cases.total">{int(cases.get("total", 0))}</span>)</h2>')
    if cases.get("by_status"):
        add("<p>" + ", ".join(f'<span data-figure="cases.{escape(k)}">{v}</span> {escape(k)}'
                              for k, v in cases["by_status"].items()) + "</p>")
        add('<table class="cases"><tr><th>case</th><th>invoice</th><th>status</th><th>opened by</th><th>opened</th>'
            "<th>resolved</th><th>outcome</th><th>note</th></tr>")
        for c in cases["items"][:MAX_CASES]:
            add("<tr>" + "".join(_td(c.get(k) or "", number=False) for k in (
                "case_no", "number", "status", "opened_by")) + "".join(
                _td((c.get(k) or "")[:19].replace("T", " "), number=False) for k in ("opened_at", "resolved_at"))
                + _td(c.get("resolution") or "", number=False) + _td(c.get("note") or "", number=False) + "</tr>")
        add("</table>")
        if len(cases["items"]) > MAX_CASES or cases.get("truncated"):
            add('<p class="muted">… more cases: the JSON, CSV and XLSX of this month hold them.</p>')
    else:
        add("<p>No case about this month's invoices.</p>")

    add("<h2>每日 Issued and confirmed, day by day</h2>")
    daily = s.get("daily") or []
    add(_chart_svg(daily))
    add(f'<p class="muted">In all: <span data-figure="daily.issued">{sum(int(d["issued"]) for d in daily)}</span> '
        f'issued, <span data-figure="daily.confirmed">{sum(int(d["confirmed"]) for d in daily)}</span> confirmed '
        "on a day of the month (a confirmation after the month's end is not drawn).</p>")

    if s["differences"]:
        add("<h2>差异明细 Differences</h2><p>" + ", ".join(
            f'<span data-figure="difference.{escape(k)}">{v}</span> {escape(k.replace("_", " "))}'
            for k, v in sorted(s["difference_counts"].items())) + "</p>")
        add("<table><tr><th>number</th><th>kind</th><th>here</th><th>at the authority</th></tr>")
        for d in s["differences"][:MAX_DIFFERENCES]:
            o, t = d.get("ours") or {}, d.get("authority") or {}
            add("<tr>" + _td(d["number"], number=False) + _td(d["kind"].replace("_", " "), number=False)
                + _td(f"{o['state']} {o['total']}" if o else "—", number=False)
                + _td(f"{t['total']} (receipt {t['receipt_no']})" if t else "—", number=False) + "</tr>")
        add("</table>")
    add(f'<p class="muted">Fapiao Sync · {now:%Y-%m-%d %H:%M} UTC</p></body></html>')
    return "\n".join(out)


# --- PDF ----------------------------------------------------------------------------------------------------------

def report_pdf(s: dict[str, Any], *, now: datetime | None = None) -> bytes:
    now = now or datetime.now(UTC)
    pdf = document.new_pdf(title=f"月度报告 {s['month']} {s['seller_tax_id']}", orientation="P", page="A4",
                           auto_break=15)
    pdf.set_margins(15, 15, 15)
    width = 180.0

    def footer() -> None:
        pdf.set_y(-12)
        pdf.set_font("cjk", size=7)
        pdf.set_text_color(110, 110, 110)
        pdf.cell(width, 4, f"{s['seller_tax_id']} · {s['month']} · Fapiao Sync · {now:%Y-%m-%d %H:%M} UTC · "
                           f"page {pdf.page_no()}", align="C")
        pdf.set_text_color(0, 0, 0)

    pdf.footer = footer  # type: ignore[method-assign]
    pdf.add_page()

    def heading(text: str) -> None:
        if pdf.get_y() > pdf.h - 50:
            pdf.add_page()
        pdf.ln(3)
        pdf.set_font("cjk", size=11)
        pdf.set_text_color(*document.INK)
        pdf.cell(width, 6, text, new_x="LMARGIN", new_y="NEXT")
        pdf.set_text_color(0, 0, 0)

    def row(cells: list[tuple[float, str]], *, size: float = 8, bold: bool = False, border: str = "",
            numbers: bool = True) -> None:
        pdf.set_font("cjk", size=size)
        if bold:
            pdf.set_text_color(*document.INK)
        x = 15.0
        for w, text in cells:
            pdf.set_xy(x, pdf.get_y())
            pdf.cell(w, 5, text, border=border, align="R" if numbers and x > 15.0 else "L")
            x += w
        pdf.set_text_color(0, 0, 0)
        pdf.ln(5)

    def line(text: str, size: float = 8) -> None:
        pdf.set_font("cjk", size=size)
        for part in document.wrap(pdf, text, width):
            pdf.set_x(15)
            pdf.cell(width, 5, part, new_x="LMARGIN", new_y="NEXT")

    pdf.set_font("cjk", size=16)
    pdf.set_text_color(*document.INK)
    pdf.cell(width, 9, f"月度报告 Monthly report {s['month']}", new_x="LMARGIN", new_y="NEXT")
    pdf.set_text_color(0, 0, 0)
    line(f"Seller {s['seller_tax_id']}, {s['period']['from']} – {s['period']['to']}. Here and at the tax authority: "
         + ("both sides agree." if s["matches"] else "the two sides differ (see Differences)."), size=9)

    heading("发票汇总 Counts and amounts")
    widths = (30.0, 22.0, 30.0, 28.0, 22.0, 22.0, 26.0)
    row(list(zip(widths, ("", "here", "total here", "amount here", "tax here", "authority", "total there"),
                 strict=True)), bold=True, border="B")
    for colour, label in COLOURS:
        o, t = s["ours"].get(colour) or {}, s["authority"].get(colour) or {}
        values = (label, str(o.get("count", "")), _yuan(o.get("total")), _yuan(o.get("total_amount")),
                  _yuan(o.get("total_tax")), str(t.get("count", "")), _yuan(t.get("total")))
        row(list(zip(widths, values, strict=True)))
    skipped = {k: v for k, v in (s.get("not_expected_at_authority") or {}).items() if v}
    if skipped:
        line("Not expected at the authority: " + ", ".join(f"{v} {k}" for k, v in skipped.items()))

    heading("状态 The month's invoices by state")
    line(", ".join(f"{k}: {v}" for k, v in (s.get("states") or {}).items()) or "No invoices this month.")

    heading("差异 Gaps by kind and age")
    gaps = _gaps(s)
    if gaps:
        gw = [40.0] + [28.0] * len(AGES)
        row(list(zip(gw, ["kind"] + [label for _, label in AGES], strict=True)), bold=True, border="B")
        for kind, counts in gaps.items():
            row(list(zip(gw, [kind] + [str(counts.get(a, 0)) for a, _ in AGES], strict=True)))
    else:
        line("No gaps: every invoice of the month is confirmed or settled.")

    cases = s.get("cases") or {"by_status": {}, "items": [], "total": 0}
    heading(f"案件 Cases ({int(cases.get('total', 0))})")
    if cases.get("by_status"):
        line(", ".join(f"{k}: {v}" for k, v in cases["by_status"].items()))
        cw = (38.0, 40.0, 17.0, 26.0, 59.0)
        row(list(zip(cw, ("case", "invoice", "status", "opened (UTC)", "outcome"), strict=True)), bold=True,
            border="B", size=7, numbers=False)
        for c in cases["items"][:MAX_CASES]:
            pdf.set_font("cjk", size=7)
            # The outcome in full, wrapped in its column (4 mm a further line); the row is kept on one page.
            outcome = document.wrap(pdf, c.get("resolution") or "", cw[4] - 1)
            if pdf.get_y() + 5 + 4 * (len(outcome) - 1) > pdf.h - 15:
                pdf.add_page()
            row(list(zip(cw, (c["case_no"], c["number"], c["status"], (c.get("opened_at") or "")[:16].replace(
                "T", " "), outcome[0]), strict=True)), size=7, numbers=False)
            for part in outcome[1:]:
                pdf.set_xy(15 + sum(cw[:4]), pdf.get_y() - 1)
                pdf.cell(cw[4], 4, part)
                pdf.ln(5)
        if len(cases["items"]) > MAX_CASES or cases.get("truncated"):
            line("… more cases: the JSON, CSV and XLSX of this month hold them.", size=7)
    else:
        line("No case about this month's invoices.")

    daily = s.get("daily") or []
    heading("每日 Issued and confirmed, day by day")
    if pdf.get_y() > pdf.h - 75:
        pdf.add_page()
    _chart_pdf(pdf, daily, y=pdf.get_y() + 2)
    line(f"In all: {sum(int(d['issued']) for d in daily)} issued, {sum(int(d['confirmed']) for d in daily)} "
         "confirmed on a day of the month (a confirmation after the month's end is not drawn).", size=7)

    if s["differences"]:
        heading("差异明细 Differences")
        line(", ".join(f"{v} {k.replace('_', ' ')}" for k, v in sorted(s["difference_counts"].items())))
        dw = (45.0, 45.0, 45.0, 45.0)
        row(list(zip(dw, ("number", "kind", "here", "at the authority"), strict=True)), bold=True, border="B",
            size=7, numbers=False)
        for d in s["differences"][:MAX_DIFFERENCES]:
            o, t = d.get("ours") or {}, d.get("authority") or {}
            row(list(zip(dw, (d["number"], d["kind"].replace("_", " "), f"{o['state']} {o['total']}" if o else "—",
                              f"{t['total']}" if t else "—"), strict=True)), size=7, numbers=False)
    return document.finish(pdf)


def _chart_pdf(pdf: FPDF, daily: list[dict[str, Any]], *, y: float) -> None:
    """The HTML's chart in lines and bars: 50 mm high, one slot a day."""
    if not daily:
        return
    top = max([1] + [max(int(d["issued"]), int(d["confirmed"])) for d in daily])
    left, height, base = 25.0, 45.0, y + 48.0
    slot = min(5.5, 165.0 / len(daily))
    bar = slot * 0.4
    pdf.set_draw_color(150, 150, 150)
    pdf.line(left, base, left + slot * len(daily), base)
    pdf.set_font("cjk", size=6)
    pdf.set_text_color(90, 90, 90)
    for value, at in ((top, base - height), (0, base)):
        pdf.set_xy(left - 10, at - 2)
        pdf.cell(8, 4, str(value), align="R")
    for i, d in enumerate(daily):
        x = left + i * slot + slot * 0.1
        for j, (series, colour) in enumerate((("issued", ISSUED), ("confirmed", CONFIRMED))):
            h = height * int(d[series]) / top
            if h > 0:
                pdf.set_fill_color(*colour)
                pdf.rect(x + j * bar, base - h, bar * 0.9, h, style="F")
        if _day(d["date"]) in (1, 5, 10, 15, 20, 25) or i == len(daily) - 1:
            pdf.set_xy(x - 2, base + 1)
            pdf.cell(bar * 2 + 4, 3, str(_day(d["date"])), align="C")
    legend = base + 6
    for k, (label, colour) in enumerate((("开具 issued", ISSUED), ("确认 confirmed at the authority", CONFIRMED))):
        pdf.set_fill_color(*colour)
        pdf.rect(left + k * 40, legend, 3, 3, style="F")
        pdf.set_xy(left + k * 40 + 4, legend - 0.5)
        pdf.cell(34, 4, label)
    pdf.set_text_color(0, 0, 0)
    pdf.set_y(legend + 6)
