"""HTTP plumbing every service mounts: problem responses, body limit, correlation ids, health."""

from __future__ import annotations

import email.message
import inspect
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import solve_dependencies
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.audit import Operators, on_behalf
from shared.audit import record as audit_record
from shared.db import DatabaseTrouble, database_unavailable
from shared.errors import (
    FapiaoError,
    Unauthorized,
    ValidationFailed,
    field_errors,
    field_path,
)
from shared.logging import correlation_id
from shared.metrics import CONTENT_TYPE_LATEST, DB_UNAVAILABLE, HTTP_LATENCY, HTTP_REQUESTS, render

__all__ = [
    "BodyLimitMiddleware", "RequestContextMiddleware", "auth_dependency", "database_problem", "domain_problem",
    "field_errors", "field_path", "health_router", "install_problem_handlers", "is_json", "problem", "require_admin",
]

log = logging.getLogger(__name__)
PROBLEM = "application/problem+json"
_TITLES = {400: "Bad request", 404: "Not found", 405: "Method not allowed", 413: "Payload too large"}
_AUTH_MARK = "__fapiao_auth__"
F = TypeVar("F", bound=Callable[..., Any])


def problem(status: int, title: str, detail: str, *, code: str, **extra: Any) -> JSONResponse:
    body = {"type": f"https://fapiao.dev/problems/{code}", "title": title, "status": status, "detail": detail,
            "code": code, **extra}
    if (cid := correlation_id.get()) is not None:
        body["correlation_id"] = cid
    return JSONResponse(body, status_code=status, media_type=PROBLEM)


def auth_dependency(fn: F) -> F:
    """Mark a dependency as the route's authentication. When the request fails before the dependencies run
    (a body that is not JSON, or not valid), the error handlers run the marked dependencies first, so an
    unauthenticated caller hears 401 whatever the body, never a 400/415/422 that tells them about the route."""
    setattr(fn, _AUTH_MARK, True)
    return fn


ADMIN_BEARER = HTTPBearer(scheme_name="AdminToken", auto_error=False,
                          description="FAPIAO_ADMIN_TOKEN (`make up` keeps it in .run/admin-token) or a named "
                                      "operator's token (FAPIAO_OPERATOR_TOKENS)")


@auth_dependency
async def require_admin(request: Request,
                  credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(ADMIN_BEARER)] = None) -> None:
    """Dependency for /admin routes: FAPIAO_ADMIN_TOKEN or a named operator's token (compared in constant time).
    Notes who it is, for the audit log (shared.audit)."""
    operators = getattr(request.app.state, "operators", None)
    if operators is None:
        operators = request.app.state.operators = Operators.from_settings(request.app.state.settings)
    given = credentials.credentials.strip() if credentials else ""
    operator = operators.identify(given) if given else None
    if operator is None:
        raise Unauthorized("admin endpoints need 'Authorization: Bearer <FAPIAO_ADMIN_TOKEN or an operator's token>'")
    request.state.operator = operator
    request.state.on_behalf_of = on_behalf(request, operator)
    request.state.correlation_id = correlation_id.get()


def domain_problem(exc: FapiaoError) -> JSONResponse:
    extra = dict(exc.extra)
    if isinstance(exc, ValidationFailed):
        extra["errors"] = [e.as_dict() for e in exc.errors]
    response = problem(exc.status, exc.title, exc.detail, code=exc.code, **extra)
    if exc.retry_after is not None:
        # RFC 9110 §10.2.3: tells well-behaved clients (and proxies) when trying again makes sense.
        response.headers["Retry-After"] = str(exc.retry_after)
    return response


_DB_DETAIL = {
    "pool_exhausted": "the service is at capacity: no database connection became free in time",
    "connection_lost": "the database cannot be reached right now",
    "overloaded": "the database is out of resources right now",
    "conflict": "the request collided with a concurrent change and was rolled back",
    "timeout": "the database did not answer in time",
}


def database_problem(trouble: DatabaseTrouble) -> JSONResponse:
    """503 problem+json with Retry-After for database trouble (see shared.db.database_unavailable)."""
    detail = (f"{_DB_DETAIL.get(trouble.reason, 'the database cannot take this request now')}; retry after "
              f"{trouble.retry_after}s (with the same Idempotency-Key, if you sent one)")
    response = problem(503, "Service unavailable", detail, code="database_unavailable", reason=trouble.reason,
                       retry_after_seconds=trouble.retry_after)
    response.headers["Retry-After"] = str(trouble.retry_after)
    return response


def is_json(content_type: str | None) -> bool:
    """application/json or application/<anything>+json (parameters such as charset allowed)."""
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


def _auth_dependants(dependant: Dependant) -> Iterator[Dependant]:
    for sub in dependant.dependencies:
        if getattr(sub.call, _AUTH_MARK, False):
            yield sub
        else:
            yield from _auth_dependants(sub)


async def _authenticate_first(request: Request) -> JSONResponse | None:
    """Run the matched route's authentication dependencies (those marked with auth_dependency); the 401
    problem if one refuses, None when the caller is authenticated (or the route has no authentication)."""
    dependant = getattr(request.scope.get("route"), "dependant", None)
    if dependant is None:
        return None
    for sub in _auth_dependants(dependant):
        try:
            async with AsyncExitStack() as stack:
                solved = await solve_dependencies(request=request, dependant=sub, async_exit_stack=stack,
                                                  dependency_overrides_provider=request.app, embed_body_fields=False)
                if solved.errors:
                    raise Unauthorized("the Authorization header is not valid")
                result = sub.call(**solved.values)  # type: ignore[misc]
                if inspect.isawaitable(result):
                    await result
        except FapiaoError as exc:
            return domain_problem(exc)
    return None


def _unsupported_media_type(request: Request, errors: list[Any]) -> JSONResponse | None:
    """A body FastAPI left unparsed (its Content-Type is not JSON) that the route wanted as JSON: 415."""
    content_type = request.headers.get("content-type")
    if is_json(content_type):
        return None
    if not any(tuple(e.get("loc", ()))[:1] == ("body",) and isinstance(e.get("input"), bytes | bytearray)
               for e in errors):
        return None
    sent = repr(content_type[:100]) if content_type else "missing"
    response = problem(415, "Unsupported media type",
                       f"this endpoint takes a JSON body (Content-Type: application/json); Content-Type was {sent}",
                       code="unsupported_media_type")
    response.headers["Accept"] = "application/json"
    return response


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(FapiaoError)
    async def _domain(_: Request, exc: FapiaoError) -> JSONResponse:
        return domain_problem(exc)

    @app.exception_handler(RequestValidationError)
    async def _request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # The body is looked at only once the caller is known: 401 comes before 400, 415 and 422.
        if (refused := await _authenticate_first(request)) is not None:
            return refused
        errors = list(exc.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            return problem(400, "Malformed JSON", "the request body is not valid JSON (UTF-8)", code="malformed_json")
        if (unsupported := _unsupported_media_type(request, errors)) is not None:
            return unsupported
        fields = field_errors(errors)
        return problem(422, "Validation failed", f"{len(fields)} field(s) failed validation",
                       code="validation_failed", errors=[f.as_dict() for f in fields])

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and (refused := await _authenticate_first(request)) is not None:
            return refused  # a body that could not even be read ("error parsing the body"): auth first too
        codes = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
        code = codes.get(exc.status_code, "http_error")
        response = problem(exc.status_code, _TITLES.get(exc.status_code, "Error"), str(exc.detail), code=code)
        response.headers.update(exc.headers or {})
        if exc.status_code == 405:  # RFC 9110: Allow lists every method of the resource, not of one route
            response.headers["Allow"] = ", ".join(allowed_methods(request))
        return response


def allowed_methods(request: Request) -> list[str]:
    """The methods some route of this app answers at the request's path (several routes may share a path)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return sorted(methods)


class BodyLimitMiddleware:
    """413 before reading more than `max_bytes`, whether or not Content-Length is honest."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = False
                if too_big:
                    await self._reject(scope, receive, send)
                    return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # An HTTPException, because FastAPI turns any other error while reading a body into 400.
                    raise _TooLarge(413, f"request bodies are limited to {self.max_bytes} bytes")
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._reject(scope, receive, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem(413, "Payload too large", f"request bodies are limited to {self.max_bytes} bytes",
                           code="payload_too_large", limit_bytes=self.max_bytes)
        await response(scope, receive, send)


class _TooLarge(StarletteHTTPException):
    pass


class _Throttle:
    """allow(key): None while `interval` has not passed since the last allowed call for key, otherwise how
    many calls were held back in between."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def allow(self, key: str) -> int | None:
        now = time.monotonic()
        if now - self._last.get(key, -self.interval) < self.interval:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._held.pop(key, 0)


class RequestContextMiddleware:
    """Correlation id in and out (X-Correlation-Id), plus request metrics by route template."""

    def __init__(self, app: ASGIApp, *, service: str) -> None:
        self.app = app
        self.service = service
        self._quiet = _Throttle(1.0)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cid = None
        for name, value in scope.get("headers", ()):
            if name in (b"x-correlation-id", b"x-request-id"):
                candidate = value.decode("latin-1")[:64]
                if candidate.replace("-", "").replace("_", "").isalnum():
                    cid = candidate
        cid = cid or uuid.uuid4().hex
        token = correlation_id.set(cid)
        status = 500
        responded = False
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status, responded
            if message["type"] == "http.response.start":
                status = message["status"]
                responded = True
                await audit_record(scope, status, schema=self.service)  # before the answer leaves
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-correlation-id", cid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            # Answer here, inside the correlation context, rather than in Starlette's outer error middleware.
            trouble = database_unavailable(exc)
            if trouble is not None and not responded:
                # An outage, not a bug: one line (no traceback, no message: it may hold SQL parameters) at most
                # every second per reason, and 503.
                DB_UNAVAILABLE.labels(self.service, trouble.reason).inc()
                if (more := self._quiet.allow(trouble.reason)) is not None:
                    route = scope.get("route")
                    log.warning("database unavailable (%s: %s): 503 for %s %s%s", trouble.reason, trouble.cause,
                                scope["method"], getattr(route, "path", None) or "unmatched",
                                f" (and {more} more 503s for this reason since the last line)" if more else "")
                await database_problem(trouble)(scope, receive, send_with_id)
                return
            log.exception("unhandled error: %s", type(exc).__name__)
            if responded:
                raise
            await problem(500, "Internal error", "the server failed to handle this request; it has been logged",
                          code="internal")(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            HTTP_REQUESTS.labels(self.service, scope["method"], template, str(status)).inc()
            HTTP_LATENCY.labels(self.service, scope["method"], template).observe(time.perf_counter() - started)
            correlation_id.reset(token)


ReadyCheck = Callable[[], Awaitable[None]]
_READY: dict[str, Any] = {"type": "object", "required": ["status", "checks"], "properties": {
    "status": {"type": "string", "enum": ["ready", "not ready"]},
    "checks": {"type": "object", "additionalProperties": {"type": "string"}}}}


def health_router(*names: str) -> APIRouter:
    """/healthz (alive), /readyz (each named check passes), /metrics (Prometheus text).

    The checks themselves are `app.state.checks[name]`, registered by the lifespan once the engine and
    clients exist; a check not registered yet reports unavailable.
    """
    router = APIRouter(tags=["health"])

    async def not_started() -> None:
        raise RuntimeError("not started")

    @router.get("/healthz")
    async def healthz(request: Request) -> dict[str, str]:
        # A service of several processes (the issuer's API workers) also says which one answered.
        return {"status": "ok", **getattr(request.app.state, "process", {})}

    @router.get("/readyz", responses={503: {"description": "Not ready: `checks` says which dependency is not",
                                             "content": {"application/json": {"schema": _READY}}}})
    async def readyz(request: Request) -> JSONResponse:
        results: dict[str, str] = {}
        ok = True
        checks: dict[str, ReadyCheck] = request.app.state.checks
        for name in names:
            try:
                await checks.get(name, not_started)()
                results[name] = "ok"
            except Exception as exc:  # noqa: BLE001 - report, do not raise
                ok = False
                results[name] = f"unavailable: {type(exc).__name__}: {str(exc)[:200]}"
        return JSONResponse({"status": "ready" if ok else "not ready", "checks": results},
                            status_code=200 if ok else 503)

    @router.get("/metrics", response_class=PlainTextResponse, responses={200: {
        "description": "Prometheus text exposition format",
        "content": {"text/plain": {"schema": {"type": "string"}}}}})
    async def metrics(request: Request) -> Response:
        # An app may bring its own readings up to date first (the issuer's sampler: several issuers in one
        # process share the gauges, and each /metrics shows its own app's last reading).
        for publish in getattr(request.app.state, "before_metrics", ()):
            publish()
        return Response(render(), media_type=CONTENT_TYPE_LATEST)

    return router
