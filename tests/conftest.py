"""The suite's fixtures, registered over tests/harness (where the machinery lives; import from there).

Real infrastructure for the whole suite: PostgreSQL and Kafka started here, on free ports, in a private
directory — never the `make up` stack. Set FAPIAO_TEST_DATABASE_URL / FAPIAO_TEST_KAFKA_BOOTSTRAP to use servers
of your own instead. Missing infrastructure fails the run with the reason; nothing skips.

Session-scoped processes keep the settings they were started with; a test that needs others runs its own
process (`recon_pipeline.start_own(...)`), which the fixture stops afterwards, bringing the shared one back.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

# Imported now, at the top of the stack: hypothesis's pytest plugin imports it at the end of a session that did not,
# and CPython 3.11.7's parser, asked to (assertion-)rewrite it that deep in the stack, fails with "SystemError: AST
# constructor recursion depth mismatch" after every test has passed.
import hypothesis  # noqa: F401
import pytest

from fapiao.infra import KafkaCluster, free_port
from tests.harness import (  # noqa: F401 - the old names, re-exported while tests still import them from here
    ADMIN_TOKEN,
    ARTIFACTS,
    NOTIFIER_ENV,
    RECONCILER_ENV,
    REPO,
    Infra,
    InfraError,
    Pipeline,
    Received,
    Receiver,
    ReconPipeline,
    ReconProcesses,
    RunningIssuer,
    ServiceProcess,
    Tenant,
    eventually,
    fresh_database,
    issuer_settings,
    metric,
    plan_pipeline,
    plan_recon,
    process_env,
    read_topic,
    running_infra,
    running_issuer,
    running_kafka_cluster,
    serve_app,
    start_all,
    start_issuer,
    stop_all,
)
from tests.harness.pipelines import file_label


@pytest.fixture(scope="session")
def infra(request: pytest.FixtureRequest) -> Iterator[Infra]:
    # From this (main) thread: children die with the thread that spawned them (PR_SET_PDEATHSIG).
    try:
        with running_infra(keep=lambda: bool(request.session.testsfailed)) as infra:
            yield infra
    except InfraError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="module")
def kafka_cluster(infra: Infra) -> Iterator[KafkaCluster]:
    """A private 3-broker KRaft cluster for one test module (replication, a broker lost): the rest of the suite
    stays on the one broker of `infra`, and the three JVMs are gone once the module is done."""
    try:
        with running_kafka_cluster(infra.workdir) as cluster:
            yield cluster
    except InfraError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
async def issuer(infra: Infra) -> AsyncIterator[RunningIssuer]:
    """One in-process issuer (real PostgreSQL, real Kafka, lifespan and outbox relay running)."""
    async with running_issuer(issuer_settings(infra)) as issuer:
        yield issuer


@pytest.fixture
def stack_home() -> Path:
    """A directory for a test's own `make up` stack: under .test-artifacts/, not the system temp dir. A second
    pytest session starting on this machine resets /tmp/pytest-of-<user> to mode 0700, and the stack's
    PostgreSQL (an unprivileged user when the tests run as root) could then no longer reach its files."""
    home = ARTIFACTS / "stacks" / uuid.uuid4().hex[:10]
    home.mkdir(parents=True)
    return home


@pytest.fixture
async def tenant(issuer: RunningIssuer) -> Tenant:
    return await issuer.new_tenant()


# --- the pipeline: the session's issuer, a tax store and sync -----------------------------------------------

@pytest.fixture(scope="session")
def pipeline_processes(infra: Infra, issuer: RunningIssuer) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    procs = plan_pipeline(infra, issuer.settings.topic_prefix)  # type: ignore[attr-defined]
    try:
        for p in procs:
            p.start()
    except (OSError, RuntimeError) as exc:  # could not spawn (OSError), exited early, or not ready (TimeoutError)
        stop_all(procs)
        pytest.fail(f"could not start the tax store and sync processes: {exc}", pytrace=False)
    yield procs
    stop_all(procs)


@pytest.fixture
async def pipeline(issuer: RunningIssuer,
                   pipeline_processes: tuple[ServiceProcess, ServiceProcess]) -> AsyncIterator[Pipeline]:
    taxstore, sync = pipeline_processes
    start_all([sync])  # a test killed it: bring it back
    p = Pipeline(issuer, taxstore, sync)
    await p.clear_faults()
    yield p
    await p.clear_faults()


# --- the reconciler's pipeline: its own issuer, database, tax store, sync, reconciler, notifier, mail sink --

@pytest.fixture(scope="session")
async def recon_database(infra: Infra) -> str:
    """The reconciler pipeline's own database. Two deployments must not share a service's schema: the sync
    services' retry schedulers, for one, would take each other's rows and submit them to the wrong store."""
    return await fresh_database(infra, f"recon_{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="session")
def recon_plan(infra: Infra, recon_database: str) -> ReconProcesses:
    """The reconciler pipeline's processes, not started yet: their ports are known to the issuer before."""
    return plan_recon(infra, recon_database)


@pytest.fixture(scope="session")
async def recon_issuer(infra: Infra, recon_plan: ReconProcesses, recon_database: str) -> AsyncIterator[RunningIssuer]:
    """A second in-process issuer on the pipeline's database and topic prefix; it proxies cases to the
    reconciler and subscriptions, history and mutes to the notifier."""
    settings = issuer_settings(infra, database_url=recon_database, topic_prefix=recon_plan.prefix,
                               reconciler_url=recon_plan.reconciler.url, notifier_url=recon_plan.notifier.url,
                               taxstore_url=recon_plan.taxstore.url, sync_url=recon_plan.sync.url,
                               self_check_interval=2.0, self_check_grace=5.0)
    async with running_issuer(settings) as issuer:
        yield issuer


@pytest.fixture(scope="session")
def recon_processes(recon_plan: ReconProcesses, recon_issuer: RunningIssuer) -> Iterator[ReconProcesses]:
    procs = recon_plan.all
    try:
        for p in procs:
            p.start()
    except (OSError, RuntimeError) as exc:  # could not spawn (OSError), exited early, or not ready (TimeoutError)
        stop_all(procs)
        pytest.fail(f"could not start the reconciler's pipeline: {exc}", pytrace=False)
    yield recon_plan
    stop_all(procs)


@pytest.fixture
async def recon_pipeline(request: pytest.FixtureRequest, infra: Infra, recon_issuer: RunningIssuer,
                         recon_processes: ReconProcesses) -> AsyncIterator[ReconPipeline]:
    procs = recon_processes
    start_all(procs.all)  # a test killed one: bring it back
    p = ReconPipeline(recon_issuer, procs.taxstore, procs.sync, reconciler=procs.reconciler, notifier=procs.notifier,
                      infra=infra, mail_dir=procs.mail_dir, processes=procs, test=file_label(request.node.name))
    await p.clear_faults()
    try:
        yield p
        await p.clear_faults()
    finally:
        p.end_own()


# --- a real webhook receiver, the pipeline's issuer over HTTP, a browser ----------------------------------

@pytest.fixture(scope="session")
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    server, task = await serve_app(rec, rec.port)
    rec.server = server
    yield rec
    server.should_exit = True  # type: ignore[attr-defined]
    await asyncio.wait_for(task, 10)


@pytest.fixture(scope="session")
async def recon_issuer_http(recon_issuer: RunningIssuer) -> AsyncIterator[str]:
    """The pipeline's issuer over real HTTP, for a browser and for the CLI."""
    port = free_port()
    server, task = await serve_app(recon_issuer.app, port)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True  # type: ignore[attr-defined]
    await asyncio.wait_for(task, 10)


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's Chromium (installed on first use); the suite fails, saying why, when it cannot be had."""
    from fapiao.infra.tools import ensure_chromium

    try:
        return ensure_chromium()
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"the dashboard's browser test needs Chromium: {exc}", pytrace=False)
