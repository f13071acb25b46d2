"""Every service's OpenAPI document against the service itself: schemathesis (its CLI, `st run`) with all of
its checks — no 5xx, every status and content type documented, responses as their schemas say, schema-valid
requests accepted and schema-violating ones refused, 405 with a true Allow header, 401 without a credential,
a created resource readable afterwards — over every operation of the issuer, the tax store, sync, the
reconciler and the notifier. Zero failures of any kind.

The services run as for the other end-to-end tests (a database of their own, real Kafka). Cases generated to be
schema-valid are made to obey the rules a schema cannot state (tests/schemathesis/hooks.py says which).
FAPIAO_SCHEMATHESIS_EXAMPLES (default 30 per operation and phase) and FAPIAO_SCHEMATHESIS_SEED (default 1:
every run tries the same cases) make a longer or a different run; reports land in .test-artifacts/schemathesis.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from fapiao.infra import free_port
from fapiao.infra.procs import clean_environ
from shared.uscc import check_char
from tests.harness import (
    ADMIN,
    ADMIN_TOKEN,
    ARTIFACTS,
    REPO,
    Infra,
    Receiver,
    fresh_database,
    issuer_settings,
    running_issuer,
    serve_app,
    start_all,
    stop_all,
)
from tests.harness.pipelines import plan_recon

SERVICES = ("issuer", "taxstore", "sync", "reconciler", "notifier")
EXAMPLES = os.environ.get("FAPIAO_SCHEMATHESIS_EXAMPLES", "30")
SEED = os.environ.get("FAPIAO_SCHEMATHESIS_SEED", "1")
HERE = REPO / "tests" / "schemathesis"
ST = Path(sys.executable).with_name("st")  # the CLI schemathesis installs beside this interpreter


@dataclass
class Stack:
    urls: dict[str, str]
    api_key: str
    tax_id: str
    webhook: str


@pytest.fixture(scope="module")
async def stack(infra: Infra, receiver: Receiver) -> AsyncIterator[Stack]:
    """All five services on a database and topic prefix of their own: schemathesis changes faults, loses
    invoices and creates tenants, which no other test may see."""
    database = await fresh_database(infra, f"st_{uuid.uuid4().hex[:8]}")
    plan = plan_recon(infra, database)
    try:
        start_all(plan.all)
    except Exception as exc:  # noqa: BLE001 - said in the failure
        stop_all(plan.all)
        pytest.fail(f"could not start the services for schemathesis: {exc}", pytrace=False)
    settings = issuer_settings(infra, database_url=database, topic_prefix=plan.prefix,
                               reconciler_url=plan.reconciler.url, notifier_url=plan.notifier.url,
                               taxstore_url=plan.taxstore.url, sync_url=plan.sync.url)
    try:
        async with running_issuer(settings) as issuer:
            port = free_port()
            server, task = await serve_app(issuer.app, port)
            try:
                tax_id = "91310000MA1FTH000" + check_char("91310000MA1FTH000")
                created = await issuer.client.post("/admin/tenants", headers=ADMIN,
                                                   json={"name": "契约测试 Schemathesis Co.", "tax_id": tax_id})
                assert created.status_code == 201, created.text
                async with httpx.AsyncClient(timeout=10) as c:
                    registered = await c.put(f"{plan.taxstore.url}/admin/sellers/{tax_id}", headers=ADMIN,
                                             json={"name": "契约测试 Schemathesis Co."})
                assert registered.status_code in (200, 201), registered.text
                yield Stack(
                    urls={"issuer": f"http://127.0.0.1:{port}", "taxstore": plan.taxstore.url, "sync": plan.sync.url,
                          "reconciler": plan.reconciler.url, "notifier": plan.notifier.url},
                    api_key=created.json()["api_key"], tax_id=tax_id, webhook=receiver.url("/hooks/schemathesis"))
            finally:
                server.should_exit = True  # type: ignore[attr-defined]
                await asyncio.wait_for(task, 10)
    finally:
        stop_all(plan.all)


@pytest.mark.timeout(660)  # the run itself is bounded at 600 s below; the issuer's takes 3-5 min on 2 busy cores
@pytest.mark.parametrize("service", SERVICES)
async def test_the_service_does_what_its_openapi_document_says(stack: Stack, service: str) -> None:
    assert ST.is_file(), f"schemathesis's CLI is not at {ST}: `make test` installs the dev dependencies"
    url = stack.urls[service]
    async with httpx.AsyncClient(timeout=10) as c:
        document = (await c.get(f"{url}/openapi.json")).json()
    operations = sum(1 for item in document["paths"].values() for m in item if m in
                     {"get", "put", "post", "patch", "delete"})
    reports = ARTIFACTS / "schemathesis"
    reports.mkdir(parents=True, exist_ok=True)
    junit = reports / f"{service}.xml"
    env = {**clean_environ(), "PYTHONPATH": str(REPO), "SCHEMATHESIS_HOOKS": "tests.schemathesis.hooks",
           "FAPIAO_ST_ADMIN_TOKEN": ADMIN_TOKEN, "FAPIAO_ST_API_KEY": stack.api_key,
           "FAPIAO_ST_SELLER": stack.tax_id, "FAPIAO_ST_WEBHOOK_URL": stack.webhook}
    cmd = [str(ST), "--config-file", str(HERE / "schemathesis.toml"), "run", f"{url}/openapi.json",
           # One worker: Python 3.11.7's ast is not thread-safe, and Hypothesis parses lambdas while it draws.
           "--checks", "all", "--max-examples", EXAMPLES, "--seed", SEED, "--workers", "1",
           "--request-timeout", "15", "--generation-database", "none", "--no-color",
           "--report", "junit", "--report-junit-path", str(junit)]
    proc = await asyncio.create_subprocess_exec(*cmd, env=env, cwd=str(REPO), stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    try:
        out_bytes, _ = await asyncio.wait_for(proc.communicate(), timeout=600)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"schemathesis did not finish within 600 s on {service}")
    out = out_bytes.decode(errors="replace")
    (reports / f"{service}.txt").write_text(out, encoding="utf-8")
    failures = out[out.find("FAILURES"):] if "FAILURES" in out else out[-6000:]
    assert proc.returncode == 0, f"schemathesis found failures on {service} (all of it in {reports}):\n" \
                                 f"{failures[:12000]}"
    # It did test: every operation, and many cases each.
    tested = re.search(r"Tested:\s+(\d+)", out)
    generated = re.search(r"(\d+) generated, (\d+) passed", out)
    assert tested and int(tested[1]) == operations, (operations, out[-3000:])
    assert generated and int(generated[1]) == int(generated[2]) >= 2 * operations, out[-3000:]
