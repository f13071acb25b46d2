"""The order in which a request is refused: who you are (401) before what you sent (400 malformed JSON,
415 not JSON, 422 invalid) — on the issuer's tenant routes and on every service's admin routes."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from tests import factories
from tests.harness import ADMIN_TOKEN, Infra, RunningIssuer, Tenant

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
WRONG = {"Authorization": "Bearer not-the-token"}
MALFORMED = b'{"name": "x'
JSON = {"Content-Type": "application/json"}
TEXT = {"Content-Type": "text/plain"}


def _problem(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, f"{r.request.method} {r.request.url.path}: {r.status_code} {r.text[:300]}"
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    body = r.json()
    assert body["status"] == status and body["code"] == code, body
    return body


async def _refused_in_order(client: httpx.AsyncClient, method: str, path: str, good: bytes,
                            auth: dict[str, str]) -> None:
    """Without (or with a wrong) credential every bad body is 401; with it, each body gets its own answer."""
    for creds in ({}, WRONG):
        for body, headers in ((MALFORMED, JSON), (good, TEXT), (good, {}), (b"[1, 2]", JSON)):
            r = await client.request(method, path, content=body, headers={**headers, **creds})
            _problem(r, 401, "unauthorized")
    _problem(await client.request(method, path, content=MALFORMED, headers={**JSON, **auth}), 400, "malformed_json")
    body = _problem(await client.request(method, path, content=good, headers={**TEXT, **auth}), 415,
                    "unsupported_media_type")
    assert "text/plain" in body["detail"]
    r = await client.request(method, path, content=good, headers={**TEXT, **auth})
    assert r.headers["accept"] == "application/json"
    _problem(await client.request(method, path, content=good, headers=auth), 415, "unsupported_media_type")
    _problem(await client.request(method, path, content=b"[1, 2]", headers={**JSON, **auth}), 422,
             "validation_failed")


async def test_issuer_tenant_routes_authenticate_before_reading_the_body(issuer: RunningIssuer,
                                                                        tenant: Tenant) -> None:
    invoice = httpx.Request("POST", "/", json=factories.invoice(tenant.tax_id)).content
    await _refused_in_order(issuer.client, "POST", "/v1/invoices", invoice, tenant.headers)
    batch = httpx.Request("POST", "/", json={"invoices": [factories.invoice(tenant.tax_id)]}).content
    await _refused_in_order(issuer.client, "POST", "/v1/invoices/batch", batch, tenant.headers)
    # The same body with the right type is accepted (the 415 was about the type, not the content).
    r = await issuer.client.post("/v1/invoices", content=invoice, headers={**JSON, **tenant.headers})
    assert r.status_code == 201, r.text
    void = await issuer.client.post(f"/v1/invoices/{r.json()['id']}/void", content=b'{"reason": "x',
                                    headers=JSON)
    _problem(void, 401, "unauthorized")
    # application/<x>+json and a charset are JSON too.
    again = await issuer.client.post("/v1/invoices", content=invoice,
                                     headers={"Content-Type": "application/merge-patch+json; charset=utf-8",
                                              **tenant.headers})
    assert again.status_code == 200, again.text  # same number, same content: the existing invoice


async def test_csv_import_still_takes_text_csv(issuer: RunningIssuer, tenant: Tenant) -> None:
    r = await issuer.client.post("/v1/invoices/import", content=b"number,kind\n", headers={
        **tenant.headers, "Content-Type": "text/csv"})
    assert r.status_code not in (401, 415) and r.status_code < 500, r.text
    r = await issuer.client.post("/v1/invoices/import", content=b"number,kind\n", headers={
        "Content-Type": "text/csv"})
    _problem(r, 401, "unauthorized")


async def test_issuer_admin_route_authenticates_before_reading_the_body(issuer: RunningIssuer) -> None:
    good = httpx.Request("POST", "/", json={"name": "Auth first", "tax_id": factories.uscc()}).content
    await _refused_in_order(issuer.client, "POST", "/admin/tenants", good, ADMIN)


# --- the other services: their apps answer these without a database (nothing is stored) ---------------

def _base(infra: Infra) -> dict[str, Any]:
    return {"env": "test", "database_url": infra.database_url, "admin_token": ADMIN_TOKEN, "log_json": False}


def _notifier(infra: Infra) -> Any:
    from services.notifier.app import create_app
    from services.notifier.settings import NotifierSettings

    return create_app(NotifierSettings(**_base(infra), kafka_bootstrap=infra.kafka_bootstrap,
                                       secrets_key="test-secrets-key-" + uuid.uuid4().hex))


def _reconciler(infra: Infra) -> Any:
    from services.reconciler.app import create_app
    from services.reconciler.settings import ReconcilerSettings

    return create_app(ReconcilerSettings(**_base(infra), kafka_bootstrap=infra.kafka_bootstrap))


def _taxstore(infra: Infra) -> Any:
    from services.taxstore.app import create_app
    from services.taxstore.settings import TaxstoreSettings

    return create_app(TaxstoreSettings(**_base(infra)))


def _sync(infra: Infra) -> Any:
    from services.sync.app import create_app
    from services.sync.settings import SyncSettings

    return create_app(SyncSettings(**_base(infra), kafka_bootstrap=infra.kafka_bootstrap))


@pytest.fixture
async def client_for(infra: Infra) -> AsyncIterator[Callable[[Callable[[Infra], Any]], httpx.AsyncClient]]:
    clients: list[httpx.AsyncClient] = []

    def make(factory: Callable[[Infra], Any]) -> httpx.AsyncClient:
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=factory(infra)), base_url="http://svc.test")
        clients.append(client)
        return client

    yield make
    for c in clients:
        await c.aclose()


async def test_notifier_admin_route(client_for) -> None:  # type: ignore[no-untyped-def]
    good = httpx.Request("POST", "/", json={"channel": "webhook", "url": "https://example.com/hook"}).content
    await _refused_in_order(client_for(_notifier), "POST", "/admin/tenants/t1/subscriptions", good, ADMIN)


async def test_reconciler_admin_route(client_for) -> None:  # type: ignore[no-untyped-def]
    good = httpx.Request("POST", "/", json={"invoice_id": str(uuid.uuid4()), "reason": "auth first"}).content
    await _refused_in_order(client_for(_reconciler), "POST", "/admin/cases", good, ADMIN)


async def test_taxstore_admin_route(client_for) -> None:  # type: ignore[no-untyped-def]
    client = client_for(_taxstore)
    await _refused_in_order(client, "PUT", "/admin/faults", b'{"error_rate": 0}', ADMIN)
    await _refused_in_order(client, "PUT", f"/admin/sellers/{factories.uscc()}", b'{"name": "x"}', ADMIN)


async def test_sync_admin_route(client_for) -> None:  # type: ignore[no-untyped-def]
    # No admin route of the sync service takes a body: a stray (malformed) one still gets 401 first.
    client = client_for(_sync)
    for creds in ({}, WRONG):
        r = await client.request("GET", "/admin/status", content=MALFORMED, headers={**JSON, **creds})
        _problem(r, 401, "unauthorized")
        _problem(await client.get(f"/admin/submissions/{uuid.uuid4()}", headers=creds), 401, "unauthorized")
