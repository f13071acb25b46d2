"""Every dependency of every route is a coroutine function (or a class whose __call__ is one): FastAPI runs a
plain `def` dependency in a worker thread, one hop there and back per request and dependency. On the issuer's
POST /v1/invoices four such hops took about 7 % of its busy samples (py-spy, 200 POSTs/s, 2026-12-04)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# create_app() in a process of its own: it configures logging, which would change this test session's.
_FIND = """
import inspect, json, sys
from importlib import import_module

def walk(dependant, route, seen, sync):
    for sub in dependant.dependencies:
        call = sub.call
        target = call if inspect.isfunction(call) or inspect.ismethod(call) else getattr(call, "__call__", call)
        name = getattr(call, "__qualname__", type(call).__qualname__)
        seen.add(name)
        if not inspect.iscoroutinefunction(target) and not inspect.isasyncgenfunction(target):
            sync.add(f"{route}: {name}")
        walk(sub, route, seen, sync)

def routes(app):
    # FastAPI 0.165 keeps included routers as _IncludedRouter, whose effective routes carry the dependants with
    # the include's own dependencies; plain APIRoutes carry theirs.
    for r in app.routes:
        if hasattr(r, "effective_candidates"):
            yield from r.effective_candidates()
        elif hasattr(r, "dependant"):
            yield r

seen, sync, count = set(), set(), 0
for name in sys.argv[1:]:
    for r in routes(import_module(f"services.{name}.app").create_app()):
        count += 1
        walk(r.dependant, f"{name} {r.path}", seen, sync)
print(json.dumps({"routes": count, "seen": sorted(seen), "sync": sorted(sync)}))
"""

def test_no_route_of_any_service_has_a_dependency_that_runs_in_a_thread() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAPIAO_")} | {
        "FAPIAO_ENV": "development", "FAPIAO_DATABASE_URL": "postgresql://u:p@127.0.0.1:9/deps",
        "FAPIAO_ADMIN_TOKEN": "deps-" + "x" * 24, "FAPIAO_KAFKA_BOOTSTRAP": "127.0.0.1:9",
        "FAPIAO_LOG_JSON": "false", "FAPIAO_LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", _FIND, "issuer", "sync", "reconciler", "notifier", "taxstore"],
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    # The walk reached the routes and their dependencies (else this test would pass on nothing).
    assert found["routes"] > 100 and {"admitted_tenant", "issuing", "require_admin", "_transaction"} <= set(
        found["seen"]), found
    assert found["sync"] == [], "dependencies FastAPI would run in a worker thread:\n" + "\n".join(found["sync"])
