"""The exception hierarchy, drawn once.

    FapiaoError                 a domain error with an HTTP meaning (RFC 9457 problem)
    ├── BadRequest              400
    ├── Unauthorized            401
    ├── NotFound                404 (also: another tenant's resource)
    ├── Conflict                409
    ├── PayloadTooLarge         413
    ├── ValidationFailed        422, with a list of {path, reason}
    ├── TooManyRequests         429, with Retry-After (a limit of the caller's is reached; see issuer/limits.py)
    └── ServiceUnavailable      503, with Retry-After (a service this one depends on cannot answer now)
    RetriableError              a consumer may try again (DB or broker unavailable)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "BadRequest", "Conflict", "FapiaoError", "FieldError", "NotFound", "PayloadTooLarge",
    "RetriableError", "ServiceUnavailable", "TooManyRequests", "Unauthorized", "ValidationFailed", "field_errors",
    "field_path",
]


@dataclass(frozen=True)
class FieldError:
    path: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


def field_path(loc: tuple[Any, ...] | list[Any]) -> str:
    """('body', 'lines', 0, 'amount') -> 'lines[0].amount'"""
    out = ""
    for part in loc:
        if part in ("body", "query", "path", "header") and out == "":
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).startswith(("function-after", "function-wrap", "function-before")):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out or "(body)"


def field_errors(errors: Any, *, prefix: str = "") -> list[FieldError]:
    """pydantic error dicts -> FieldError(path, reason)."""
    return [FieldError(prefix + field_path(e.get("loc", ())),
                       str(e.get("msg", "invalid")).removeprefix("Value error, ")) for e in errors]


class FapiaoError(Exception):
    status: int = 500
    title: str = "Internal error"
    code: str = "internal"
    retry_after: int | None = None  # seconds; answered as Retry-After (RFC 9110 §10.2.3) when set

    def __init__(self, detail: str, *, extra: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra or {}


class BadRequest(FapiaoError):
    status, title, code = 400, "Bad request", "bad_request"


class Unauthorized(FapiaoError):
    status, title, code = 401, "Unauthorized", "unauthorized"


class NotFound(FapiaoError):
    status, title, code = 404, "Not found", "not_found"


class Conflict(FapiaoError):
    status, title, code = 409, "Conflict", "conflict"


class PayloadTooLarge(FapiaoError):
    status, title, code = 413, "Payload too large", "payload_too_large"


class ValidationFailed(FapiaoError):
    status, title, code = 422, "Validation failed", "validation_failed"

    def __init__(self, errors: list[FieldError], detail: str | None = None) -> None:
        super().__init__(detail or f"{len(errors)} field(s) failed validation")
        self.errors = errors


class TooManyRequests(FapiaoError):
    """The caller has spent a budget (or has too many requests in flight); the same request later may pass."""

    status, title, code = 429, "Too many requests", "rate_limited"

    def __init__(self, detail: str, *, retry_after: int, code: str = "rate_limited",
                 extra: dict[str, Any] | None = None) -> None:
        super().__init__(detail, extra=extra)
        self.retry_after = retry_after
        self.code = code


class ServiceUnavailable(FapiaoError):
    """The request was fine but a dependency did not answer in time; the client should retry after a pause."""

    status, title, code = 503, "Service unavailable", "dependency_unavailable"

    def __init__(self, detail: str, *, retry_after: int = 5, extra: dict[str, Any] | None = None) -> None:
        super().__init__(detail, extra=extra)
        self.retry_after = retry_after


class RetriableError(Exception):
    """Raised by consumer handlers when trying again later may succeed."""

    retriable = True
