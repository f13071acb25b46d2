"""The invoice PDF (GET /v1/invoices/{id}/pdf, /admin/invoices/{id}/pdf, `fapiao invoice pdf`): read back as
text and as pixels — its words in Chinese, its totals in figures and capitals, and a QR code that decodes to the
invoice's kind, number, date, total and content hash; a voided one is watermarked; another tenant's is a 404."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import zxingcpp
from PIL import Image

from fapiao.infra import free_port
from fapiao.infra.tools import ensure_pdftoppm
from tests import factories
from tests.harness import ADMIN, REPO, RunningIssuer, Tenant, process_env, serve_app
from tests.harness.infra import Infra


@pytest.fixture(scope="module")
def pdftoppm() -> Path:
    try:
        return ensure_pdftoppm()
    except Exception as exc:  # noqa: BLE001 - the test fails, saying why
        pytest.fail(f"the invoice PDF test needs pdftoppm: {exc}", pytrace=False)


def _words(pdf: bytes) -> str:
    """The page's text as poppler's pdftotext reads it (what a viewer copies), without white space."""
    done = subprocess.run(["pdftotext", "-", "-"], input=pdf, capture_output=True, timeout=60, check=True)
    return "".join(done.stdout.decode().split())


def _pages(pdf: bytes) -> int:
    done = subprocess.run(["pdfinfo", "-"], input=pdf, capture_output=True, timeout=60, check=True)
    return int(next(ln.split()[1] for ln in done.stdout.decode().splitlines() if ln.startswith("Pages:")))


def _page(pdftoppm: Path, pdf: bytes) -> Image.Image:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "invoice.pdf"
        src.write_bytes(pdf)
        subprocess.run([str(pdftoppm), "-r", "150", "-png", "-singlefile", str(src), str(Path(tmp) / "page")],
                       check=True, timeout=60, capture_output=True)
        with Image.open(Path(tmp) / "page.png") as img:
            return img.convert("RGB")


def _qr(pdftoppm: Path, pdf: bytes) -> str:
    found = zxingcpp.read_barcodes(_page(pdftoppm, pdf))
    assert [b.format for b in found] == [zxingcpp.BarcodeFormat.QRCode], found
    return str(found[0].text)


def _watermark_pixels(pdftoppm: Path, pdf: bytes) -> int:
    """Pixels of the pale red a watermark leaves on white (the frame and labels are a darker red)."""
    img = _page(pdftoppm, pdf)
    return sum(1 for r, g, b in img.get_flattened_data() if r > 235 and 185 < g < 230 and 185 < b < 230)


async def test_the_pdf_reads_back_as_the_invoice(issuer: RunningIssuer, tenant: Tenant, pdftoppm: Path) -> None:
    doc = factories.invoice(tenant.tax_id, buyer={"tax_id": factories.uscc(), "name": "深圳市某某科技有限公司"},
                            remarks="项目 Alpha 第一期")
    made = await issuer.client.post("/v1/invoices", headers=tenant.headers, json=doc)
    assert made.status_code == 201, made.text
    shown = (await issuer.client.get(f"/v1/invoices/{made.json()['id']}", headers=tenant.headers)).json()
    r = await issuer.client.get(f"/v1/invoices/{shown['id']}/pdf", headers=tenant.headers)
    assert r.status_code == 200 and r.headers["content-type"] == "application/pdf", r.text[:200]
    assert r.content.startswith(b"%PDF") and _pages(r.content) == 1
    words = _words(r.content)
    for expected in ("电子发票（增值税专用发票）", doc["number"], doc["issue_date"], "深圳市某某科技有限公司",
                     tenant.tax_id, "价税合计（大写）", f"¥{doc['total']}", "项目Alpha第一期"):
        assert expected.replace(" ", "") in words, (expected, words[:300])
    from decimal import Decimal

    from shared.capitals import in_capitals

    assert in_capitals(Decimal(doc["total"])) in words
    content_hash = shown["timeline"][0]["detail"]["content_hash"]
    kind, number, date, total, check = (await asyncio.to_thread(_qr, pdftoppm, r.content)).split(",")[1:]
    assert (kind, number, date, total) == ("31", doc["number"], doc["issue_date"].replace("-", ""), doc["total"])
    assert check == content_hash[:16].upper(), "the check value is over the stored content's hash"

    other = await issuer.new_tenant()
    assert (await issuer.client.get(f"/v1/invoices/{shown['id']}/pdf", headers=other.headers)).status_code == 404
    operator = await issuer.client.get(f"/admin/invoices/{shown['id']}/pdf", headers=ADMIN)
    assert operator.status_code == 200  # the same page (its status line may have moved on since)
    assert all(w in _words(operator.content) for w in (doc["number"], "深圳市某某科技有限公司", f"¥{doc['total']}"))


async def test_a_voided_invoice_carries_a_watermark(infra: Infra, issuer: RunningIssuer, tenant: Tenant,
                                                    pdftoppm: Path) -> None:
    from sqlalchemy import text

    doc = factories.invoice(tenant.tax_id, kind="ordinary", buyer={"name": "张三"})
    made = (await issuer.client.post("/v1/invoices", headers=tenant.headers, json=doc)).json()
    # The issuer's own store has no sync here: the invoice waits as published. Make it one the seller may void.
    async with issuer.app.state.engine.begin() as conn:  # type: ignore[attr-defined]
        await conn.execute(text("update issuer.invoices set status = 'rejected', reason_source = 'sync' "
                                "where id = :id"), {"id": made["id"]})
    voided = await issuer.client.post(f"/v1/invoices/{made['id']}/void", headers=tenant.headers,
                                      json={"reason": "开错了 issued by mistake"})
    assert voided.status_code == 200 and voided.json()["status"] == "voided", voided.text
    r = await issuer.client.get(f"/v1/invoices/{made['id']}/pdf", headers=tenant.headers)
    words = _words(r.content)
    assert "电子发票（普通发票）" in words and "已作废" in words, words[:300]
    assert (await asyncio.to_thread(_qr, pdftoppm, r.content)).split(",")[1] == "32"
    before = await issuer.client.post("/v1/invoices", headers=tenant.headers, json=factories.invoice(tenant.tax_id))
    plain = await issuer.client.get(f"/v1/invoices/{before.json()['id']}/pdf", headers=tenant.headers)
    marked = await asyncio.to_thread(_watermark_pixels, pdftoppm, r.content)
    clean = await asyncio.to_thread(_watermark_pixels, pdftoppm, plain.content)
    assert marked > 20 * max(clean, 100), (marked, clean)

    # fapiao invoice pdf: the operator's copy, to a file.
    port = free_port()
    server, task = await serve_app(issuer.app, port)
    out = infra.workdir / f"{doc['number']}.pdf"
    try:
        done = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "fapiao.cli", "invoice", "pdf", doc["number"], "--tax-id",
                             tenant.tax_id, "--out", str(out)],
            env=process_env(infra, FAPIAO_ISSUER_URL=f"http://127.0.0.1:{port}"), cwd=REPO, capture_output=True,
            text=True, timeout=60)
    finally:
        server.should_exit = True  # type: ignore[attr-defined]
        await asyncio.wait_for(task, 10)
    assert done.returncode == 0, done.stderr
    assert _words(await asyncio.to_thread(out.read_bytes)) == words


def _layout(pdf: bytes) -> list[str]:
    """The pages' text laid out as printed (pdftotext -layout): a table row stays one line."""
    done = subprocess.run(["pdftotext", "-layout", "-", "-"], input=pdf, capture_output=True, timeout=60, check=True)
    return done.stdout.decode().splitlines()


def _fonts(pdf: bytes) -> list[str]:
    """The names of the fonts a PDF embeds, as poppler's pdffonts lists them (subset tag removed)."""
    with tempfile.NamedTemporaryFile(suffix=".pdf") as f:
        f.write(pdf)
        f.flush()
        done = subprocess.run(["pdffonts", f.name], capture_output=True, timeout=60, check=True, text=True)
    return [ln.split()[0].partition("+")[2] or ln.split()[0] for ln in done.stdout.splitlines()[2:] if ln.strip()]


async def test_a_long_invoice_lists_every_line_over_further_pages(issuer: RunningIssuer, tenant: Tenant,
                                                                   pdftoppm: Path) -> None:
    from services.issuer.invoices import document

    n = 23
    lines = [factories.line(quantity="1", unit_price=f"{1000 + 17 * i}.{i:02d}",
                            description=f"货物第{i + 1:02d}项 item") for i in range(n)]
    doc = factories.invoice(tenant.tax_id, lines=lines, buyer={"tax_id": factories.uscc(), "name": "长清单买方"})
    made = await issuer.client.post("/v1/invoices", headers=tenant.headers, json=doc)
    assert made.status_code == 201, made.text
    r = await issuer.client.get(f"/v1/invoices/{made.json()['id']}/pdf", headers=tenant.headers)
    assert r.status_code == 200, r.text[:200]
    pages = document.page_count(n)
    assert pages > 1 and _pages(r.content) == pages, (pages, _pages(r.content))
    rows = _layout(r.content)
    for line in lines:
        [row] = [ln for ln in rows if line["description"] in ln]  # each line once, its amount on its row
        assert line["amount"] in row.split() and line["tax_amount"] in row.split(), (line, row)
    words = _words(r.content)
    assert all(f"第{k}页/共{pages}页" in words for k in range(1, pages + 1)), words[-300:]
    assert words.count("项目名称") == pages, "the table's header row on every page"
    assert words.count(doc["number"]) >= pages, "every page names its invoice"
    assert f"¥{doc['total']}" in words and _in_capitals(doc["total"]) in words
    _, number, _, total, _ = (await asyncio.to_thread(_qr, pdftoppm, r.content)).split(",")[1:]
    assert (number, total) == (doc["number"], doc["total"]), "the first page's QR code still decodes"
    assert _fonts(r.content) == ["NotoSansCJKSCRegular"], "one font: Noto Sans CJK, its Simplified-Chinese face"


def _in_capitals(total: str) -> str:
    from decimal import Decimal

    from shared.capitals import in_capitals

    return in_capitals(Decimal(total))
