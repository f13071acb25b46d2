"""The issuer's side of the reconciler's admin API: cases and monthly summaries.

The reconciler owns cases; the issuer is the tenant's one public base URL, so it asks on the tenant's
behalf with the admin token. Every failure to get a usable answer (refused, timed out, 5xx, a body that
is not the contract) is one error for the tenant: 503 with Retry-After. Logs name the call, never the token.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import httpx

from services.issuer.settings import IssuerSettings
from shared.errors import Conflict, NotFound, ServiceUnavailable

__all__ = ["CASE_NO", "ReconcilerClient", "make_http"]

log = logging.getLogger(__name__)

CASE_NO = re.compile(r"CASE-[0-9]{8}-[0-9]{6}")  # use fullmatch: "$" would let a trailing newline through
UNREACHABLE = "the reconciler is not reachable right now; retry shortly"
UNUSABLE = "the reconciler cannot answer this right now; retry shortly"
RETRY_AFTER_SECONDS = 5


def make_http(settings: IssuerSettings) -> httpx.AsyncClient:
    """The one connection pool to the reconciler, owned by the app's lifespan."""
    token = settings.admin_token.get_secret_value()
    return httpx.AsyncClient(base_url=settings.reconciler_url, timeout=settings.reconciler_timeout,
                             headers={"Authorization": f"Bearer {token}"}, follow_redirects=False)


class ReconcilerClient:
    def __init__(self, http: httpx.AsyncClient, *, timeout: float) -> None:
        self.http = http
        self.timeout = timeout

    async def open_case(self, *, invoice_id: str, tenant_id: str, seller_tax_id: str, number: str,
                        note: str | None) -> tuple[int, dict[str, Any]]:
        """(201 opened | 200 already open, the case). 404 and 409 pass through with the reconciler's detail."""
        r = await self._call("POST", "/admin/cases", json={
            "invoice_id": invoice_id, "tenant_id": tenant_id, "seller_tax_id": seller_tax_id, "number": number,
            "note": note})
        if r.status_code == 404:
            raise NotFound(_detail(r) or f"no invoice {invoice_id}")
        if r.status_code == 409:
            raise Conflict(_detail(r) or "no case can be opened for this invoice")
        return r.status_code, self._case(r, expect=(200, 201))

    async def get_case(self, case_no: str) -> dict[str, Any] | None:
        r = await self._call("GET", f"/admin/cases/{case_no}")
        return None if r.status_code == 404 else self._case(r, expect=(200,))

    async def list_cases(self, *, tenant_id: str, status: str | None, limit: int) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"tenant_id": tenant_id, "limit": limit}
        if status is not None:
            params["status"] = status
        r = await self._call("GET", "/admin/cases", params=params)
        items = self._json(r, expect=(200,)).get("items")
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise self._unusable(r, "no list of items")
        return items

    async def summary(self, *, seller_tax_id: str, month: str) -> dict[str, Any]:
        r = await self._call("GET", "/admin/summary", params={"seller_tax_id": seller_tax_id, "month": month})
        return self._json(r, expect=(200,))

    async def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            r = await self.http.request(method, path, timeout=self.timeout, **kwargs)
        except httpx.HTTPError as exc:  # refused, reset, timed out: the tenant can only wait and retry
            log.warning("reconciler %s %s failed: %s", method, path, type(exc).__name__)
            raise ServiceUnavailable(UNREACHABLE, retry_after=RETRY_AFTER_SECONDS) from None
        if r.status_code >= 500:
            log.warning("reconciler %s %s answered %d", method, path, r.status_code)
            raise ServiceUnavailable(UNREACHABLE, retry_after=RETRY_AFTER_SECONDS)
        if r.status_code in (401, 403):
            # The tenant did nothing wrong: this deployment's FAPIAO_ADMIN_TOKEN differs from the reconciler's.
            log.error("reconciler %s %s refused the issuer's admin token (%d)", method, path, r.status_code)
            raise ServiceUnavailable(UNUSABLE, retry_after=RETRY_AFTER_SECONDS)
        return r

    def _json(self, r: httpx.Response, *, expect: tuple[int, ...]) -> dict[str, Any]:
        if r.status_code not in expect:
            raise self._unusable(r, f"status {r.status_code}")
        try:
            body = r.json()
        except ValueError:
            raise self._unusable(r, "not JSON") from None
        if not isinstance(body, dict):
            raise self._unusable(r, "not a JSON object")
        return body

    def _case(self, r: httpx.Response, *, expect: tuple[int, ...]) -> dict[str, Any]:
        case = self._json(r, expect=expect)
        if not isinstance(case.get("case_no"), str) or not CASE_NO.fullmatch(case["case_no"]):
            raise self._unusable(r, "no valid case_no")
        return case

    def _unusable(self, r: httpx.Response, why: str) -> ServiceUnavailable:
        log.error("reconciler %s %s gave an unusable answer (%s)", r.request.method, r.request.url.path, why)
        return ServiceUnavailable(UNUSABLE, retry_after=RETRY_AFTER_SECONDS)


def _detail(r: httpx.Response) -> str | None:
    try:
        body = r.json()
    except ValueError:
        return None
    detail = body.get("detail") if isinstance(body, dict) else None
    return detail[:500] if isinstance(detail, str) and detail else None
