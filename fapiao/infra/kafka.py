"""A single-node Apache Kafka (KRaft) broker run from Maven Central's jars, no Docker.

The jars are fetched once with mvn into `.cache/kafka-<version>/libs` (git-ignored); storage is
formatted with `kafka.tools.StorageTool`; the broker runs as `java kafka.Kafka` with a bounded heap.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from fapiao.infra.procs import pid_alive, port_is_open, spawn, stop_group, wait_until

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
node.id=1
controller.quorum.voters=1@127.0.0.1:{cport}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={log_dir}
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
log.cleaner.dedupe.buffer.size=8388608
log.retention.hours=168
"""


@dataclass
class KafkaBroker:
    """One broker+controller node. `start()` formats storage on first use, then runs it."""

    data_dir: Path
    port: int = 9092
    controller_port: int = 9093
    heap: str = "512m"
    die_with_parent: bool = False
    process: object | None = field(default=None, init=False, repr=False)
    pid: int | None = field(default=None, init=False)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "kafka.log"

    def _java(self, libs: Path, *args: str, heap: str = "256m") -> list[str]:
        return [
            "java", f"-Xmx{heap}", f"-Xms{min(heap, '256m', key=_mb)}",
            "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG4J}",
            "-cp", f"{libs}/*", *args,
        ]

    def start(self, *, timeout: float = 90.0) -> None:
        libs = ensure_kafka_jars()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        props = self.data_dir / "server.properties"
        log_dir = self.data_dir / "data"
        props.write_text(_SERVER_PROPERTIES.format(port=self.port, cport=self.controller_port, log_dir=log_dir))
        if not (log_dir / "meta.properties").exists():
            cluster_id = _cluster_id()
            fmt = subprocess.run(
                # "--cluster-id=<id>": a base64url id may begin with "-", which would read as an option.
                self._java(libs, "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "-c", str(props)),
                capture_output=True, text=True, timeout=120,
            )
            if fmt.returncode != 0:
                raise RuntimeError(f"Kafka storage format failed:\n{fmt.stdout}\n{fmt.stderr}")
        if port_is_open(self.port) or port_is_open(self.controller_port):
            raise RuntimeError(f"Kafka ports {self.port}/{self.controller_port} are already in use")
        proc = spawn(
            self._java(libs, "kafka.Kafka", str(props), heap=self.heap),
            log_path=self.log_path, die_with_parent=self.die_with_parent,
        )
        self.process, self.pid = proc, proc.pid
        wait_until(
            lambda: port_is_open(self.port) and metadata_ready(self.bootstrap),
            timeout=timeout, what=f"Kafka on {self.bootstrap}", interval=0.25,
            alive=lambda: proc.poll() is None, log_path=self.log_path,
        )

    def stop(self, *, timeout: float = 20.0) -> None:
        if self.pid is not None and pid_alive(self.pid):
            stop_group(self.pid, timeout=timeout)
        if self.process is not None:
            self.process.wait(timeout=5)  # type: ignore[attr-defined]
        self.pid = None


def _mb(size: str) -> int:
    units = {"k": 1 / 1024, "m": 1, "g": 1024}
    return int(float(size[:-1]) * units[size[-1].lower()])


def _cluster_id() -> str:
    # StorageTool accepts any base64url-encoded 16-byte UUID; no need to start a JVM for it.
    import base64

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def metadata_ready(bootstrap: str, timeout: float = 5.0) -> bool:
    """True when the broker answers a metadata request with itself as a live broker."""

    async def probe() -> bool:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
        try:
            await asyncio.wait_for(admin.start(), timeout)
            cluster = await asyncio.wait_for(admin.describe_cluster(), timeout)
            return bool(cluster.get("brokers"))
        except Exception:  # noqa: BLE001 - any failure means "not ready yet"
            return False
        finally:
            await admin.close()

    # A fresh loop in a worker thread: callers may themselves be inside a running event loop.
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, probe()).result()
