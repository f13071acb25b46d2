"""The invoice as a page people print and keep (版式文件): A5 landscape in the manner of a 数电票 — title by kind,
number and date, a QR code, buyer and seller, the lines, totals in figures and in capitals (大写), remarks —
with a CJK font embedded (subset), so it reads the same on any machine. Every line is printed: past what the
first page holds, the lines go on over further pages of the same size (see invoice_pdf).

The font is Noto Sans CJK in its Simplified-Chinese face (SC), as these invoices are written in Simplified
Chinese: its pip package ships the Traditional face (TC) only, whose glyph forms differ for some characters
(骨, 门, 说 …), so font_path() derives the SC face from it once — the file holds every form and says which is
Simplified in its `locl` feature for ZHS — and keeps it in a cache directory.

The QR code carries the fields a verifier needs, comma-separated: `01,<kind code>,<number>,<issue date YYYYMMDD>,
<total>,<check>`, with kind code 31 for a special VAT invoice (专票) and 32 for an ordinary one (普票), and
`check` the first 16 hex digits of the invoice's content hash, so a scan can be held against the stored content.
A voided invoice carries a watermark; one whose status is red-lettered says so; a red invoice (红字发票) is
stamped 红字 beside its title, names the blue invoice it reverses in its remarks and shows its negative total in
capitals with 负; a blue invoice reversed in part says how much is reversed and left.
"""

from __future__ import annotations

import io
import logging
import math
import os
import tempfile
from decimal import Decimal
from functools import cache
from importlib.metadata import version
from typing import Any

from fpdf import FPDF

from shared.capitals import in_capitals

__all__ = ["INK", "KIND_CODES", "LINES_PER_PAGE", "MAX_LINES", "TITLES", "cut", "font_path", "invoice_pdf",
           "page_count", "qr_payload", "wrap"]

logging.getLogger("fontTools").setLevel(logging.WARNING)  # it narrates every subset it makes at INFO

KIND_CODES = {"special": "31", "ordinary": "32"}
TITLES = {"special": "电子发票（增值税专用发票）", "ordinary": "电子发票（普通发票）"}
STATUS_WORDS = {"confirmed": "已在税务机关可见 visible at the tax authority", "voided": "已作废 voided",
                "red_lettered": "已红冲 red-lettered", "stuck": "未在税务机关可见 not yet at the tax authority",
                "rejected": "税务机关已拒绝 rejected by the tax authority"}
INK = (150, 40, 30)  # the brown-red of a 数电票's frame and labels
TOTALS_Y = 100  # mm from the top: the lines fill 66..98, then the totals, the remarks and the footer at 136
MAX_LINES = 6  # what fits between the header row and the totals, at 5 mm a line
LINES_PER_PAGE = 17  # on a continuation page: from below its header row (y 44) to above the footer (y 132)
FONT_NAME = "NotoSansCJKsc-Regular"  # the PostScript name a PDF's font dictionary carries (behind a subset tag)


def font_dir() -> str:
    """Where the derived SC face is kept: $FAPIAO_FONT_DIR, else the user's cache directory."""
    if os.environ.get("FAPIAO_FONT_DIR"):
        return os.environ["FAPIAO_FONT_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fapiao", "fonts")


@cache
def font_path() -> str:
    """The embedded CJK font, Noto Sans CJK SC: every document of the issuer uses it. Made on first use from
    the pip package's TC face (a few seconds) and then reused, by this and every later process."""
    import cvttf_NotoSansCJK_Regular as noto  # type: ignore[import-untyped]

    source = os.path.join(os.path.dirname(noto.__file__), "NotoSansCJKtc-Regular.otf")
    # The package's version and the file's size name the face, not its mtime: every fresh venv would derive
    # (and keep) another copy of the same 16 MB.
    stamp = f"{version('cvttf-notosanscjk-regular')}-{os.path.getsize(source)}"
    target = os.path.join(font_dir(), f"{FONT_NAME}-{stamp}.otf")
    if not os.path.exists(target):
        os.makedirs(font_dir(), exist_ok=True)
        _simplified_face(source, target)
    return target


def _simplified_face(source: str, target: str) -> None:
    """The SC face of a Noto Sans CJK region font: each character mapped to the glyph its `locl` feature picks
    for Simplified Chinese (ZHS), and the names saying SC. Only `cmap` and `name` are rewritten; the outlines
    are copied as they are. Written beside the target and renamed into place, so a concurrent maker is safe."""
    from fontTools.ttLib import TTFont  # type: ignore[import-untyped]

    # Both opened lazily, so each keeps its file open until closed: closed here (an open one left to the garbage
    # collector warns, and under the suite's -W error fails whichever test it happens in).
    with TTFont(source, lazy=True) as reader:
        simplified = _zhs_forms(reader)
    if not simplified:
        raise RuntimeError(f"{source} has no Simplified-Chinese forms (no locl for ZHS)")
    with TTFont(source, lazy=True, recalcBBoxes=False, recalcTimestamp=False) as font:
        for table in font["cmap"].tables:
            if table.isUnicode() and getattr(table, "cmap", None):
                for code, glyph in list(table.cmap.items()):
                    if glyph in simplified:
                        table.cmap[code] = simplified[glyph]
        for record in font["name"].names:
            record.string = record.toUnicode().replace("CJK TC", "CJK SC").replace("CJKtc", "CJKsc")
        _save_beside(font, target)


def _zhs_forms(reader: Any) -> dict[str, str]:
    """glyph -> its Simplified-Chinese form, from the `locl` feature of the font's ZHS language systems."""
    gsub = reader["GSUB"].table
    features = gsub.FeatureList.FeatureRecord
    simplified: dict[str, str] = {}
    for script in gsub.ScriptList.ScriptRecord:
        for lang in script.Script.LangSysRecord:
            if lang.LangSysTag != "ZHS ":
                continue
            for index in lang.LangSys.FeatureIndex:
                if features[index].FeatureTag != "locl":
                    continue
                for lookup_index in features[index].Feature.LookupListIndex:
                    lookup = gsub.LookupList.Lookup[lookup_index]
                    for sub in lookup.SubTable:
                        sub = sub.ExtSubTable if lookup.LookupType == 7 else sub
                        simplified.update(getattr(sub, "mapping", {}))
    return simplified


def _save_beside(font: Any, target: str) -> None:
    """Written beside the target and renamed into place, so a concurrent maker is safe."""
    fd, partial = tempfile.mkstemp(dir=os.path.dirname(target), suffix=".partial")
    os.close(fd)
    try:
        font.save(partial)
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


def new_pdf(*, title: str, orientation: str, page: str | tuple[float, float], auto_break: float | None = None) -> FPDF:
    """A document of the issuer's: the CJK font added as "cjk", its title and creator set; pages broken by hand
    unless `auto_break` gives the bottom margin at which fpdf breaks them itself. Hand it to `finish`."""
    pdf = FPDF(orientation=orientation, unit="mm", format=page)
    pdf.set_auto_page_break(auto=auto_break is not None, margin=auto_break or 0)
    pdf.add_font("cjk", fname=font_path())
    pdf.set_title(title)
    pdf.set_creator("Fapiao Sync")
    return pdf


def finish(pdf: FPDF) -> bytes:
    """The document's bytes; the font files fpdf keeps open (fontTools reads them lazily) closed."""
    try:
        return bytes(pdf.output())
    finally:
        for font in pdf.fonts.values():
            if (ttfont := getattr(font, "ttfont", None)) is not None:
                ttfont.close()


def red_letter_of(shown: dict[str, Any]) -> str | None:
    """The number of the blue invoice this one reverses, when it is a red invoice."""
    return shown.get("red_letter_of") or (shown.get("red_letter") or {}).get("red_letter_of")


def remarks(shown: dict[str, Any]) -> str:
    """备注 as printed: for a red invoice the blue one it reverses first; for a blue one reversed in part, what is
    reversed and what is left; then the invoice's own remarks."""
    own = shown["invoice"].get("remarks") or ""
    if blue := red_letter_of(shown):
        return "　".join(filter(None, [f"被红冲蓝字发票号码：{blue}", own]))
    standing = shown.get("red_letter") or {}
    reversed_total = Decimal(str(standing.get("red_lettered_total") or 0))
    if reversed_total and shown.get("status") != "red_lettered":
        left = Decimal(str(standing.get("remaining_total") or 0))
        return "　".join(filter(None, [f"已部分红冲 ¥{abs(reversed_total):.2f}，余额 ¥{left:.2f}", own]))
    return own


def page_count(lines: int) -> int:
    """How many pages an invoice of `lines` lines takes: one when they fit the first page's table, else the
    first page's MAX_LINES - 1 (its last row says where the rest are) and LINES_PER_PAGE on each further page."""
    if lines <= MAX_LINES:
        return 1
    return 1 + math.ceil((lines - (MAX_LINES - 1)) / LINES_PER_PAGE)


def _widths(pdf: FPDF, text: str) -> list[float]:
    """Each character's width in mm in the font in force, one measurement per distinct character and size.

    fpdf2's own line breaking measures the line again for each character it adds, which costs seconds for a few
    hundred lines of CJK text; summing widths of single characters ignores kerning, which these fonts hardly use."""
    cache: dict[tuple[str, float, str], float] = pdf.__dict__.setdefault("_fapiao_widths", {})
    out = []
    for ch in text:
        key = (pdf.font_family, pdf.font_size_pt, ch)
        if key not in cache:
            cache[key] = pdf.get_string_width(ch)
        out.append(cache[key])
    return out


def wrap(pdf: FPDF, text: str, width: float) -> list[str]:
    """`text` in lines of at most `width` mm (the font in force), broken at a space where there is one in the
    line, else between two characters (as Chinese is); a line break in the text starts a new line."""
    lines: list[str] = []
    for para in text.split("\n"):
        para = " ".join(para.split())
        widths = _widths(pdf, para)
        start, used, space = 0, 0.0, -1
        for i, (ch, w) in enumerate(zip(para, widths, strict=True)):
            if ch == " ":
                space = i
            if used + w > width and i > start:
                end = space if space > start else i
                lines.append(para[start:end])
                start = end + 1 if end == space else end
                used, space = sum(widths[start:i + 1]), -1
            else:
                used += w
        lines.append(para[start:])
    return lines


def cut(pdf: FPDF, text: str, width: float) -> str:
    """One line of at most `width` mm (the font in force), cut with an ellipsis."""
    text = " ".join(text.split())
    widths = _widths(pdf, text)
    if sum(widths) <= width:
        return text
    room, used = width - pdf.get_string_width("…"), 0.0
    for i, w in enumerate(widths):
        if used + w > room:
            return text[:i] + "…"
        used += w
    return text


def qr_payload(invoice: dict[str, Any], content_hash: str) -> str:
    date = str(invoice["issue_date"]).replace("-", "")
    return ",".join(["01", KIND_CODES[invoice["kind"]], invoice["number"], date, str(invoice["total"]),
                     content_hash[:16].upper()])


def _qr_png(payload: str) -> io.BytesIO:
    import segno

    out = io.BytesIO()
    segno.make(payload, error="m", micro=False).save(out, kind="png", scale=8, border=2)
    out.seek(0)
    return out


def invoice_pdf(shown: dict[str, Any]) -> bytes:
    """The PDF of an invoice as GET /v1/invoices/{id} shows it (its `invoice` content, status and receipt)."""
    inv = shown["invoice"]
    content_hash = next((t["detail"]["content_hash"] for t in shown.get("timeline", [])
                         if (t.get("detail") or {}).get("content_hash")), "")
    # every page laid out by hand: the continuation pages are added below
    pdf = new_pdf(title=f"{TITLES[inv['kind']]} {inv['number']}", orientation="L", page=(148, 210))
    pdf.add_page()
    ink = INK

    def text(x: float, y: float, s: str, size: float = 8, color: tuple[int, int, int] = (0, 0, 0),
             width: float | None = None) -> None:
        if not s:
            return  # fpdf2 cannot size a cell of no text
        pdf.set_font("cjk", size=size)
        pdf.set_text_color(*color)
        pdf.set_xy(x, y)
        pdf.cell(text=fit(s, width) if width else s)

    def fit(s: str, width: float) -> str:
        """One line of at most `width` mm (the font in force): cut with an ellipsis."""
        s = " ".join(s.split())  # a line break or tab in a remark is a space on the page
        if pdf.get_string_width(s) <= width:
            return s
        while s and pdf.get_string_width(s + "…") > width:
            s = s[: max(1, len(s) * 9 // 10) - 1] if len(s) > 40 else s[:-1]
        return s + "…"

    # Title, number, date, and the QR code at the top left.
    pdf.image(_qr_png(qr_payload(inv, content_hash)), x=10, y=8, w=24, h=24)
    text(62, 10, TITLES[inv["kind"]], size=16, color=ink)
    blue = red_letter_of(shown)
    if blue:  # a red invoice (红字发票): stamped beside the title, and the blue invoice it reverses in the remarks
        pdf.set_draw_color(200, 0, 0)
        pdf.set_line_width(0.5)
        pdf.rect(52, 9, 9, 8)
        text(52.6, 10, "红字", size=10, color=(200, 0, 0))
    pdf.set_draw_color(*ink)
    pdf.line(70, 19, 150, 19)
    text(150, 10, f"发票号码：{inv['number']}", size=8)
    text(150, 15, f"开票日期：{inv['issue_date']}", size=8)
    if shown.get("receipt_no"):
        text(150, 20, f"税务机关回执：{shown['receipt_no']}", size=7)

    # Buyer and seller side by side in a frame.
    top = 34
    pdf.set_line_width(0.3)
    pdf.rect(10, top, 190, 24)
    pdf.line(105, top, 105, top + 24)
    for x, label, party in ((12, "购买方信息", inv["buyer"]), (107, "销售方信息", inv["seller"])):
        text(x, top + 2, label, size=8, color=ink)
        text(x, top + 8, f"名称：{party['name']}", size=8, width=90)
        text(x, top + 14, f"统一社会信用代码/纳税人识别号：{party.get('tax_id') or '—'}", size=7, width=90)

    # The lines: as many as fit on this page; the rest on continuation pages (the end of this function).
    cols = ((10, 58, "项目名称"), (68, 20, "数量"), (88, 24, "单价"), (112, 30, "金额"), (142, 18, "税率"),
            (160, 40, "税额"))

    def header_row(y: float) -> float:
        pdf.set_font("cjk", size=7)
        pdf.set_text_color(*ink)
        for x, w, label in cols:
            pdf.set_xy(x, y)
            pdf.cell(w, 5, label, border="B", align="C")
        pdf.set_text_color(0, 0, 0)
        return y + 6

    def line_rows(rows: list[dict[str, Any]], y: float) -> float:
        pdf.set_font("cjk", size=7)
        pdf.set_text_color(0, 0, 0)
        for line in rows:
            rate = f"{Decimal(str(line['tax_rate'])) * 100:.0f}%"
            values = (line["description"], str(line["quantity"]), str(line["unit_price"]), str(line["amount"]),
                      rate, str(line["tax_amount"]))
            for (x, w, _), value in zip(cols, values, strict=True):
                pdf.set_xy(x, y)
                pdf.cell(w, 5, fit(value, w - 1), align="L" if x == 10 else "R")
            y += 5
        return y

    lines = inv["lines"]
    pages = page_count(len(lines))
    first = lines if pages == 1 else lines[: MAX_LINES - 1]
    y = line_rows(first, header_row(top + 26))
    if pages > 1:
        text(12, y, f"共 {len(lines)} 行，第 {len(first) + 1}–{len(lines)} 行见续页 "
                    f"({len(lines)} lines: the rest on the following pages)", size=7)

    # Totals, in figures and in capitals, always at the same place on the first page (the lines above never reach
    # them), and the QR code above: the first page is the invoice's face, the one a reader checks and a verifier
    # scans, as on a paper invoice whose lines go on in a 销货清单 (list of goods) — a long invoice's further
    # pages are that list, each with the invoice's number and its own header row, and totals on them would
    # make a reader look for the figures on two pages.
    y = TOTALS_Y
    pdf.line(10, y, 200, y)
    text(12, y + 1, "合计", size=8, color=ink)
    pdf.set_font("cjk", size=8)
    for (x, w, _), value in ((cols[3], inv["total_amount"]), (cols[5], inv["total_tax"])):
        pdf.set_xy(x, y + 1)
        pdf.cell(w, 5, f"¥{value}", align="R")
    total = Decimal(str(inv["total"]))
    text(12, y + 7, "价税合计（大写）", size=8, color=ink)
    text(45, y + 7, in_capitals(total), size=9)
    text(140, y + 7, f"（小写）¥{inv['total']}", size=9)
    pdf.line(10, y + 13, 200, y + 13)
    text(12, y + 15, "备注", size=8, color=ink)
    text(24, y + 15, remarks(shown), size=7, width=174)
    status = shown.get("status", "")

    def footer(page: int) -> None:
        text(12, 136, f"Fapiao Sync · {STATUS_WORDS.get(status, status)} · {shown.get('id', '')}", size=6,
             color=(110, 110, 110))
        if pages > 1:
            text(172, 136, f"第 {page} 页 / 共 {pages} 页", size=7)

    footer(1)

    def watermark() -> None:
        if status not in ("voided", "red_lettered"):
            return
        mark = "作废 VOID" if status == "voided" else "已红冲 RED-LETTERED"
        with pdf.local_context(fill_opacity=0.18, text_color=(200, 0, 0)):
            pdf.set_font("cjk", size=54)
            with pdf.rotation(25, x=105, y=80):
                pdf.set_xy(35, 70)
                pdf.cell(140, 20, mark, align="C")

    watermark()
    rest = lines[len(first):]
    for page in range(2, pages + 1):
        pdf.add_page()
        text(10, 10, f"{TITLES[inv['kind']]}（续）销货清单 list of goods", size=11, color=ink)
        text(150, 10, f"发票号码：{inv['number']}", size=8)
        text(150, 15, f"开票日期：{inv['issue_date']}", size=8)
        text(10, 20, f"销售方：{inv['seller']['name']}　购买方：{inv['buyer']['name']}", size=7, width=135)
        rows, rest = rest[:LINES_PER_PAGE], rest[LINES_PER_PAGE:]
        start = len(lines) - len(rest) - len(rows) + 1
        text(10, 30, f"第 {start}–{start + len(rows) - 1} 行 / 共 {len(lines)} 行", size=7)
        line_rows(rows, header_row(38))
        footer(page)
        watermark()
    return finish(pdf)
