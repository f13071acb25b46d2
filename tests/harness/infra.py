"""The suite's own PostgreSQL and Kafka, on free ports in a private directory (never the `make up` stack).
FAPIAO_TEST_DATABASE_URL / FAPIAO_TEST_KAFKA_BOOTSTRAP: use servers of your own instead. The suite runs on one
broker; `running_kafka_cluster` starts a private 3-broker cluster for the tests that are about replication."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fapiao.infra import KafkaBroker, KafkaCluster, PostgresServer, free_port
from fapiao.infra.procs import free_ports, pid_alive

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / ".test-artifacts"
ADMIN_TOKEN = "test-admin-token-" + uuid.uuid4().hex
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@dataclass
class Infra:
    database_url: str
    kafka_bootstrap: str
    workdir: Path
    postgres: PostgresServer | None
    kafka: KafkaBroker | None

    @property
    def logs(self) -> Path:
        """Where the suite's service processes write their logs (kept when a test failed)."""
        path = self.workdir / "logs"
        path.mkdir(exist_ok=True)
        return path


class InfraError(RuntimeError):
    """The test infrastructure could not be started."""


@contextmanager
def running_infra(*, keep: Callable[[], bool] | None = None) -> Iterator[Infra]:
    """Start what FAPIAO_TEST_* does not name, yield, stop it; the work dir (logs) goes unless `keep()` is true.
    Call from the main thread: the children die with the thread that spawned them (PR_SET_PDEATHSIG)."""
    ARTIFACTS.mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="run-", dir=ARTIFACTS))
    db_url = os.environ.get("FAPIAO_TEST_DATABASE_URL")
    bootstrap = os.environ.get("FAPIAO_TEST_KAFKA_BOOTSTRAP")
    pg = None if db_url else PostgresServer(workdir / "postgres", port=free_port(), die_with_parent=True)
    kafka = None if bootstrap else KafkaBroker(workdir / "kafka", port=free_port(), controller_port=free_port(),
                                               die_with_parent=True)
    servers = [s for s in (pg, kafka) if s is not None]
    try:
        for server in servers:
            server.start()
    except Exception as exc:
        for server in servers:
            server.stop()
        raise InfraError(f"could not start the test infrastructure: {exc}") from exc
    infra = Infra(db_url or pg.url(), bootstrap or kafka.bootstrap, workdir, pg, kafka)  # type: ignore[union-attr]
    yield infra
    for server in reversed(servers):
        server.stop()
    if keep is None or not keep():
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def running_kafka_cluster(workdir: Path, *, brokers: int = 3, heap: str = "320m") -> Iterator[KafkaCluster]:
    """A KRaft cluster of `brokers` combined nodes on free ports under `workdir`, stopped afterwards (no node left
    running). Its brokers are the test's to kill and restart (`cluster.node(i).kill()`, `.start()`). Call from the
    main thread, as running_infra."""
    root = workdir / f"kafka-cluster-{uuid.uuid4().hex[:6]}"
    ports = free_ports(2 * brokers)
    try:
        cluster = KafkaCluster.plan(root, ports=list(zip(ports[::2], ports[1::2], strict=True)), heap=heap,
                                    die_with_parent=True)
        cluster.start(timeout=180)
    except Exception as exc:
        raise InfraError(f"could not start a {brokers}-broker Kafka cluster in {root}: {exc}") from exc
    try:
        yield cluster
    finally:
        pids = [node.pid for node in cluster.nodes if node.pid is not None]
        cluster.stop()
        left = [pid for pid in pids if pid_alive(pid)]
        if left:
            raise InfraError(f"Kafka nodes still running after stop: pids {left}")


@contextmanager
def running_kafka_broker(broker: KafkaBroker, *, timeout: float = 60.0) -> Iterator[KafkaBroker]:
    """One broker of the test's own making (a TLS/SASL listener, say), started within `timeout` and stopped
    afterwards, even when the test failed or the start timed out: no JVM is left running. Call from the main
    thread, as running_infra."""
    try:
        try:
            broker.start(timeout=timeout)
        except Exception as exc:
            raise InfraError(f"could not start a Kafka broker in {broker.data_dir}: {exc}") from exc
        yield broker
    finally:
        pid = broker.pid
        broker.stop(timeout=10)
        if pid is not None and pid_alive(pid):
            raise InfraError(f"the Kafka broker is still running after stop: pid {pid}")


async def fresh_database(infra: Infra, name: str) -> str:
    """A new, empty database on the test server: for a deployment that must not share the issuer schema
    (one outbox relay leads per schema, and it publishes to its own cluster)."""
    from sqlalchemy import text
    from sqlalchemy.engine import make_url
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(infra.database_url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(f'create database "{name}"'))
    finally:
        await engine.dispose()
    return make_url(infra.database_url).set(database=name).render_as_string(hide_password=False)


ROLE_PASSWORD = "fapiao-test-role"  # noqa: S105 - the suite's own server (or FAPIAO_TEST_DATABASE_URL's), roles of its own
_provisioned: set[tuple[str, str, str]] = set()


def as_service(infra: Infra, database_url: str, service: str) -> str:
    """`database_url` as the service's own role (fapiao.infra.roles: it owns only its schema), as `make up` runs
    it: provisioned on that database on first use. A URL of another user (a test's own) is left as it is."""
    from sqlalchemy.engine import make_url

    from fapiao.infra.roles import SCHEMAS, provision, role_url

    url, admin = make_url(database_url), make_url(infra.database_url)
    if service not in SCHEMAS or url.username != admin.username:
        return database_url
    key = (f"{admin.host}:{admin.port}", str(url.database), service)
    if key not in _provisioned:
        provision(admin.set(database=url.database).render_as_string(hide_password=False), [service],
                  password=ROLE_PASSWORD)
        _provisioned.add(key)
    return role_url(database_url, service, ROLE_PASSWORD)
