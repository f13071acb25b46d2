"""A case's evidence pack (保留证据): what a finance team attaches when it writes to the tax bureau about an invoice.

One ZIP holds
- `evidence.pdf`: the case (number, status, who opened it and when, the outcome), the invoice (number, date,
  buyer, seller, totals, receipt) and one timeline, oldest first, of every step both sides recorded: the
  invoice's (accepted, each submission attempt and the tax store's answer to it, the receipt, the reconciler's
  findings) and the case's (opened, each check at the authority, resyncs, alerts, the resolution), each with its
  time in UTC and what the authority answered (error code, receipt number) where it did;
- `evidence.json`: the same facts as data — the case as GET /v1/cases/{case_no} shows it (with its history),
  the invoice as GET /v1/invoices/{id} shows it (with its timeline), and the merged timeline of the PDF;
- `invoice.pdf`: the invoice's own page (document.invoice_pdf), when the invoice is still there.

The PDF is A4 portrait with the same embedded CJK font as the invoice page; it runs on as many pages as the
timeline needs. Rendering is blocking: the route runs it in a thread, two at a time.
"""

from __future__ import annotations

import io
import zipfile
from datetime import UTC, datetime
from typing import Any

from services.issuer.invoices import document

__all__ = ["ANSWER_KEYS", "evidence_facts", "evidence_pdf", "evidence_zip", "merged_timeline"]

ANSWER_KEYS = ("receipt_no", "error_code", "code", "error", "last_error", "result", "status", "attempt", "trigger",
               "how", "resolution", "case_no", "kind", "note")
"""The details of a step the PDF prints (the authority's answer and what the step was); the JSON keeps them all."""


def _when(at: str) -> datetime:
    t = datetime.fromisoformat(at)
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def merged_timeline(case: dict[str, Any], invoice: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The invoice's timeline and the case's history as one list, oldest first (ties: the invoice's first)."""
    steps = [{"at": e["at"], "source": "invoice", "kind": e["kind"], "message": e["message"],
              "detail": e.get("detail")} for e in (invoice or {}).get("timeline", [])]
    steps += [{"at": h["at"], "source": "case", "kind": h["kind"], "message": h["message"], "detail": h.get("detail")}
              for h in case.get("history", [])]
    order = {"invoice": 0, "case": 1}
    return sorted(steps, key=lambda s: (_when(s["at"]), order[s["source"]]))


def evidence_facts(case: dict[str, Any], invoice: dict[str, Any] | None, *,
                   now: datetime | None = None) -> dict[str, Any]:
    """The pack's JSON: `case` and `invoice` as their GETs answer them, the merged `timeline`."""
    return {"case_no": case["case_no"], "generated_at": (now or datetime.now(UTC)).isoformat(),
            "case": case, "invoice": invoice, "timeline": merged_timeline(case, invoice)}


def _utc(at: str) -> str:
    return _when(at).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def _answer(detail: dict[str, Any] | None, message: str) -> str:
    """The step's details worth printing beside its message (those the message does not already say)."""
    if not detail:
        return ""
    parts = [f"{k}={detail[k]}" for k in ANSWER_KEYS
             if detail.get(k) not in (None, "", [], {}) and " ".join(str(detail[k]).split()) not in message]
    return " · ".join(parts)


def evidence_pdf(facts: dict[str, Any]) -> bytes:
    case, shown = facts["case"], facts["invoice"]
    # pages are broken here, a timeline step kept whole where it fits
    pdf = document.new_pdf(title=f"证据 Evidence {case['case_no']}", orientation="P", page="A4")
    pdf.set_margins(15, 15, 15)
    width = 180.0

    def footer() -> None:
        pdf.set_y(-12)
        pdf.set_font("cjk", size=7)
        pdf.set_text_color(110, 110, 110)
        pdf.cell(width, 4, f"{case['case_no']} · Fapiao Sync · {facts['generated_at'][:19]} UTC · "
                           f"page {pdf.page_no()}", align="C")
        pdf.set_text_color(0, 0, 0)

    pdf.footer = footer  # type: ignore[method-assign]
    pdf.add_page()

    def heading(s: str) -> None:
        if pdf.get_y() > pdf.h - 40:
            pdf.add_page()
        pdf.ln(2)
        pdf.set_font("cjk", size=11)
        pdf.set_text_color(*document.INK)
        pdf.cell(width, 6, s, new_x="LMARGIN", new_y="NEXT")
        pdf.set_text_color(0, 0, 0)

    def pairs(rows: list[tuple[str, Any]]) -> None:
        pdf.set_font("cjk", size=8)
        for label, value in rows:
            if value in (None, ""):
                continue
            for i, text in enumerate(document.wrap(pdf, str(value), width - 45)):
                if pdf.get_y() > pdf.h - 20:
                    pdf.add_page()
                pdf.set_x(15)
                pdf.cell(45, 5, label if i == 0 else "")
                pdf.cell(width - 45, 5, text, new_x="LMARGIN", new_y="NEXT")

    pdf.set_font("cjk", size=15)
    pdf.set_text_color(*document.INK)
    pdf.cell(width, 8, f"发票核查证据 Evidence of case {case['case_no']}", new_x="LMARGIN", new_y="NEXT")
    pdf.set_text_color(0, 0, 0)
    heading("案件 The case")
    pairs([("案件编号 Case", case["case_no"]), ("状态 Status", case["status"]),
           ("提出方 Opened by", case.get("opened_by")),
           ("提出时间 Opened at", _utc(case["opened_at"]) if case.get("opened_at") else None),
           ("解决时间 Resolved at", _utc(case["resolved_at"]) if case.get("resolved_at") else None),
           ("结论 Outcome", case.get("resolution")),
           ("备注 Note", case.get("note")), ("重新提交 Resyncs", case.get("resyncs")),
           ("税务机关回执 Receipt", case.get("receipt_no")), ("最后错误 Last error", case.get("last_error"))])
    heading("发票 The invoice")
    if shown is None:
        pairs([("发票号码 Number", case["number"]), ("", "the invoice is no longer held by the issuer")])
    else:
        inv = shown["invoice"]
        pairs([("发票号码 Number", shown["number"]), ("开票日期 Issue date", shown["issue_date"]),
               ("种类 Kind", document.TITLES.get(shown["kind"], shown["kind"])),
               ("购买方 Buyer", f"{inv['buyer']['name']} ({inv['buyer'].get('tax_id') or '—'})"),
               ("销售方 Seller", f"{inv['seller']['name']} ({inv['seller'].get('tax_id') or '—'})"),
               ("金额 Amount", f"¥{shown['total_amount']}"), ("税额 Tax", f"¥{shown['total_tax']}"),
               ("价税合计 Total", f"¥{shown['total']} {shown['currency']}"),
               ("状态 Status", shown["status"]), ("税务机关回执 Receipt", shown.get("receipt_no")),
               ("说明 Reason", shown.get("reason")), ("内部编号 Id", shown["id"])])
    heading(f"时间线 Timeline ({len(facts['timeline'])} steps, times in UTC)")
    cols = ((0, 36, "时间 Time"), (36, 16, "来源 Side"), (52, 22, "步骤 Step"), (74, 106, "经过与答复 What happened"))
    pdf.set_font("cjk", size=7)
    pdf.set_text_color(*document.INK)
    for x, w, label in cols:
        pdf.set_x(15 + x)
        pdf.cell(w, 5, label, border="B")
    pdf.ln(5)
    pdf.set_text_color(0, 0, 0)
    for step in facts["timeline"]:
        what = " ".join(step["message"].split())
        answer = _answer(step.get("detail"), what)
        text = f"{what}\n{answer}" if answer else what
        lines = document.wrap(pdf, text, cols[3][1] - 1)
        if pdf.get_y() + 4 * len(lines) > pdf.h - 17:
            pdf.add_page()
        y = pdf.get_y()
        for (x, w, _), value in zip(cols[:3], (_utc(step["at"]), step["source"], step["kind"]), strict=True):
            pdf.set_xy(15 + x, y)
            pdf.cell(w, 4, value)
        for i, text_line in enumerate(lines):
            if y + 4 * (i + 1) > pdf.h - 15:  # a step longer than a page goes on on the next
                pdf.add_page()
                y = pdf.get_y() - 4 * i
            pdf.set_xy(15 + cols[3][0], y + 4 * i)
            pdf.cell(cols[3][1], 4, text_line)
        pdf.set_y(y + 4 * max(1, len(lines)) + 1)
    return document.finish(pdf)


def evidence_zip(facts: dict[str, Any]) -> bytes:
    """evidence.pdf, evidence.json and invoice.pdf, deflated. Blocking: run it in a thread."""
    import orjson

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("evidence.pdf", evidence_pdf(facts))
        z.writestr("evidence.json", orjson.dumps(facts, option=orjson.OPT_INDENT_2))
        if facts["invoice"] is not None:
            z.writestr("invoice.pdf", document.invoice_pdf(facts["invoice"]))
    return out.getvalue()
