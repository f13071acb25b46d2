"""What the reconciler reads from the tax store: invoices by number (many per request) and a seller's
listing by issue date (for sweeps and monthly summaries). Reads only; every call bounded by a timeout."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import httpx

__all__ = ["StoreUnavailable", "StoreView", "TaxstoreReader"]


class StoreUnavailable(Exception):
    """No usable answer from the tax store (outage, timeout, 5xx, unreadable body)."""


@dataclass(frozen=True)
class StoreView:
    number: str
    receipt_no: str
    content_hash: str
    issue_date: date
    total: Decimal
    red_letter_of: str | None
    review_status: str | None = None  # under_review | approved | denied: a cross-region invoice's review
    review_due_at: datetime | None = None

    @classmethod
    def of(cls, item: dict[str, Any]) -> StoreView:
        due = item.get("review_due_at")
        return cls(item["number"], item["receipt_no"], item["content_hash"], date.fromisoformat(item["issue_date"]),
                   Decimal(item["total"]), item.get("red_letter_of"), item.get("review_status"),
                   datetime.fromisoformat(due) if isinstance(due, str) and due else None)


class TaxstoreReader:
    def __init__(self, base_url: str, *, connect_timeout: float, read_timeout: float, max_connections: int = 8,
                 lookup_batch_size: int = 200) -> None:
        self.lookup_batch_size = lookup_batch_size
        self._http = httpx.AsyncClient(
            base_url=base_url, timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            headers={"user-agent": "fapiao-reconciler/1"},
        )

    async def close(self) -> None:
        await self._http.aclose()

    async def _page(self, params: dict[str, Any]) -> dict[str, Any]:
        try:
            response = await self._http.get("/v1/invoices", params=params)
        except httpx.HTTPError as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}".rstrip(": ")) from exc
        if response.status_code != 200:
            raise StoreUnavailable(f"HTTP {response.status_code} from the tax store")
        try:
            body = response.json()
            body["items"] = [StoreView.of(i) for i in body["items"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreUnavailable(f"unreadable answer from the tax store: {exc}") from exc
        return body

    async def lookup(self, seller_tax_id: str, numbers: Sequence[str]) -> dict[str, StoreView]:
        """What the store shows now for these numbers of one seller (absent ones are missing from the dict)."""
        found: dict[str, StoreView] = {}
        size = self.lookup_batch_size
        for i in range(0, len(numbers), size):
            chunk = numbers[i:i + size]
            body = await self._page({"seller_tax_id": seller_tax_id, "numbers": ",".join(chunk),
                                     "limit": len(chunk)})
            found.update((v.number, v) for v in body["items"])
        return found

    async def listing(self, seller_tax_id: str, issued_from: date, issued_to: date, *,
                      max_pages: int = 1000) -> AsyncIterator[list[StoreView]]:
        """A seller's visible invoices issued in [issued_from, issued_to], page by page."""
        cursor: str | None = None
        for _ in range(max_pages):
            body = await self._page({"seller_tax_id": seller_tax_id, "issued_from": issued_from.isoformat(),
                                     "issued_to": issued_to.isoformat(), "limit": 1000,
                                     **({"cursor": cursor} if cursor else {})})
            yield body["items"]
            cursor = body.get("next_cursor")
            if not cursor:
                return
        raise StoreUnavailable(f"listing longer than {max_pages} pages")
