"""Cross-region review (跨区域交易的额外审批): a blue invoice whose buyer is registered in another province than
its seller, with a total above the policy's threshold, is stored held (`under_review`, see policy.py and
service.insert_invoices). The simulated bureau decides it through the admin API, or on its own once the
policy's delay has passed, denying a seeded share. A held invoice is visible to reads, with its review status,
so a client can tell "held" from "missing"; a denied one does not count (verification says 作废).

Nothing runs in the background: an undecided review past its due time reads as the automatic outcome
(service.REVIEW_NOW), and deciding it by hand then is too late (409)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.taxstore import models as m
from services.taxstore.service import LIST_COLUMNS, REVIEW_NOW, StateConflict, invoice_view
from shared.errors import NotFound

__all__ = ["decide_review", "list_reviews"]


async def decide_review(*, session: AsyncSession, seller_tax_id: str, number: str, approve: bool,
                        note: str | None) -> dict[str, Any]:
    """Approve or deny a held invoice; the same decision again answers the invoice, another one is 409."""
    inv = m.invoices
    row = (await session.execute(
        select(inv.c.review_status, REVIEW_NOW.label("review_now"))
        .where(inv.c.seller_tax_id == seller_tax_id, inv.c.number == number).with_for_update(of=inv)
    )).first()
    if row is None or row.review_now is None:
        raise NotFound(f"no invoice {number} of seller {seller_tax_id} is held for review")
    wanted = "approved" if approve else "denied"
    if row.review_now != wanted:
        if row.review_now != "under_review":
            how = "by the bureau on its own" if row.review_status == "under_review" else "already"
            raise StateConflict(f"the review of invoice {number} was decided {how}: {row.review_now}",
                               code="review_decided", extra={"review_status": row.review_now})
        await session.execute(update(inv).where(inv.c.seller_tax_id == seller_tax_id, inv.c.number == number)
                              .values(review_status=wanted, reviewed_at=func.now(), review_note=note))
    return invoice_view((await session.execute(select(*LIST_COLUMNS).where(
        inv.c.seller_tax_id == seller_tax_id, inv.c.number == number))).one(), content=False)


async def list_reviews(*, session: AsyncSession, status: str | None, seller_tax_id: str | None,
                       limit: int) -> dict[str, Any]:
    """Invoices ever held for review (by status now), the longest held first."""
    inv = m.invoices
    conds: list[Any] = [inv.c.review_status.is_not(None)]
    if status is not None:
        conds.append(REVIEW_NOW == status)
    if seller_tax_id is not None:
        conds.append(inv.c.seller_tax_id == seller_tax_id)
    rows = (await session.execute(
        select(*LIST_COLUMNS).where(*conds).order_by(inv.c.stored_at, inv.c.seller_tax_id, inv.c.number).limit(limit)
    )).all()
    return {"items": [invoice_view(r, content=False) for r in rows]}
