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
