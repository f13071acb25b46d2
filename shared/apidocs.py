"""Every service's FastAPI app and the OpenAPI document it publishes, made to match what the service does.

- `/docs` (Swagger UI) and `/redoc` load their scripts from this service (the fastapi-offline package ships
  them), never from a CDN: they work on a machine without internet.
- Authentication is a declared bearer scheme (`AdminToken` for operator routes, `ApiKey` for the issuer's tenant
  routes; shared.http and the issuer's deps.py declare them), so Swagger UI has an Authorize button.
- Errors are documented as they are answered: `application/problem+json` with the `Problem` schema, and each
  operation lists the statuses it can answer besides its own: 401 when it needs a credential, 404 when its path
  names something, 400/413/415 when it takes a body, 422 when it takes input, 429 under the paths a service limits
  (`limited`: the issuer's /v1, with Retry-After and the RateLimit header fields on 429 and 2xx), 503 (database
  or a service it relies on unavailable) for every route but the health probes.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel

__all__ = ["PROBLEM_SCHEMA", "service_app"]

PROBLEM = "application/problem+json"
PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object", "title": "Problem", "description": "RFC 9457 problem details, as every error is answered",
    "required": ["type", "title", "status", "detail", "code"],
    "properties": {
        "type": {"type": "string", "description": "https://fapiao.dev/problems/<code>"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string", "description": "what went wrong, in words"},
        "code": {"type": "string", "description": "a stable machine-readable code"},
        "correlation_id": {"type": "string", "description": "the request's X-Correlation-ID"},
        "errors": {"type": "array", "description": "for 422: one entry per field at fault",
                   "items": {"type": "object", "required": ["path", "reason"], "properties": {
                       "path": {"type": "string", "description": "the field's path, e.g. lines[2].quantity"},
                       "reason": {"type": "string"}}}},
    },
    "additionalProperties": True,
}
_GENERIC = {
    400: "The body is not valid JSON (or not the content type declared)",
    401: "No credential, or not a valid one",
    404: "Not found (another tenant's is not found either)",
    413: "The body is larger than this service accepts",
    415: "The body's Content-Type is not one this operation takes",
    422: "A field is missing or not valid; `errors` names each one by its path",
    429: "Too many requests: a budget of this tenant is spent (`rate_limited`) or it has too many requests in flight "
         "(`too_many_concurrent`); try again after Retry-After seconds",
    503: "The database, or a service this one relies on, is unavailable; try again after Retry-After seconds",
}
_PROBES = {"/healthz", "/readyz", "/metrics"}
_INT = {"type": "integer", "minimum": 0}
RATE_LIMIT_HEADERS: dict[str, Any] = {
    "RateLimit-Limit": {"description": "the budget's size: requests (or invoices, for imports) at once",
                        "schema": _INT},
    "RateLimit-Remaining": {"description": "what is left of it after this request", "schema": _INT},
    "RateLimit-Reset": {"description": "seconds until the budget is whole again", "schema": _INT},
    "RateLimit-Policy": {"description": 'the budget as `<size>;w=<seconds to refill>;comment="<read|write|import>"`',
                         "schema": {"type": "string"}},
}
_RETRY_AFTER = {"description": "seconds after which the same request may pass", "required": True, "schema": _INT}


def service_app(*, documented: tuple[type[BaseModel], ...] = (), limited: tuple[str, ...] = (),
                **kwargs: Any) -> FastAPI:
    """FastAPI(**kwargs) with offline /docs and /redoc and an OpenAPI document that documents the errors.
    `documented`: models a route names by `$ref` (#/components/schemas/<Model>) without taking them as a
    parameter (a handler that reads raw JSON and validates it its own way). `limited`: path prefixes under rate
    limits (429 and the RateLimit header fields documented)."""
    app = FastAPIOffline(**kwargs)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, description=app.description,
                              routes=app.routes, servers=app.servers)
            schemas = doc.setdefault("components", {}).setdefault("schemas", {})
            for model in documented:
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                schemas.update(schema.pop("$defs", {}))
                schemas[model.__name__] = schema
            app.openapi_schema = document_errors(doc, limited=limited)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def document_errors(doc: dict[str, Any], *, limited: tuple[str, ...] = ()) -> dict[str, Any]:
    """Add the Problem schema and, per operation, the error statuses it can answer, all as problem+json."""
    components = doc.setdefault("components", {})
    components.setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
    problem = {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for path, item in doc.get("paths", {}).items():
        for method, op in item.items():
            if method not in {"get", "put", "post", "patch", "delete"}:
                continue
            responses = op.setdefault("responses", {})
            if path in _PROBES:
                continue
            wanted = {503}
            if op.get("security"):
                wanted.add(401)
            if "{" in path:
                wanted.add(404)
            if "requestBody" in op:
                wanted |= {400, 413, 415, 422}
            if op.get("parameters"):
                wanted.add(422)
            is_limited = path.startswith(limited) if limited else False
            if is_limited:
                wanted.add(429)
            for status in sorted(wanted):
                responses.setdefault(str(status), {"description": _GENERIC[status]})
            for status, answer in responses.items():
                if status[0] in "45":
                    answer["content"] = problem
                if status[0] == "2" and is_limited:
                    answer["headers"] = {**answer.get("headers", {}), **RATE_LIMIT_HEADERS}
                if status == "429":
                    retry = {"Retry-After": _RETRY_AFTER}
                    answer["headers"] = {**retry, **RATE_LIMIT_HEADERS} if is_limited else retry
    components.get("schemas", {}).pop("HTTPValidationError", None)
    components.get("schemas", {}).pop("ValidationError", None)
    return doc
