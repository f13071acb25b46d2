"""Apache Kafka (KRaft) run from Maven Central's jars, no Docker: one broker by default, or a cluster of N
combined broker+controller nodes (KafkaCluster), each with its own data dir, ports and node id. The client
listener is PLAINTEXT unless a broker is given another protocol and what it needs (TLS, SASL: `listener`,
`listener_properties`); the controller listener stays PLAINTEXT on loopback.

The jars are fetched once with mvn into `.cache/kafka-<version>/libs` (git-ignored); storage is
formatted with `kafka.tools.StorageTool`; each node runs as `java kafka.Kafka` with a bounded heap.
Replication follows shared.kafka.replication_for: min(3, nodes) copies, min.insync.replicas 2 with three.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from fapiao.infra.procs import pid_alive, port_is_open, spawn, stop_group, wait_until
from shared.kafka import client_config, replication_for
from shared.settings import KafkaSecurity

KAFKA_VERSION = "4.1.1"
_HERE = Path(__file__).resolve().parent
REPO_ROOT = _HERE.parent.parent
POM = _HERE / "kafka-pom.xml"
LOG4J = _HERE / "kafka-log4j2.properties"


def kafka_libs_dir() -> Path:
    override = os.environ.get("FAPIAO_KAFKA_LIBS")
    if override:
        return Path(override)
    return REPO_ROOT / ".cache" / f"kafka-{KAFKA_VERSION}" / "libs"


def ensure_kafka_jars(*, quiet: bool = True) -> Path:
    """Fetch the broker jars with mvn unless already cached; safe to call concurrently."""
    libs = kafka_libs_dir()
    marker = libs / ".complete"
    if marker.exists():
        return libs
    if shutil.which("java") is None or shutil.which("mvn") is None:
        raise RuntimeError("Kafka needs a JDK (java) and Maven (mvn) on PATH to fetch and run the broker")
    libs.parent.mkdir(parents=True, exist_ok=True)
    with open(libs.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists():
            return libs
        tmp = libs.parent / "libs.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        cmd = [
            "mvn", "-B", "-f", str(POM), "dependency:copy-dependencies",
            "-DincludeScope=runtime", f"-DoutputDirectory={tmp}",
        ]
        if quiet:
            cmd.insert(1, "-q")
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            raise RuntimeError(
                f"mvn could not fetch Kafka {KAFKA_VERSION}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        shutil.rmtree(libs, ignore_errors=True)
        tmp.rename(libs)
        marker.write_text(KAFKA_VERSION)
    return libs


_SERVER_PROPERTIES = """\
process.roles=broker,controller
node.id={node_id}
controller.quorum.voters={voters}
listeners={listener}://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}
advertised.listeners={listener}://127.0.0.1:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name={listener}
listener.security.protocol.map={listener}:{listener},CONTROLLER:PLAINTEXT
log.dirs={log_dir}
num.partitions=1
default.replication.factor={rf}
min.insync.replicas={min_isr}
unclean.leader.election.enable=false
offsets.topic.replication.factor={rf}
offsets.topic.num.partitions=10
transaction.state.log.replication.factor={rf}
transaction.state.log.min.isr={min_isr}
share.coordinator.state.topic.replication.factor={rf}
share.coordinator.state.topic.min.isr={min_isr}
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
log.cleaner.dedupe.buffer.size=8388608
log.retention.hours=168
"""

# A node that stops heartbeating (kill -9, a lost host) is fenced after this, and its partitions move to their
# in-sync copies: 6 s rather than Kafka's 9 s, so producers wait well within their 10 s request timeout.
_CLUSTER_PROPERTIES = """\
broker.session.timeout.ms=6000
broker.heartbeat.interval.ms=1000
"""


@dataclass
class KafkaBroker:
    """One combined broker+controller node. On its own (the default) it is a cluster of one; KafkaCluster gives
    each of its nodes an id, the quorum's voters and the cluster's size. `start()` formats storage on first use,
    then runs it."""

    data_dir: Path
    port: int = 9092
    controller_port: int = 9093
    heap: str = "512m"
    die_with_parent: bool = False
    node_id: int = 1
    voters: str = ""  # controller.quorum.voters, "1@host:port,2@…"; empty: this node is the whole quorum
    cluster_size: int = 1  # the internal topics (offsets, transactions) are replicated like the cluster's topics
    # The client (and inter-broker) listener's security protocol, the settings it needs (keystore, SASL users;
    # values may span lines, as PEM does), the storage tool's extra arguments (--add-scram), and how the
    # readiness probe reaches the listener (None: PLAINTEXT).
    listener: str = "PLAINTEXT"
    listener_properties: Mapping[str, str] = field(default_factory=dict, repr=False)
    format_args: Sequence[str] = field(default=(), repr=False)
    client_security: KafkaSecurity | None = field(default=None, repr=False)
    process: object | None = field(default=None, init=False, repr=False)
    pid: int | None = field(default=None, init=False)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "kafka.log"

    @property
    def properties_path(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def cluster_id(self) -> str | None:
        """The id the storage was formatted with; None before the first start."""
        meta = self.data_dir / "data" / "meta.properties"
        if not meta.exists():
            return None
        for line in meta.read_text().splitlines():
            if line.startswith("cluster.id="):
                return line.split("=", 1)[1].strip()
        return None

    def _java(self, libs: Path, *args: str, heap: str = "256m") -> list[str]:
        return [
            "java", f"-Xmx{heap}", f"-Xms{min(heap, '256m', key=_mb)}",
            "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG4J}",
            "-cp", f"{libs}/*", *args,
        ]

    def properties(self) -> str:
        """server.properties of this node."""
        rf, min_isr = replication_for(self.cluster_size)
        props = _SERVER_PROPERTIES.format(
            node_id=self.node_id, voters=self.voters or f"{self.node_id}@127.0.0.1:{self.controller_port}",
            port=self.port, cport=self.controller_port, log_dir=self.data_dir / "data", rf=rf, min_isr=min_isr,
            listener=self.listener)
        if self.cluster_size > 1:
            props += _CLUSTER_PROPERTIES
        return props + "".join(_property(k, v) for k, v in self.listener_properties.items())

    def prepare(self, libs: Path, *, cluster_id: str | None = None) -> None:
        """Write server.properties; format the storage with `cluster_id` (a new one if None) unless it is."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.properties_path.write_text(self.properties())
        if self.cluster_id is not None:
            return
        fmt = subprocess.run(
            # "--cluster-id=<id>": a base64url id may begin with "-", which would read as an option.
            self._java(libs, "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id or _cluster_id()}",
                       "-c", str(self.properties_path), *self.format_args),
            capture_output=True, text=True, timeout=120,
        )
        if fmt.returncode != 0:
            raise RuntimeError(f"Kafka storage format failed:\n{fmt.stdout}\n{fmt.stderr}")

    def spawn(self, libs: Path) -> None:
        """Run the prepared node without waiting for it (a cluster's nodes only answer once a quorum is up)."""
        if port_is_open(self.port) or port_is_open(self.controller_port):
            raise RuntimeError(f"Kafka ports {self.port}/{self.controller_port} are already in use")
        proc = spawn(
            self._java(libs, "kafka.Kafka", str(self.properties_path), heap=self.heap),
            log_path=self.log_path, die_with_parent=self.die_with_parent,
        )
        self.process, self.pid = proc, proc.pid

    def wait_ready(self, *, timeout: float = 90.0) -> None:
        """Until this node answers metadata requests and counts itself among the live brokers."""
        proc = self.process
        wait_until(
            lambda: port_is_open(self.port) and metadata_ready(self.bootstrap, node_id=self.node_id,
                                                               security=self.client_security),
            timeout=timeout, what=f"Kafka node {self.node_id} on {self.bootstrap}", interval=0.25,
            alive=lambda: proc is not None and proc.poll() is None,  # type: ignore[attr-defined]
            log_path=self.log_path,
        )

    def start(self, *, timeout: float = 90.0, cluster_id: str | None = None) -> None:
        libs = ensure_kafka_jars()
        self.prepare(libs, cluster_id=cluster_id)
        self.spawn(libs)
        self.wait_ready(timeout=timeout)

    def kill(self) -> None:
        """kill -9 the node: no controlled shutdown, no flush (a crashed host, as far as Kafka can tell)."""
        if self.pid is not None and pid_alive(self.pid):
            stop_group(self.pid, timeout=10, sig=signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=5)  # type: ignore[attr-defined]
        self.pid = None

    def stop(self, *, timeout: float = 20.0) -> None:
        if self.pid is not None and pid_alive(self.pid):
            stop_group(self.pid, timeout=timeout)
        if self.process is not None:
            self.process.wait(timeout=5)  # type: ignore[attr-defined]
        self.pid = None


@dataclass
class KafkaCluster:
    """N combined broker+controller nodes with one cluster id and one controller quorum; N=1 is the single
    broker every run uses by default. Node i (from 1) keeps its data in `<root>/node-<i>` (one node: `root`
    itself, as before clusters existed)."""

    nodes: list[KafkaBroker]

    @classmethod
    def plan(cls, root: Path, *, ports: Sequence[tuple[int, int]], heap: str | None = None,
             die_with_parent: bool = False) -> KafkaCluster:
        """Nodes on these (broker port, controller port) pairs, not started."""
        if not ports:
            raise ValueError("a Kafka cluster needs at least one node")
        flat = [port for pair in ports for port in pair]
        if len(set(flat)) != len(flat):
            raise ValueError(f"the Kafka nodes' ports must all differ: {list(ports)}")
        size = len(ports)
        if size == 1:
            (port, cport), = ports
            return cls([KafkaBroker(root, port=port, controller_port=cport, heap=heap or "512m",
                                    die_with_parent=die_with_parent)])
        voters = ",".join(f"{i}@127.0.0.1:{cport}" for i, (_, cport) in enumerate(ports, 1))
        return cls([KafkaBroker(root / f"node-{i}", port=port, controller_port=cport, heap=heap or "384m",
                                die_with_parent=die_with_parent, node_id=i, voters=voters, cluster_size=size)
                    for i, (port, cport) in enumerate(ports, 1)])

    @property
    def bootstrap(self) -> str:
        return ",".join(node.bootstrap for node in self.nodes)

    @property
    def size(self) -> int:
        return len(self.nodes)

    def node(self, node_id: int) -> KafkaBroker:
        return self.nodes[node_id - 1]

    def cluster_id(self) -> str | None:
        """The id the nodes' storage was formatted with (None before the first start)."""
        ids = {node.cluster_id for node in self.nodes} - {None}
        if len(ids) > 1:
            raise RuntimeError(f"the Kafka nodes' data dirs belong to different clusters: {sorted(map(str, ids))}")
        return ids.pop() if ids else None

    def spawn_node(self, node_id: int) -> KafkaBroker:
        """Run one node again (its data dir kept; formatted with the cluster's id if it was lost), not waiting:
        with a quorum up it rejoins by itself; the caller may `wait_ready()` on what this returns."""
        libs = ensure_kafka_jars()
        node = self.node(node_id)
        node.prepare(libs, cluster_id=self.cluster_id())
        node.spawn(libs)
        return node

    def start(self, *, timeout: float = 120.0) -> None:
        """Format what is not formatted yet (in parallel, with the id the others have), run every node, wait until
        each is a live broker. Spawned from the calling thread (see procs._die_with_parent)."""
        libs = ensure_kafka_jars()
        cluster_id = self.cluster_id() or _cluster_id()
        with ThreadPoolExecutor(max_workers=self.size) as pool:
            for done in [pool.submit(node.prepare, libs, cluster_id=cluster_id) for node in self.nodes]:
                done.result()
        try:
            for node in self.nodes:
                node.spawn(libs)
            deadline = time.monotonic() + timeout
            for node in self.nodes:
                node.wait_ready(timeout=max(deadline - time.monotonic(), 1.0))
        except BaseException:
            self.stop()
            raise

    def stop(self, *, timeout: float = 20.0) -> None:
        """Stop every node, all at once: one by one, the last ones would wait for a quorum that is gone."""
        with ThreadPoolExecutor(max_workers=self.size) as pool:
            for done in [pool.submit(node.stop, timeout=timeout) for node in self.nodes]:
                done.result()


def _property(key: str, value: str) -> str:
    """One line of a Java properties file: a PEM's line breaks and any backslash escaped, as Properties reads them."""
    escaped = value.replace("\\", "\\\\").replace("\r", "").replace("\n", "\\n")
    return f"{key}={escaped}\n"


def _mb(size: str) -> int:
    units = {"k": 1 / 1024, "m": 1, "g": 1024}
    return int(float(size[:-1]) * units[size[-1].lower()])


def _cluster_id() -> str:
    # StorageTool accepts any base64url-encoded 16-byte UUID; no need to start a JVM for it.
    import base64

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def replicas_in_sync(bootstrap: str, timeout: float = 5.0) -> bool:
    """True when every partition of every topic has all its replicas in sync (nothing left to catch up)."""

    async def probe() -> bool:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
        try:
            await asyncio.wait_for(admin.start(), timeout)
            topics = await asyncio.wait_for(admin.describe_topics(), timeout)
            return all(not t.get("error_code") and all(set(p["isr"]) == set(p["replicas"]) for p in t["partitions"])
                       for t in topics)
        except Exception:  # noqa: BLE001 - any failure means "not yet"
            return False
        finally:
            await admin.close()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, probe()).result()


def metadata_ready(bootstrap: str, timeout: float = 5.0, *, node_id: int | None = None,
                   security: KafkaSecurity | None = None) -> bool:
    """True when the broker answers a metadata request listing live brokers (node `node_id` among them). Over
    PLAINTEXT unless `security` says otherwise; never from this process's FAPIAO_KAFKA_* (the brokers started
    here are local, whatever cluster the services are pointed at)."""

    async def probe() -> bool:
        from aiokafka.admin import AIOKafkaAdminClient

        config = client_config(bootstrap, security=security) if security is not None else {
            "bootstrap_servers": bootstrap}
        admin = AIOKafkaAdminClient(**config, request_timeout_ms=int(timeout * 1000))
        try:
            await asyncio.wait_for(admin.start(), timeout)
            cluster = await asyncio.wait_for(admin.describe_cluster(), timeout)
            brokers = cluster.get("brokers") or []
            return bool(brokers) and (node_id is None or any(b.get("node_id") == node_id for b in brokers))
        except Exception:  # noqa: BLE001 - any failure means "not ready yet"
            return False
        finally:
            await admin.close()

    # A fresh loop in a worker thread: callers may themselves be inside a running event loop.
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, probe()).result()
