"""Each service's OpenAPI document as committed in tests/unit/openapi/: a change to the public API (the issuer's
above all) shows in review as a change to that file, never by accident. After a deliberate change:
FAPIAO_WRITE_OPENAPI=1 .venv/bin/pytest tests/unit/test_openapi.py, and commit the files with the change."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent / "openapi"
ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("issuer", "sync", "reconciler", "notifier", "taxstore")

# create_app() in a process of its own: it configures logging, which would change this test session's.
_DUMP = """
import json, sys
from importlib import import_module
out = {}
for name in sys.argv[1:]:
    out[name] = import_module(f"services.{name}.app").create_app().openapi()
sys.stdout.write(json.dumps(out))
"""


@pytest.fixture(scope="module")
def documents(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAPIAO_")} | {
        "FAPIAO_ENV": "development", "FAPIAO_DATABASE_URL": "postgresql://u:p@127.0.0.1:9/openapi",
        "FAPIAO_ADMIN_TOKEN": "openapi-" + "x" * 24, "FAPIAO_KAFKA_BOOTSTRAP": "127.0.0.1:9",
        "FAPIAO_LOG_JSON": "false", "FAPIAO_LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT)}  # this tree's code
    done = subprocess.run([sys.executable, "-c", _DUMP, *SERVICES], env=env, capture_output=True, text=True,
                          timeout=120, cwd=tmp_path_factory.mktemp("openapi"), check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _text(doc: dict) -> str:
    return json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


@pytest.mark.parametrize("service", SERVICES)
def test_the_openapi_document_is_the_committed_one(documents: dict[str, dict], service: str) -> None:
    path = HERE / f"{service}.json"
    now = _text(documents[service])
    if os.environ.get("FAPIAO_WRITE_OPENAPI") == "1":
        path.write_text(now, encoding="utf-8")
    assert path.is_file(), f"no {path.name}: FAPIAO_WRITE_OPENAPI=1 writes it"
    assert now == path.read_text(encoding="utf-8"), (
        f"{service}'s OpenAPI document changed (diff it against {path}); if on purpose, rewrite it with "
        "FAPIAO_WRITE_OPENAPI=1 and say why in the commit")


_DOCS = """
import json, sys
from importlib import import_module
from fastapi.testclient import TestClient
out = {}
for name in sys.argv[1:]:
    client = TestClient(import_module(f"services.{name}.app").create_app())  # no lifespan: no database needed
    pages = {path: client.get(path) for path in ("/docs", "/redoc")}
    assets = {}
    for path, r in pages.items():
        for ref in __import__("re").findall(r'(?:src|href)="([^"]+)"', r.text):
            if ref.startswith("/"):
                got = client.get(ref)
                assets[ref] = [got.status_code, len(got.content)]
            else:
                assets[ref] = None
    out[name] = {"pages": {p: [r.status_code, r.text] for p, r in pages.items()}, "assets": assets}
sys.stdout.write(json.dumps(out))
"""


def test_swagger_ui_and_redoc_load_everything_from_the_service_itself(tmp_path: Path) -> None:
    """On a machine without internet /docs and /redoc still work: no CDN, every script and style served here."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAPIAO_")} | {
        "FAPIAO_ENV": "development", "FAPIAO_DATABASE_URL": "postgresql://u:p@127.0.0.1:9/openapi",
        "FAPIAO_ADMIN_TOKEN": "openapi-" + "x" * 24, "FAPIAO_KAFKA_BOOTSTRAP": "127.0.0.1:9",
        "FAPIAO_LOG_JSON": "false", "FAPIAO_LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", _DOCS, *SERVICES], env=env, capture_output=True, text=True,
                          timeout=120, cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stderr
    for service, seen in json.loads(done.stdout).items():
        for path, (status, html) in seen["pages"].items():
            assert status == 200 and "cdn" not in html.lower() and "googleapis" not in html, (service, path)
        external = [ref for ref, got in seen["assets"].items() if got is None and not ref.startswith("data:")]
        assert external == [], (service, external)
        scripts = {ref: got for ref, got in seen["assets"].items() if ref.endswith(".js")}
        assert len(scripts) == 2 and all(got[0] == 200 and got[1] > 100_000 for got in scripts.values()), scripts


def test_errors_are_documented_as_problem_json_with_the_bearer_schemes(documents: dict[str, dict]) -> None:
    issuer = documents["issuer"]
    assert set(issuer["components"]["securitySchemes"]) == {"AdminToken", "ApiKey"}
    create = issuer["paths"]["/v1/invoices"]["post"]
    assert create["security"] == [{"ApiKey": []}]
    assert not any(p["name"].lower() == "authorization" for p in create.get("parameters", []))
    for service, doc in documents.items():
        for path, item in doc["paths"].items():
            for method, op in item.items():
                for status, answer in op["responses"].items():
                    if status[0] in "45" and path not in ("/readyz", "/healthz"):
                        assert list(answer.get("content", {})) == ["application/problem+json"], (service, path, status)
                if op.get("security"):
                    assert "401" in op["responses"], (service, method, path)


@pytest.mark.parametrize(("body", "valid"), [
    ({"channel": "webhook", "url": "https://erp.example.com/hooks/fapiao"}, True),
    ({"channel": "email", "emails": ["finance@example.com"]}, True),
    ({"channel": "email", "emails": ["finance@example.com"], "url": None}, True),
    ({"channel": "email"}, False),
    ({"channel": "webhook"}, False),
    ({"channel": "webhook", "url": "https://erp.example.com/h", "emails": ["finance@example.com"]}, False),
    ({"channel": "email", "emails": ["finance@example.com"], "url": "https://erp.example.com/h"}, False),
])
def test_the_subscription_schema_refuses_what_the_validator_refuses(documents: dict[str, dict], body: dict,
                                                                    valid: bool) -> None:
    """Schemathesis found the schema accepting {"channel": "email"}, which the service then refused."""
    import jsonschema

    from shared.contracts.notifier import SubscriptionCreate

    doc = documents["issuer"]
    schema = {"$ref": "#/components/schemas/SubscriptionCreate", "components": doc["components"]}
    by_schema = jsonschema.Draft202012Validator(schema).is_valid(body)
    by_validator = not SubscriptionCreate.model_validate(body).field_problems()
    assert by_schema is valid and by_validator is valid, (body, by_schema, by_validator)


def test_every_v1_operation_documents_the_limits(documents: dict[str, dict]) -> None:
    """429 problem+json with Retry-After and the RateLimit header fields on every tenant operation of the issuer,
    the RateLimit fields on its successes; no other service's /v1 (the tax store's) claims limits it lacks."""
    operations = [(path, op) for path, item in documents["issuer"]["paths"].items() if path.startswith("/v1/")
                  for op in item.values()]
    assert len(operations) > 20
    for path, op in operations:
        limited = op["responses"]["429"]
        assert list(limited["content"]) == ["application/problem+json"], path
        assert limited["headers"]["Retry-After"]["required"] is True, path
        assert {"RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset", "RateLimit-Policy"} <= set(
            limited["headers"]), path
        for status, answer in op["responses"].items():
            if status.startswith("2"):
                assert "RateLimit-Remaining" in answer.get("headers", {}), (path, status)
    for path, item in documents["taxstore"]["paths"].items():
        assert all("429" not in op["responses"] for op in item.values()), path
    notifier_ping = documents["notifier"]["paths"]["/admin/tenants/{tenant_id}/subscriptions/{subscription_id}/ping"]
    assert "Retry-After" in notifier_ping["post"]["responses"]["429"]["headers"]
