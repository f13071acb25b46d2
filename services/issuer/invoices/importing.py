"""Importing a CSV file of historical invoices (批量导入): every good invoice kept, every bad row named.

The file is read as a whole first (csv_import.py): one it cannot read is refused, and nothing is written. Then
each invoice is checked like any other; an invoice any of whose rows has an error is not issued.
"""

from __future__ import annotations

import hashlib

from sqlalchemy.ext.asyncio import AsyncSession

from services.issuer.csv_import import CsvFormatError, CsvInvoice, RowError, parse_csv, row_errors
from services.issuer.idempotency import KeyReused, Once, Replayed, at_most_once
from services.issuer.invoices.issuing import Issuing, create_invoices, validate_item
from services.issuer.invoices.outcomes import FileRefused, Imported, ImportedInvoice, Invalid, TooLarge, Unreadable
from services.issuer.schemas import InvoiceCreate
from services.issuer.tenants import Tenant
from shared.errors import FieldError

__all__ = ["file_hash", "import_csv"]


def file_hash(raw: bytes) -> str:
    """What makes two imports the same request: the file's bytes."""
    return hashlib.sha256(raw).hexdigest()


async def import_csv(*, session: AsyncSession, tenant: Tenant, raw: bytes, issuing: Issuing,
                     once: Once | None = None) -> Imported | Unreadable | FileRefused | TooLarge | Replayed | KeyReused:
    """A CSV file, one row per invoice line. Only a file that can be read claims the Idempotency-Key."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return Unreadable(f"the file is not UTF-8 (byte {exc.start})")
    if "\x00" in text:
        return Unreadable("the file contains NUL bytes")
    try:
        invoices, errors = parse_csv(text, seller_tax_id=tenant.tax_id, seller_name=tenant.name,
                                     max_rows=issuing.batch_max * 10)
    except CsvFormatError as exc:
        where = f"{exc.where} " if exc.where else ""
        return FileRefused(exc.field_error(), f"the file was not imported: {where}{exc}")
    if len(invoices) > issuing.batch_max:
        return TooLarge(f"at most {issuing.batch_max} invoices per request; split the file")
    items = _checked(invoices, errors, tenant=tenant, issuing=issuing)

    async def run() -> Imported:
        outcomes = await create_invoices(session=session, tenant=tenant, items=items, source="import",
                                         topic=issuing.topic)
        loose = sum(1 for e in errors if e.number is None)  # rows that belong to no invoice
        return Imported(
            rows=sum(len(i.rows) for i in invoices) + loose,
            invoices=tuple(ImportedInvoice(inv.number, tuple(inv.rows), outcome)
                           for inv, outcome in zip(invoices, outcomes, strict=True)),
            errors=tuple(sorted(errors, key=lambda e: (e.row, e.column))),
            rejected=sum(isinstance(o, Invalid) for o in outcomes) + loose,
        )

    return await at_most_once(session=session, tenant_id=tenant.id, once=once, run=run)


def _checked(invoices: list[CsvInvoice], errors: list[RowError], *, tenant: Tenant,
             issuing: Issuing) -> list[InvoiceCreate | list[FieldError]]:
    """Each invoice checked; its errors join the rows' (in `errors`), and one with any is not issued."""
    bad_numbers = {e.number for e in errors if e.number}
    checked: list[InvoiceCreate | list[FieldError]] = []
    for inv in invoices:
        item = validate_item(inv.raw, tenant=tenant, today=issuing.today, window_days=issuing.window_days)
        if isinstance(item, list):
            errors.extend(row_errors(inv, item))
            bad_numbers.add(inv.number)
        checked.append(item if inv.number not in bad_numbers else [FieldError("(row)", "see row errors")])
    return checked
