"""The tax store as the sync service sees it: every call bounded by a timeout, every answer sorted into
one of a few outcomes, and — the part that matters — whether a failed write may still have happened."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import httpx

__all__ = ["ItemResult", "ReadBack", "RequestFailed", "TaxstoreClient"]

# Answers that prove the store did not act on the request. Anything else that is not a proper answer
# (a timeout, a dropped connection, a 500/502/504) may hide a write that happened: read back first.
_NOT_APPLIED = frozenset({408, 425, 429, 503})


class RequestFailed(Exception):
    """The request got no usable answer. `ambiguous`: the store may have applied it anyway."""

    def __init__(self, message: str, *, ambiguous: bool, http_status: int | None = None,
                 latency_ms: int = 0) -> None:
        super().__init__(message)
        self.ambiguous = ambiguous
        self.http_status = http_status
        self.latency_ms = latency_ms


@dataclass(frozen=True)
class ItemResult:
    """The store's answer for one invoice of a batch."""

    status: int  # 201 created, 200 already there (identical), 409 number taken, 422 rejected
    receipt_no: str | None = None
    duplicate: bool = False
    repaired: bool = False
    reason_code: str | None = None
    reason: str | None = None
    reasons: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class ReadBack:
    receipt_no: str
    content_hash: str


def _problem_text(response: httpx.Response) -> str:
    try:
        body = response.json()
        return str(body.get("detail") or body.get("title") or body)[:300]
    except ValueError:
        return response.text[:300]


class TaxstoreClient:
    def __init__(self, base_url: str, *, connect_timeout: float, submit_timeout: float, read_timeout: float,
                 max_connections: int = 16, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.submit_timeout = httpx.Timeout(submit_timeout, connect=connect_timeout)
        self.read_timeout = httpx.Timeout(read_timeout, connect=connect_timeout)
        self._http = httpx.AsyncClient(
            base_url=base_url, transport=transport, timeout=self.submit_timeout,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            headers={"user-agent": "fapiao-sync/1"},
        )

    async def close(self) -> None:
        await self._http.aclose()

    async def submit_batch(self, submissions: list[dict[str, Any]]) -> tuple[list[ItemResult], int]:
        """POST /v1/invoices/batch -> (per-item results in input order, latency ms). Raises RequestFailed."""
        started = time.perf_counter()
        try:
            response = await self._http.post("/v1/invoices/batch", json={"submissions": submissions},
                                             timeout=self.submit_timeout)
        except httpx.ConnectError as exc:  # the request never reached the store
            raise RequestFailed(f"cannot connect to the tax store: {exc}", ambiguous=False,
                                latency_ms=_ms(started)) from exc
        except httpx.TimeoutException as exc:
            raise RequestFailed(f"no answer within {self.submit_timeout.read:g}s ({type(exc).__name__})",
                                ambiguous=not isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout),
                                latency_ms=_ms(started)) from exc
        except httpx.HTTPError as exc:
            raise RequestFailed(f"{type(exc).__name__}: {exc}", ambiguous=True, latency_ms=_ms(started)) from exc
        latency = _ms(started)
        if response.status_code != 200:
            raise RequestFailed(f"HTTP {response.status_code}: {_problem_text(response)}",
                                ambiguous=response.status_code not in _NOT_APPLIED,
                                http_status=response.status_code, latency_ms=latency)
        try:
            raw = response.json()["results"]
            results = [
                ItemResult(status=int(r["status"]), receipt_no=r.get("receipt_no"), duplicate=bool(r.get("duplicate")),
                           repaired=bool(r.get("repaired")), reason_code=r.get("reason_code") or r.get("code"),
                           reason=r.get("detail"), reasons=list(r.get("reasons") or []))
                for r in raw
            ]
        except (ValueError, KeyError, TypeError) as exc:
            raise RequestFailed(f"unreadable answer from the tax store: {exc}", ambiguous=True, http_status=200,
                                latency_ms=latency) from exc
        if len(results) != len(submissions):
            raise RequestFailed(f"the tax store answered {len(results)} results for {len(submissions)} invoices",
                                ambiguous=True, http_status=200, latency_ms=latency)
        return results, latency

    async def read_back(self, seller_tax_id: str, number: str) -> ReadBack | None:
        """GET /v1/invoices/{seller}/{number}: what the store shows now, or None. Raises RequestFailed."""
        started = time.perf_counter()
        try:
            response = await self._http.get(f"/v1/invoices/{seller_tax_id}/{number}", timeout=self.read_timeout)
        except httpx.HTTPError as exc:
            raise RequestFailed(f"read-back failed: {type(exc).__name__}: {exc}", ambiguous=True,
                                latency_ms=_ms(started)) from exc
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise RequestFailed(f"read-back: HTTP {response.status_code}: {_problem_text(response)}", ambiguous=True,
                                http_status=response.status_code, latency_ms=_ms(started))
        body = response.json()
        return ReadBack(receipt_no=body["receipt_no"], content_hash=body["content_hash"])


    async def form_call(self, method: str, path: str, *, body: dict[str, Any] | None = None,
                        params: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        """A red-letter form write or read -> (status, body) for an answer the store meant (2xx, or a 4xx
        problem: refused for good). Raises RequestFailed for anything else (every form write is idempotent at the
        store, so the caller retries it whether or not it may have happened)."""
        started = time.perf_counter()
        try:
            response = await self._http.request(method, path, json=body, params=params, timeout=self.submit_timeout)
        except httpx.HTTPError as exc:
            raise RequestFailed(f"{type(exc).__name__}: {exc}", ambiguous=True, latency_ms=_ms(started)) from exc
        status = response.status_code
        if status >= 500 or status in _NOT_APPLIED:
            raise RequestFailed(f"HTTP {status}: {_problem_text(response)}", ambiguous=status not in _NOT_APPLIED,
                                http_status=status, latency_ms=_ms(started))
        try:
            answer = response.json()
        except ValueError as exc:
            raise RequestFailed(f"unreadable answer from the tax store (HTTP {status})", ambiguous=True,
                                http_status=status, latency_ms=_ms(started)) from exc
        if not isinstance(answer, dict):
            raise RequestFailed(f"unexpected answer from the tax store (HTTP {status})", ambiguous=True,
                                http_status=status, latency_ms=_ms(started))
        return status, answer

    async def reachable(self) -> bool:
        """A cheap read of an invoice that does not exist: 404 (or any answer but 5xx/429) means the store is up."""
        try:
            response = await self._http.get("/v1/invoices/HEALTHPROBE/0", timeout=self.read_timeout)
        except httpx.HTTPError:
            return False
        return response.status_code < 500 and response.status_code != 429

    async def read_back_listing(self, seller_tax_id: str, issue_date: str, *,
                                max_pages: int = 50) -> dict[str, ReadBack]:
        """What the store shows for one seller and issue date, by number (the bulk listing, paged).
        One request per 1,000 invoices instead of one per invoice. Raises RequestFailed."""
        found: dict[str, ReadBack] = {}
        cursor: str | None = None
        for _ in range(max_pages):
            params: dict[str, str | int] = {"seller_tax_id": seller_tax_id, "issued_from": issue_date,
                                            "issued_to": issue_date, "limit": 1000,
                                            **({"cursor": cursor} if cursor else {})}
            started = time.perf_counter()
            try:
                response = await self._http.get("/v1/invoices", params=params, timeout=self.read_timeout)
            except httpx.HTTPError as exc:
                raise RequestFailed(f"read-back listing failed: {type(exc).__name__}: {exc}", ambiguous=True,
                                    latency_ms=_ms(started)) from exc
            if response.status_code != 200:
                raise RequestFailed(f"read-back listing: HTTP {response.status_code}: {_problem_text(response)}",
                                    ambiguous=True, http_status=response.status_code, latency_ms=_ms(started))
            body = response.json()
            for item in body["items"]:
                found[item["number"]] = ReadBack(receipt_no=item["receipt_no"], content_hash=item["content_hash"])
            cursor = body.get("next_cursor")
            if not cursor:
                return found
        raise RequestFailed(f"read-back listing longer than {max_pages} pages", ambiguous=True)


def _ms(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)
