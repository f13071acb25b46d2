"""The issuer's side of the other services' admin APIs: cases and summaries (reconciler), subscriptions,
notification history and mutes (notifier).

Those services own that data; the issuer is the tenant's one public base URL, so it asks on the tenant's
behalf with the admin token, having checked what it can itself (the invoice is the tenant's).

- A backend's 4xx problem about the request (the reconciler's every 4xx but 401/403; the notifier's 400, 404,
  409, 422 and 429) reaches the tenant as that same status and problem: detail, code, field paths (`errors`),
  any other members and Retry-After kept.
- Everything else is one error for the tenant, 503 with Retry-After: refused or reset connections and
  timeouts ("not reachable"), 5xx, a 401/403 (this deployment's admin tokens differ: nothing the tenant can
  fix), an answer that is not the contract ("cannot answer").

Logs name the call, never the token.
"""

from __future__ import annotations

import logging
import uuid
from http import HTTPStatus
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from shared.audit import ON_BEHALF
from shared.contracts.cases import CaseStatus
from shared.contracts.reconciler import CaseDetail, CaseList, CaseOpen
from shared.contracts.taxstore import VerifyAnswer
from shared.errors import FapiaoError, ServiceUnavailable

__all__ = ["BackendClient", "NotifierClient", "Passed", "ReconcilerClient", "TaxstoreClient", "make_http"]

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5


def make_http(base_url: str, admin_token: str, timeout: float) -> httpx.AsyncClient:
    """One connection pool to a backend service, owned by the app's lifespan."""
    return httpx.AsyncClient(base_url=base_url, timeout=timeout, headers={"Authorization": f"Bearer {admin_token}"},
                             follow_redirects=False)


class Passed(FapiaoError):
    """A backend's own 4xx answer to a request that was the tenant's to get right: passed on as is (the issuer's
    own correlation id replaces the backend's)."""

    def __init__(self, status: int, body: dict[str, Any], *, retry_after: int | None = None) -> None:
        super().__init__(str(body.get("detail") or ""))
        self.status = status
        self.retry_after = retry_after
        self.title = str(body.get("title") or _phrase(status))
        self.code = str(body.get("code") or "error")
        self.extra = {k: v for k, v in body.items()
                      if k not in ("status", "title", "detail", "code", "type", "correlation_id")}


class BackendClient:
    name = "backend"
    PASS_THROUGH: tuple[int, ...] = ()

    def __init__(self, http: httpx.AsyncClient, *, timeout: float) -> None:
        self.http = http
        self.timeout = timeout

    @property
    def unreachable(self) -> str:
        return f"the {self.name} is not reachable right now; retry shortly"

    @property
    def unusable(self) -> str:
        return f"the {self.name} cannot answer this right now; retry shortly"

    def passes(self, status: int) -> bool:
        """Whether this 4xx is the backend's verdict on the tenant's request, to be passed on as is."""
        return status in self.PASS_THROUGH

    async def _call(self, method: str, path: str, *, handles: tuple[int, ...] = (), **kwargs: Any) -> httpx.Response:
        """The backend's answer; `handles`: statuses the caller turns into its own answer."""
        try:
            r = await self.http.request(method, path, timeout=self.timeout, **kwargs)
        except httpx.HTTPError as exc:  # refused, reset, timed out: the tenant can only wait and retry
            log.warning("%s %s %s failed: %s", self.name, method, path, type(exc).__name__)
            raise ServiceUnavailable(self.unreachable, retry_after=RETRY_AFTER_SECONDS) from None
        if r.status_code >= 500:  # it answered, so it is reachable: it cannot answer this now
            log.warning("%s %s %s answered %d", self.name, method, path, r.status_code)
            raise ServiceUnavailable(self.unusable, retry_after=RETRY_AFTER_SECONDS)
        if r.status_code in (401, 403):
            # The tenant did nothing wrong: this deployment's FAPIAO_ADMIN_TOKEN differs from the backend's.
            log.error("%s %s %s refused the issuer's admin token (%d)", self.name, method, path, r.status_code)
            raise ServiceUnavailable(self.unusable, retry_after=RETRY_AFTER_SECONDS)
        if r.status_code not in handles and self.passes(r.status_code):
            body = _body(r)
            if body is None:
                raise self._unusable(r, f"status {r.status_code} without a problem body")
            raise Passed(r.status_code, body, retry_after=_retry_after(r))
        return r

    def _json(self, r: httpx.Response, *, expect: tuple[int, ...]) -> dict[str, Any]:
        if r.status_code not in expect:
            raise self._unusable(r, f"status {r.status_code}")
        body = _body(r)
        if body is None:
            raise self._unusable(r, "not a JSON object")
        return body

    def _model(self, r: httpx.Response, model: type[M], *, expect: tuple[int, ...]) -> M:
        body = self._json(r, expect=expect)
        try:
            return model.model_validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise self._unusable(r, f"not a {model.__name__}: {'.'.join(map(str, first['loc']))} "
                                    f"{first['msg']}") from None

    def _unusable(self, r: httpx.Response, why: str) -> ServiceUnavailable:
        log.error("%s %s %s gave an unusable answer (%s)", self.name, r.request.method, r.request.url.path, why)
        return ServiceUnavailable(self.unusable, retry_after=RETRY_AFTER_SECONDS)


M = TypeVar("M", bound=BaseModel)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _retry_after(r: httpx.Response) -> int | None:
    """A backend's Retry-After in seconds (the form the services send), passed on with its 429."""
    value = r.headers.get("retry-after", "")
    return int(value) if value.isdigit() else None


def _body(r: httpx.Response) -> dict[str, Any] | None:
    try:
        body = r.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


class ReconcilerClient(BackendClient):
    """Every 4xx of the reconciler's but 401/403 is its verdict on what the tenant asked (a month it does not
    take, an invoice it cannot open a case for): the tenant gets that very problem."""

    name = "reconciler"

    def passes(self, status: int) -> bool:
        return 400 <= status < 500 and status not in (401, 403)

    async def open_case(self, *, invoice_id: uuid.UUID, tenant_id: uuid.UUID, seller_tax_id: str, number: str,
                        note: str | None) -> tuple[bool, CaseDetail]:
        """(True: this request opened it | False: it was open already, the case). 404, 409 and 422 pass through
        as the reconciler's problem."""
        # Not validated here: the reconciler does, and its 422 (e.g. a tenant's short tax id) reaches the tenant.
        body = CaseOpen.model_construct(invoice_id=invoice_id, tenant_id=tenant_id, seller_tax_id=seller_tax_id,
                                        number=number, note=note)
        r = await self._call("POST", "/admin/cases", json=body.model_dump(mode="json"),
                             headers={ON_BEHALF: f"tenant:{tenant_id}"})
        return r.status_code == 201, self._model(r, CaseDetail, expect=(200, 201))

    async def get_case(self, case_no: str) -> CaseDetail | None:
        """The case, or None when the reconciler has none (the caller words the 404 for the tenant)."""
        r = await self._call("GET", f"/admin/cases/{case_no}", handles=(404,))
        return None if r.status_code == 404 else self._model(r, CaseDetail, expect=(200,))

    async def list_cases(self, *, tenant_id: uuid.UUID, status: CaseStatus | None, limit: int) -> CaseList:
        params: dict[str, Any] = {"tenant_id": str(tenant_id), "limit": limit}
        if status is not None:
            params["status"] = status
        r = await self._call("GET", "/admin/cases", params=params)
        return self._model(r, CaseList, expect=(200,))

    async def summary(self, *, seller_tax_id: str, month: str) -> dict[str, Any]:
        r = await self._call("GET", "/admin/summary", params={"seller_tax_id": seller_tax_id, "month": month})
        return self._json(r, expect=(200,))


class NotifierClient(BackendClient):
    """The notifier's tenant-scoped admin routes (/admin/tenants/{tenant}/...). The tenant's own mistakes
    (unknown subscription, an invalid or private webhook URL, nothing muted) come back as the notifier
    worded them."""

    name = "notifier"
    PASS_THROUGH = (400, 404, 409, 422, 429)

    async def forward(self, method: str, tenant_id: str, path: str, *, json: Any = None,
                      params: dict[str, Any] | None = None) -> tuple[int, dict[str, Any] | None]:
        r = await self._call(method, f"/admin/tenants/{tenant_id}{path}", json=json,
                             params={k: v for k, v in (params or {}).items() if v is not None},
                             headers={ON_BEHALF: f"tenant:{tenant_id}"})  # the notifier's audit log says so
        if r.status_code == 204:
            return 204, None
        return r.status_code, self._json(r, expect=(200, 201, 202))


class TaxstoreClient(BackendClient):
    """The tax store's public reads the issuer passes on (verification). Its 422 is the tenant's own mistake;
    its faults (500, 503, 504, no answer) are the authority's: 503, retry."""

    name = "tax authority"
    PASS_THROUGH = (422,)

    async def verify(self, *, number: str, issue_date: str, total: str) -> VerifyAnswer:
        r = await self._call("POST", "/v1/verify", json={"number": number, "issue_date": issue_date, "total": total})
        return self._model(r, VerifyAnswer, expect=(200,))
