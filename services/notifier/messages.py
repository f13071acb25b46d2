"""What a delivery says: the webhook body (JSON) and the e-mail (plain text + HTML, Chinese and English).

Pure functions of the stored payload, so every retry of a delivery sends the same bytes.
"""

from __future__ import annotations

import html
from collections import Counter
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

__all__ = ["EVENT_TYPES", "build_email", "webhook_payload"]

EVENT_TYPES = {
    "stuck": "invoice.stuck", "recovered": "invoice.recovered", "rejected": "invoice.rejected",
    "orphan": "invoice.orphan", "resolved": "case.resolved", "closed": "case.closed", "reminder": "case.reminder",
    "review_overdue": "invoice.review_overdue", "review_denied": "invoice.review_denied",
    "form_awaiting": "red_letter.awaiting", "form_rejected": "red_letter.rejected", "form_voided": "red_letter.voided",
    "form_expiring": "red_letter.expiring", "red_missing": "red_letter.red_invoice_missing",
}
DIGEST_TYPE = "invoice.alerts.digest"
PING_TYPE = "webhook.ping"

_TITLE = {
    "stuck": ("发票未能在税务系统中确认", "is not confirmed at the tax authority"),
    "recovered": ("发票已在税务系统中恢复可见", "is visible at the tax authority again"),
    "rejected": ("发票被税务机关拒绝", "was rejected by the tax authority"),
    "orphan": ("税务系统中发现未经本系统开具的发票", "is held by the tax authority but was never issued here"),
    "resolved": ("案件已解决，发票已可见", "case resolved, the invoice is visible"),
    "closed": ("案件已关闭", "case closed"),
    "reminder": ("案件仍未解决", "case still open"),
    "review_overdue": ("跨区域审核超时", "is held for cross-region review longer than agreed"),
    "review_denied": ("跨区域审核未通过", "was denied in cross-region review"),
    "form_awaiting": ("红字信息确认单待您确认", "has a red-letter form waiting for your confirmation"),
    "form_rejected": ("红字信息确认单被拒绝", "red-letter form rejected by the buyer"),
    "form_voided": ("红字信息确认单已作废", "red-letter form void, nobody confirmed it"),
    "form_expiring": ("红字信息确认单即将作废", "red-letter form void soon unless confirmed"),
    "red_missing": ("红字信息确认单已确认，但红字发票缺失", "red-letter form confirmed, its red invoice missing"),
}
_KIND_ZH = {"stuck": "未确认", "recovered": "已恢复", "rejected": "被拒绝", "orphan": "来源不明", "resolved": "已解决",
            "closed": "已关闭", "reminder": "提醒", "review_overdue": "审核超时", "review_denied": "审核未通过",
            "form_awaiting": "待确认", "form_rejected": "确认单被拒", "form_voided": "确认单作废",
            "form_expiring": "即将作废", "red_missing": "红字发票缺失"}


def _links(alert: dict[str, Any], issuer_url: str) -> dict[str, str]:
    """What the alerted tenant can open: a red-letter form's buyer gets the form (the invoice is the seller's:
    a 404 for the buyer), its seller the form and the invoice."""
    links = {}
    if alert.get("form_id"):
        links["form"] = f"{issuer_url}/v1/red-letter-forms/{alert['form_id']}"
    if alert.get("invoice_id") and alert.get("role") != "buyer":
        links["invoice"] = f"{issuer_url}/v1/invoices/{alert['invoice_id']}"
    if alert.get("case_no"):
        links["case"] = f"{issuer_url}/v1/cases/{alert['case_no']}"
    return links


def webhook_payload(*, kind: str, alerts: list[dict[str, Any]], created_at: str, issuer_url: str) -> dict[str, Any]:
    """The JSON body: one alert (`type` names it) or a digest of several (`invoice.alerts.digest`)."""
    if kind == "ping":
        return {"type": PING_TYPE, "timestamp": created_at, "data": {"message": "Fapiao Sync test delivery"}}
    items = [{**a, "type": EVENT_TYPES[a["kind"]], "links": _links(a, issuer_url)} for a in alerts]
    if kind == "single":
        return {"type": items[0]["type"], "timestamp": created_at, "data": items[0]}
    counts = Counter(a["kind"] for a in alerts)
    return {"type": DIGEST_TYPE, "timestamp": created_at,
            "data": {"count": len(items), "counts": dict(sorted(counts.items())), "alerts": items}}


def _amount(a: dict[str, Any]) -> str:
    return f"¥{a['total']}" if a.get("total") else "—"


def _buyer(a: dict[str, Any]) -> str:
    name, tax_id = a.get("buyer_name"), a.get("buyer_tax_id")
    return f"{name} ({tax_id})" if name and tax_id else name or tax_id or "—"


def _subject(kind: str, alerts: list[dict[str, Any]]) -> str:
    if kind == "ping":
        return "[Fapiao Sync] 测试邮件 / Test message"
    if kind == "single":
        a = alerts[0]
        zh, en = _TITLE[a["kind"]]
        case = f" ({a['case_no']})" if a.get("case_no") else ""
        return f"[Fapiao Sync] {zh}: {a['number']} / Invoice {a['number']} {en}{case}"
    counts = Counter(a["kind"] for a in alerts)
    zh = "，".join(f"{_KIND_ZH[k]} {n} 张" for k, n in sorted(counts.items()))
    en = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    return f"[Fapiao Sync] 发票提醒汇总：{zh} / Invoice alerts digest: {en}"


def _text_block(a: dict[str, Any], issuer_url: str) -> list[str]:
    zh, en = _TITLE[a["kind"]]
    lines = [
        f"发票 / Invoice {a['number']}: {zh} / {en}",
        f"  金额 Amount:      {_amount(a)}",
        f"  购买方 Buyer:     {_buyer(a)}",
        f"  开票日期 Issued:  {a.get('issue_date') or '—'}",
        f"  原因 Reason:      {a['reason']}",
    ]
    if a.get("case_no"):
        lines.append(f"  案件号 Case:      {a['case_no']}")
    if a.get("next_action"):
        lines.append(f"  下一步 Next:      {a['next_action']}")
    links = _links(a, issuer_url)
    for what, url in links.items():
        lines.append(f"  查看 See {what}:   {url}")
    if "invoice" in links:
        lines.append(f"  命令 Command:     fapiao invoice show {a['number']}")
    return lines


def _html_block(a: dict[str, Any], issuer_url: str) -> str:
    e = html.escape
    zh, en = _TITLE[a["kind"]]
    rows = [("金额 Amount", _amount(a)), ("购买方 Buyer", _buyer(a)), ("开票日期 Issued", a.get("issue_date") or "—"),
            ("原因 Reason", a["reason"])]
    if a.get("case_no"):
        rows.append(("案件号 Case", a["case_no"]))
    if a.get("next_action"):
        rows.append(("下一步 Next", a["next_action"]))
    cells = "".join(f"<tr><th align='left'>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in rows)
    links = " · ".join(f"<a href='{e(url)}'>{e(what)}</a>" for what, url in _links(a, issuer_url).items())
    return (f"<h3>发票 / Invoice {e(a['number'])}: {e(zh)} / {e(en)}</h3><table>{cells}</table>"
            + (f"<p>查看 See: {links}</p>" if links else ""))


def build_email(*, kind: str, alerts: list[dict[str, Any]], sender: str, recipients: list[str], message_id: str,
                issuer_url: str) -> EmailMessage:
    """One message for one delivery: plain text first, HTML alternative, UTF-8 throughout."""
    msg = EmailMessage()
    msg["Subject"] = _subject(kind, alerts)
    msg["From"] = sender
    # Several addresses: each sees only itself (the envelope carries them all; see channels.Mailer).
    msg["To"] = recipients[0] if len(recipients) == 1 else "undisclosed-recipients:;"
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(idstring=message_id, domain="fapiao-sync.local")
    msg["X-Fapiao-Delivery"] = message_id
    if kind == "ping":
        text = "这是一封测试邮件。This is a test message from Fapiao Sync: e-mail alerts reach you.\n"
        msg.set_content(text)
        msg.add_alternative(f"<p>{html.escape(text)}</p>", subtype="html")
        return msg
    intro = ("以下发票需要您关注。The following invoices need your attention."
             if len(alerts) > 1 else "以下发票需要您关注。The following invoice needs your attention.")
    text_parts = [intro, ""]
    for a in alerts:
        text_parts += [*_text_block(a, issuer_url), ""]
    text_parts.append("— Fapiao Sync")
    msg.set_content("\n".join(text_parts) + "\n")
    body = "".join(_html_block(a, issuer_url) for a in alerts)
    msg.add_alternative(f"<html><body><p>{html.escape(intro)}</p>{body}<p>— Fapiao Sync</p></body></html>",
                        subtype="html")
    return msg
