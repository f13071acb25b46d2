"""发票查验: anyone holding an invoice asks the authority about it by number, issue date and total, and hears
its standing (shared.contracts.taxstore VERIFY_RESULTS): normal, red-lettered in full or in part, void (denied
in cross-region review), still under review, or no such invoice. An invoice is found only when all three
match what the authority shows, so a wrong date or total is "no such invoice", as with the real service;
an invoice not visible yet (replication lag) is not found either."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.taxstore import models as m
from services.taxstore.service import LIST_COLUMNS, red_letter_fields, state_of
from shared.contracts.taxstore import VERIFY_RESULTS

__all__ = ["verify"]


async def verify(*, session: AsyncSession, number: str, issue_date: date, total: Decimal) -> dict[str, Any]:
    inv = m.invoices
    row = (await session.execute(
        select(*LIST_COLUMNS)
        .where(inv.c.number == number, inv.c.issue_date == issue_date, inv.c.total == total,
               inv.c.visible_at <= func.now())
        .order_by(inv.c.seller_tax_id).limit(1)
    )).first()
    asked = {"number": number, "issue_date": issue_date.isoformat(), "total": f"{total:.2f}"}
    if row is None:
        return {"result": "not_found", "result_text": VERIFY_RESULTS["not_found"], **asked}
    result = state_of(row)
    fields = red_letter_fields(row)
    return {"result": result, "result_text": VERIFY_RESULTS[result], **asked, "seller_tax_id": row.seller_tax_id,
            "buyer_tax_id": row.buyer_tax_id, "kind": row.kind, "red_letter_of": row.red_letter_of,
            "red_lettered_total": fields["red_lettered_total"], "remaining_total": fields["remaining_total"],
            "review_status": row.review_now}
