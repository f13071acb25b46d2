"""Kafka with safe defaults, and the consume loop every consumer in the system runs.

aiokafka's defaults are wrong for us (acks=1, no idempotence, auto-commit on a timer, offset reset
to "latest"): every producer and consumer is built here so none of them can be forgotten. Every client
(producer, consumer, admin, probe) starts from client_config, which adds the cluster's TLS/SASL settings
(shared.settings.KafkaSecurity); topics are created replicated as replication_for says.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import CommitFailedError, GroupCoordinatorNotAvailableError, KafkaError, TopicAlreadyExistsError

from shared.backoff import backoff
from shared.db import database_unavailable
from shared.envelope import Envelope, EnvelopeError, Received, UnknownEventType, decode, decode_event
from shared.errors import RetriableError
from shared.events import Event
from shared.logging import bind
from shared.metrics import CONSUMER_LAG
from shared.settings import KafkaSecurity
from shared.topics import Topic

__all__ = [
    "BatchHandler", "CommitOnRevoke", "ConsumeLoop", "DeadLetterCount", "Handler", "HandlerTable", "KafkaProbe",
    "OffsetReader", "Received", "dead_letter_origin",
    "client_config", "consumer_config", "consumer_lag", "dead_letter", "ensure_topics", "ensure_topics_forever",
    "make_admin", "make_consumer", "make_producer", "producer_config", "replication_for", "topic_settings",
]

log = logging.getLogger(__name__)

LAG_INTERVAL_SECONDS = 5.0

C = TypeVar("C")


Handler = Callable[[Envelope, ConsumerRecord], Awaitable[None]]
BatchHandler = Callable[[list[Any]], Awaitable[None]]
"""A slice of records: (envelope, record) pairs, or Received items when the loop has a HandlerTable."""
TypedHandler = Callable[[C, list[Received[Any]]], Awaitable[Any]]


class HandlerTable(Generic[C]):
    """Which handler takes which event type (cosmicpython's EVENT_HANDLERS), for one consumer group.

    The consume loop decodes each record into its type's model with `models`; a type the table does not know
    is dead-lettered, and a type listed in `ignore` is skipped. `dispatch` hands each handler its events of a
    slice in one call (several types may share a handler), handlers in table order, each with the caller's
    context (the transaction's session, say); it returns what each handler returned.
    """

    def __init__(self, routes: Mapping[type[Event], TypedHandler[C]], *, ignore: Iterable[type[Event]] = ()) -> None:
        self.routes = dict(routes)
        self.ignored = frozenset(m.TYPE for m in ignore)
        self.models: dict[str, type[Event]] = {m.TYPE: m for m in self.routes}

    @property
    def types(self) -> frozenset[str]:
        return frozenset(self.models) | self.ignored

    def check_covers(self, types: Iterable[str], *, group: str) -> None:
        """Every type the group's topics carry has a handler or is ignored on purpose."""
        missing = sorted(set(types) - self.types)
        if missing:
            raise ValueError(f"consumer group {group} has no handler for {', '.join(missing)}")

    async def dispatch(self, context: C, items: Sequence[Received[Any]]) -> dict[TypedHandler[C], Any]:
        by_handler: dict[TypedHandler[C], list[Received[Any]]] = {}
        for handler in self.routes.values():
            by_handler.setdefault(handler, [])
        for item in items:
            by_handler[self.routes[type(item.event)]].append(item)
        return {h: await h(context, group) for h, group in by_handler.items() if group}


def client_config(bootstrap: str, *, security: KafkaSecurity | None = None) -> dict[str, Any]:
    """What every aiokafka client gets: the bootstrap servers, and TLS/SASL from `security` (default: the
    FAPIAO_KAFKA_SECURITY_PROTOCOL, FAPIAO_KAFKA_SASL_*, FAPIAO_KAFKA_SSL_* of this process's environment)."""
    security = security if security is not None else KafkaSecurity()
    config: dict[str, Any] = {"bootstrap_servers": bootstrap}
    if security.security_protocol == "PLAINTEXT":
        return config
    config["security_protocol"] = security.security_protocol
    if security.uses_sasl:
        assert security.sasl_password is not None  # KafkaSecurity checks SASL_* comes with all three
        config.update(sasl_mechanism=security.sasl_mechanism, sasl_plain_username=security.sasl_username,
                      sasl_plain_password=security.sasl_password.get_secret_value())
    if security.uses_tls:
        from aiokafka.helpers import create_ssl_context

        password = security.ssl_key_password.get_secret_value() if security.ssl_key_password else None
        context = create_ssl_context(cafile=security.ssl_cafile, certfile=security.ssl_certfile,
                                     keyfile=security.ssl_keyfile, password=password)
        context.check_hostname = security.ssl_check_hostname
        config["ssl_context"] = context
    return config


def replication_for(brokers: int) -> tuple[int, int]:
    """(replication factor, min.insync.replicas) on a cluster of `brokers`: up to 3 copies of every partition,
    and with 3 a write counts only once 2 of them have it (one broker may die without losing it; with fewer
    copies, 1)."""
    factor = max(1, min(3, brokers))
    return factor, 2 if factor >= 3 else 1


def topic_settings(replication_factor: int) -> dict[str, str]:
    """The per-topic configs every created topic gets (see replication_for)."""
    return {
        "min.insync.replicas": str(2 if replication_factor >= 3 else 1),
        # A replica that missed writes never becomes leader: its gap would silently lose acknowledged records.
        "unclean.leader.election.enable": "false",
    }


def producer_config(bootstrap: str, *, request_timeout_ms: int = 10_000, security: KafkaSecurity | None = None,
                    **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        **client_config(bootstrap, security=security),
        "acks": "all",
        "enable_idempotence": True,
        "request_timeout_ms": request_timeout_ms,
        "linger_ms": 5,
        "max_batch_size": 256 * 1024,
        "retry_backoff_ms": 200,
    }
    config.update(overrides)
    return config


def consumer_config(bootstrap: str, *, group_id: str, security: KafkaSecurity | None = None,
                    **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        **client_config(bootstrap, security=security),
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed",
        "max_poll_records": 500,
        "max_poll_interval_ms": 300_000,
        # A member that dies without leaving (kill -9, a lost host) holds its partitions until this runs out:
        # 10 s, not aiokafka's 30 s, so a crashed consumer's partitions move on quickly.
        "session_timeout_ms": 10_000,
        "heartbeat_interval_ms": 2_000,
    }
    config.update(overrides)
    return config


def make_producer(bootstrap: str, **overrides: Any) -> AIOKafkaProducer:
    return AIOKafkaProducer(**producer_config(bootstrap, **overrides))


def make_consumer(bootstrap: str, *topics: str, group_id: str, **overrides: Any) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(*topics, **consumer_config(bootstrap, group_id=group_id, **overrides))


def make_admin(bootstrap: str, *, timeout: float = 15.0, security: KafkaSecurity | None = None) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**client_config(bootstrap, security=security), request_timeout_ms=int(timeout * 1000))


async def ensure_topics(bootstrap: str, topics: Iterable[Topic], *, prefix: str = "", partitions: int = 6,
                        replication_factor: int | None = None, timeout: float = 15.0) -> list[str]:
    """Create the topics that do not exist yet; returns the names created. Never relies on auto-create.
    `replication_factor` None: as replication_for says for the brokers the cluster has now (set it when a broker
    may be down while topics are created); min.insync.replicas and unclean election as topic_settings says."""
    admin = make_admin(bootstrap, timeout=timeout)
    await asyncio.wait_for(admin.start(), timeout)
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in topics if t.qualified(prefix) not in existing]
        if not missing:
            return []
        if replication_factor is None:
            cluster = await asyncio.wait_for(admin.describe_cluster(), timeout)
            replication_factor, _ = replication_for(len(cluster.get("brokers") or ()))
        configs = topic_settings(replication_factor)
        wanted = [NewTopic(t.qualified(prefix), partitions if t.partitioned else 1, replication_factor,
                           topic_configs=configs) for t in missing]
        with contextlib.suppress(TopicAlreadyExistsError):  # another process won the race
            await asyncio.wait_for(admin.create_topics(wanted), timeout)
        return [t.name for t in wanted]
    finally:
        await admin.close()


async def ensure_topics_forever(bootstrap: str, topics: Iterable[Topic], *, prefix: str = "", partitions: int = 6,
                                replication_factor: int | None = None) -> None:
    """ensure_topics, retried with backoff until it succeeds: Kafka may be down when a service starts, and
    the service works regardless (the outbox holds events meanwhile)."""
    topics = list(topics)
    attempt = 0
    while True:
        try:
            await ensure_topics(bootstrap, topics, prefix=prefix, partitions=partitions,
                                replication_factor=replication_factor)
            return
        except Exception as exc:  # noqa: BLE001 - keep trying; /readyz reports Kafka meanwhile
            delay = backoff(attempt, base=0.5, cap=15)
            log.warning("cannot create topics yet (%s); retrying in %.1fs", type(exc).__name__, delay)
            attempt += 1
            await asyncio.sleep(delay)


class CommitOnRevoke(ConsumerRebalanceListener):
    """Commit what is done before partitions move to another member, so it does not redo them."""

    def __init__(self, owner: Any) -> None:
        self.owner = owner  # anything with `async commit_done()`

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.owner.commit_done()

    async def on_partitions_assigned(self, assigned: Any) -> None:
        return None


async def dead_letter(producer: AIOKafkaProducer, record: ConsumerRecord, exc: BaseException, *, topic: str,
                      group_id: str) -> None:
    """Copy a record that cannot be applied to `topic` with its origin in headers. Returns only once the
    dead-letter topic has it, so the caller may then commit the original offset."""
    headers = list(record.headers or ()) + [
        ("dlq.origin.topic", record.topic.encode()),
        ("dlq.origin.partition", str(record.partition).encode()),
        ("dlq.origin.offset", str(record.offset).encode()),
        ("dlq.consumer.group", group_id.encode()),
        ("dlq.error", f"{type(exc).__name__}: {exc}"[:1000].encode()),
        ("dlq.failed.at", datetime.now(UTC).isoformat().encode()),
    ]
    log.error("dead-lettering %s[%d]@%d to %s: %s", record.topic, record.partition, record.offset, topic,
              type(exc).__name__, extra={"fields": {"error": str(exc)[:500]}})
    for attempt in range(30):
        try:
            await producer.send_and_wait(topic, value=record.value, key=record.key, headers=headers)
            return
        except KafkaError:
            await asyncio.sleep(backoff(attempt, base=0.2, cap=5))
    raise RetriableError("dead-letter topic unavailable")


class ConsumeLoop:
    """decode envelope -> handler -> (after the handler's transaction commits) commit the offset.

    - A message that is not a valid envelope, or whose handler raises a non-retriable error, goes to
      the dead-letter topic with its origin in headers; then its offset is committed and the loop
      moves on.
    - With a HandlerTable (`table`), each envelope is also decoded into its type's model and handlers get
      Received items: a type the table does not know, or a payload that fails its model, is dead-lettered
      with the reason (the field named).
    - A RetriableError is retried with backoff; if it persists the partition is rewound to the
      failed record and the loop polls again (so the consumer never leaves its group), retrying
      until it succeeds. Nothing is skipped.
    - Offsets are committed per batch, only for records whose effect is durable. Delivery is at
      least once: handlers must be idempotent (see shared.db.mark_processed).
    - With `batch_handler`, each partition's slice of a poll is applied in one call (one transaction), or the
      whole poll at once with `per_poll`; if that raises a non-retriable error the records are replayed one at
      a time, so only the bad record is dead-lettered.
    - `pause`, asked before every poll, says for how many seconds not to fetch (say while a circuit breaker is
      open): the partitions are paused but the loop keeps polling, so the consumer stays in its group and the
      backlog waits in Kafka (visible as lag).
    """

    def __init__(self, *, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer, topics: list[str],
                 dlq_topic: Callable[[str], str], group_id: str, handler: Handler | None = None,
                 batch_handler: BatchHandler | None = None, table: HandlerTable[Any] | None = None,
                 per_poll: bool = False, pause: Callable[[], float] | None = None, max_inline_retries: int = 5,
                 poll_timeout_ms: int = 500, on_dead_letter: Callable[[str], None] | None = None) -> None:
        if (handler is None) == (batch_handler is None):
            raise ValueError("give exactly one of handler / batch_handler")
        if table is not None and handler is not None:
            raise ValueError("a HandlerTable hands typed events to a batch_handler")
        self.consumer = consumer
        self.producer = producer
        self.topics = topics
        self.handler = handler
        self.batch_handler = batch_handler
        self.table = table
        self.per_poll = per_poll
        self.pause = pause
        self.paused = False
        self.dlq_topic = dlq_topic
        self.group_id = group_id
        self.max_inline_retries = max_inline_retries
        self.poll_timeout_ms = poll_timeout_ms
        self.on_dead_letter = on_dead_letter
        self._done: dict[TopicPartition, int] = {}
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def commit_done(self) -> None:
        if not self._done:
            return
        offsets, self._done = self._done, {}
        try:
            await self.consumer.commit(offsets)
        except CommitFailedError:
            # Rebalanced away mid-batch: the new owner re-reads these; handlers are idempotent.
            log.warning("offset commit failed after a rebalance; records will be redelivered")

    async def run(self) -> None:
        self.consumer.subscribe(self.topics, listener=CommitOnRevoke(self))
        lag_due = 0.0
        while not self._stopping.is_set():
            if time.monotonic() >= lag_due:  # fapiao_consumer_lag_records for this group, every few seconds
                lag_due = time.monotonic() + LAG_INTERVAL_SECONDS
                for tp, lag in (await consumer_lag(self.consumer)).items():
                    CONSUMER_LAG.labels(self.group_id, tp.topic, str(tp.partition)).set(lag)
            if await self._held_back():
                continue
            batches = await self.consumer.getmany(timeout_ms=self.poll_timeout_ms)
            replay: dict[TopicPartition, list[ConsumerRecord]] = dict(batches)
            if self.batch_handler is not None:
                slices = [[r for rs in batches.values() for r in rs]] if self.per_poll else list(batches.values())
                left: set[tuple[str, int, int]] = set()
                for records in slices:
                    if len(records) > 1:
                        left.update((r.topic, r.partition, r.offset) for r in await self._process_slice(records))
                    else:
                        left.update((r.topic, r.partition, r.offset) for r in records)
                replay = {tp: [r for r in rs if (r.topic, r.partition, r.offset) in left] for tp, rs in batches.items()}
            for tp, records in replay.items():
                for record in records:
                    if not await self._process(tp, record):
                        break  # partition rewound; the next poll resumes there
                    self._done[tp] = record.offset + 1
                else:
                    self._done[tp] = batches[tp][-1].offset + 1
            await self.commit_done()

    async def _held_back(self) -> bool:
        """Pause fetching while the `pause` hook says so (polling on, to stay in the group); resume after."""
        wait = self.pause() if self.pause is not None else 0.0
        if wait > 0:
            self.consumer.pause(*self.consumer.assignment())  # again each time: a rebalance may add partitions
            self.paused = True
            await self.consumer.getmany(timeout_ms=int(min(wait, self.poll_timeout_ms / 1000) * 1000))
            return True
        if self.paused:
            self.consumer.resume(*self.consumer.paused())
            self.paused = False
        return False

    async def _decode(self, record: ConsumerRecord) -> Any:
        """What the handler gets for this record ((envelope, record), or Received with a table); None when the
        record was dead-lettered (or is of a type this group ignores)."""
        try:
            envelope = decode(record.value)
            if self.table is None:
                return envelope, record
            if envelope.type in self.table.ignored:
                return None
            return Received(decode_event(envelope, self.table.models), envelope, record)
        except UnknownEventType as exc:
            await self._dead_letter(record, UnknownEventType(f"{exc} on {record.topic} for group {self.group_id}"))
        except (EnvelopeError, ValueError) as exc:  # PayloadError is a ValueError
            await self._dead_letter(record, exc)
        return None

    async def _process_slice(self, records: list[ConsumerRecord]) -> list[ConsumerRecord]:
        """Apply a slice in one handler call; returns the records still to replay one by one (empty when the
        slice is applied; undecodable records are dead-lettered here either way)."""
        assert self.batch_handler is not None
        items = [item for record in records if (item := await self._decode(record)) is not None]
        for attempt in range(self.max_inline_retries + 1):
            if not items:
                return []
            try:
                await self.batch_handler(items)
                return []
            except Exception as exc:  # noqa: BLE001 - transient: retry; anything else: find the bad record
                if not transient(exc):
                    break
                if attempt == self.max_inline_retries:
                    log.warning("batch handler still failing (%s); replaying record by record", exc)
                    break
                await asyncio.sleep(backoff(attempt, base=0.2, cap=5))
        return [item[1] if isinstance(item, tuple) else item.record for item in items]  # every item has a record

    async def _process(self, tp: TopicPartition, record: ConsumerRecord) -> bool:
        item = await self._decode(record)
        if item is None:
            return True
        envelope = item[0] if isinstance(item, tuple) else item.envelope
        with bind(invoice=envelope.subject, correlation=envelope.id):
            for attempt in range(self.max_inline_retries + 1):
                try:
                    if self.handler is not None:
                        await self.handler(envelope, record)
                    else:
                        assert self.batch_handler is not None
                        await self.batch_handler([item])
                    return True
                except Exception as exc:  # noqa: BLE001 - any other failure is this message's fault
                    if not (transient(exc) or getattr(exc, "retriable", False)):
                        await self._dead_letter(record, exc)
                        return True
                    if attempt == self.max_inline_retries:
                        log.warning("handler still failing (%s); rewinding to offset %d", exc, record.offset)
                        await self.commit_done()
                        self.consumer.seek(tp, record.offset)
                        await asyncio.sleep(backoff(attempt, base=0.2, cap=10))
                        return False
                    await asyncio.sleep(backoff(attempt, base=0.2, cap=5))
        return True  # pragma: no cover

    async def _dead_letter(self, record: ConsumerRecord, exc: BaseException) -> None:
        # Must be on the DLQ before the offset is committed; if that fails, retry the whole record.
        await dead_letter(self.producer, record, exc, topic=self.dlq_topic(record.topic), group_id=self.group_id)
        if self.on_dead_letter is not None:
            self.on_dead_letter(record.topic)


def transient(exc: BaseException) -> bool:
    """Will the same record succeed later? Kafka or the network away, a timeout, a RetriableError, or the
    database unable to take it now (shared.db.database_unavailable: pool exhausted, server lost or restarting,
    a serialization conflict). Never the record's fault, so never a reason to dead-letter it."""
    if isinstance(exc, RetriableError | KafkaError | OSError | TimeoutError):
        return True
    return database_unavailable(exc) is not None


async def consumer_lag(consumer: AIOKafkaConsumer) -> dict[TopicPartition, int]:
    """Records not yet consumed per assigned partition (high watermark minus position)."""
    lag: dict[TopicPartition, int] = {}
    for tp in consumer.assignment():
        high = consumer.highwater(tp)
        if high is None:
            continue
        try:
            position = await asyncio.wait_for(consumer.position(tp), 2)
        except Exception:  # noqa: BLE001, S112 - lag is best effort; never break the loop for it
            continue
        lag[tp] = max(0, high - position)
    return lag


@dataclass
class DeadLetterCount:
    """One dead-letter topic's contents. Every consumer group that gives up on a record writes its own copy
    (invoice.events.v1 has two groups: one bad event, two copies), and a group may write a record twice if it
    stopped between the copy and its commit. So: `records` original records (distinct by the
    dlq.origin.topic/partition/offset headers), `groups` for each consumer group (dlq.consumer.group) the
    original records it set aside, and `copies` the records on the topic."""

    records: int = 0
    copies: int = 0
    groups: dict[str, int] = field(default_factory=dict)


def dead_letter_origin(record: ConsumerRecord) -> tuple[tuple[str, str, str], str]:
    """(the original record's topic, partition, offset; the consumer group) of a dead letter, from the headers
    dead_letter() adds. A record without them is its own origin; its group is "unknown"."""
    h = {k: v.decode(errors="replace") for k, v in record.headers or () if v is not None}  # the last one wins
    origin = (h.get("dlq.origin.topic"), h.get("dlq.origin.partition"), h.get("dlq.origin.offset"))
    if None in origin:
        origin = (record.topic, str(record.partition), str(record.offset))
    return origin, h.get("dlq.consumer.group") or "unknown"  # type: ignore[return-value]


class _DeadLetterTally:
    """What OffsetReader.dead_letters has read so far, per dead-letter partition, in offset order."""

    def __init__(self) -> None:
        self.next_offset: dict[TopicPartition, int] = {}
        self.entries: dict[TopicPartition, deque[tuple[int, tuple[str, str, str], str]]] = {}
        self.copies: dict[str, Counter[tuple[str, str, str]]] = {}  # dlq topic -> origin -> copies
        self.by_group: dict[str, Counter[tuple[tuple[str, str, str], str]]] = {}  # (origin, group) -> copies

    def align(self, tp: TopicPartition, begin: int, end: int) -> int:
        """Forget what the broker no longer holds; the offset to read from next."""
        entries = self.entries.setdefault(tp, deque())
        restart = self.next_offset.get(tp, 0) > end  # the topic was deleted and created again
        while entries and (restart or entries[0][0] < begin):
            _, origin, group = entries.popleft()
            self._count(tp.topic, origin, group, -1)
        self.next_offset[tp] = max(0 if restart else self.next_offset.get(tp, 0), begin)
        return self.next_offset[tp]

    def add(self, tp: TopicPartition, record: ConsumerRecord) -> None:
        origin, group = dead_letter_origin(record)
        self.entries.setdefault(tp, deque()).append((record.offset, origin, group))
        self._count(tp.topic, origin, group, +1)

    def _count(self, topic: str, origin: tuple[str, str, str], group: str, n: int) -> None:
        copies, by_group = self.copies.setdefault(topic, Counter()), self.by_group.setdefault(topic, Counter())
        copies[origin] += n
        by_group[(origin, group)] += n
        if copies[origin] <= 0:
            del copies[origin]
        if by_group[(origin, group)] <= 0:
            del by_group[(origin, group)]

    def counts(self, topics: Iterable[str]) -> dict[str, DeadLetterCount]:
        out: dict[str, DeadLetterCount] = {}
        for topic in sorted(set(topics)):
            copies, by_group = self.copies.get(topic, Counter()), self.by_group.get(topic, Counter())
            groups: dict[str, int] = {}
            for _, group in by_group:
                groups[group] = groups.get(group, 0) + 1
            out[topic] = DeadLetterCount(len(copies), sum(copies.values()), dict(sorted(groups.items())))
        return out


class OffsetReader:
    """How far consumer groups are behind and how much topics hold, as the broker sees it (committed offsets
    against log ends): true even when the consumer itself is stuck or gone. Keeps its clients between reads."""

    def __init__(self, bootstrap: str, *, timeout: float = 5.0) -> None:
        self.bootstrap = bootstrap
        self.timeout = timeout
        self.security = KafkaSecurity()
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._dead_letters = _DeadLetterTally()

    async def _clients(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        if self._admin is None or self._consumer is None:
            await self.close()
            ms = int(self.timeout * 1000)
            admin = make_admin(self.bootstrap, timeout=self.timeout, security=self.security)
            consumer = AIOKafkaConsumer(**client_config(self.bootstrap, security=self.security), group_id=None,
                                        enable_auto_commit=False, request_timeout_ms=ms)
            try:
                await asyncio.wait_for(admin.start(), self.timeout)
                await asyncio.wait_for(consumer.start(), self.timeout)
            except BaseException:
                for client in (consumer, admin):
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(client.close() if client is admin else client.stop(), 5)
                raise
            self._admin, self._consumer = admin, consumer
        return self._admin, self._consumer

    async def _partitions(self, topics: Iterable[str]) -> list[TopicPartition]:
        admin, _ = await self._clients()
        described = await asyncio.wait_for(admin.describe_topics(sorted(set(topics))), self.timeout)
        out = []
        for topic in described:
            if topic.get("error_code"):
                continue  # not created yet
            name = topic.get("topic") or topic.get("name")
            out += [TopicPartition(name, p["partition"]) for p in sorted(topic["partitions"],
                                                                         key=lambda p: p["partition"])]
        return out

    async def sizes(self, topics: Iterable[str]) -> dict[str, int]:
        """Records each topic holds now (log end minus log start, over its partitions)."""
        try:
            _, consumer = await self._clients()
            tps = await self._partitions(topics)
            begin = await asyncio.wait_for(consumer.beginning_offsets(tps), self.timeout) if tps else {}
            end = await asyncio.wait_for(consumer.end_offsets(tps), self.timeout) if tps else {}
        except BaseException:
            await self.close()
            raise
        out: dict[str, int] = {}
        for tp in tps:
            out[tp.topic] = out.get(tp.topic, 0) + max(0, end[tp] - begin[tp])
        return out

    async def positions(self, topics: Iterable[str], groups: Iterable[str]) -> dict[str, Any]:
        """Where each topic's partitions end, and where each consumer group has committed on them:
        {"topics": {topic: {partition: end}}, "groups": {group: {topic: {partition: offset}}}} (for a backup's
        manifest: what had happened on Kafka when the database was dumped)."""
        try:
            admin, consumer = await self._clients()
            tps = await self._partitions(topics)
            end = await asyncio.wait_for(consumer.end_offsets(tps), self.timeout) if tps else {}
            out: dict[str, Any] = {"topics": {}, "groups": {}}
            for tp in tps:
                out["topics"].setdefault(tp.topic, {})[str(tp.partition)] = end[tp]
            for group in groups:
                try:
                    committed = await asyncio.wait_for(admin.list_consumer_group_offsets(group), self.timeout)
                except GroupCoordinatorNotAvailableError:
                    committed = {}
                mine: dict[str, dict[str, int]] = {}
                for tp, meta in committed.items():
                    if tp in end:
                        mine.setdefault(tp.topic, {})[str(tp.partition)] = meta.offset
                out["groups"][group] = mine
        except BaseException:
            await self.close()
            raise
        return out

    async def lags(self, groups: dict[str, list[str]]) -> dict[str, int | None]:
        """Records each group has not committed yet, over the partitions of its topics (None: not known yet)."""
        try:
            admin, consumer = await self._clients()
            tps = await self._partitions({t for topics in groups.values() for t in topics})
            begin = await asyncio.wait_for(consumer.beginning_offsets(tps), self.timeout) if tps else {}
            end = await asyncio.wait_for(consumer.end_offsets(tps), self.timeout) if tps else {}
            out: dict[str, int | None] = {}
            for group, topics in groups.items():
                try:
                    committed = await asyncio.wait_for(admin.list_consumer_group_offsets(group), self.timeout)
                except GroupCoordinatorNotAvailableError:
                    out[group] = None  # no group has committed anything on this cluster yet
                    continue
                out[group] = sum(
                    max(0, end[tp] - max(begin[tp], committed[tp].offset if tp in committed else begin[tp]))
                    for tp in tps if tp.topic in topics)
        except BaseException:
            await self.close()
            raise
        return out

    async def dead_letters(self, topics: Iterable[str]) -> dict[str, DeadLetterCount]:
        """What each dead-letter topic holds now, counted per original record and per consumer group (see
        DeadLetterCount). Reads only what was added since the last call (the tally stays between calls and
        forgets records the broker deleted); a topic not read to its end within the timeout is finished on
        the next call."""
        deadline = time.monotonic() + self.timeout
        tally = self._dead_letters
        try:
            _, consumer = await self._clients()
            tps = await self._partitions(topics)
            begin = await asyncio.wait_for(consumer.beginning_offsets(tps), self.timeout) if tps else {}
            end = await asyncio.wait_for(consumer.end_offsets(tps), self.timeout) if tps else {}
            if tps and set(consumer.assignment()) != set(tps):
                consumer.assign(tps)
            for tp in tps:
                position = tally.align(tp, begin[tp], end[tp])
                if position >= end[tp]:
                    continue
                consumer.seek(tp, position)
                while position < end[tp] and (left := deadline - time.monotonic()) > 0:
                    batch = await consumer.getmany(tp, timeout_ms=int(min(left, 1.0) * 1000), max_records=1000)
                    records = [r for r in batch.get(tp, ()) if r.offset >= position]
                    for r in records:
                        tally.add(tp, r)
                        position = r.offset + 1
                    if not records:  # nothing fetched: skip what holds no records (transaction markers)
                        position = max(position, await consumer.position(tp))
                    tally.next_offset[tp] = position
        except BaseException:
            await self.close()
            raise
        return tally.counts(tp.topic for tp in tps)

    async def close(self) -> None:
        admin, consumer, self._admin, self._consumer = self._admin, self._consumer, None, None
        with contextlib.suppress(Exception):
            if consumer is not None:
                await asyncio.wait_for(consumer.stop(), 5)
        with contextlib.suppress(Exception):
            if admin is not None:
                await asyncio.wait_for(admin.close(), 5)


class KafkaProbe:
    """Readiness check: can we get cluster metadata right now? Keeps one client between checks."""

    def __init__(self, bootstrap: str, *, timeout: float = 3.0) -> None:
        self.bootstrap = bootstrap
        self.timeout = timeout
        self._client: Any = None

    async def check(self) -> None:
        from aiokafka.client import AIOKafkaClient

        if self._client is None:
            client = AIOKafkaClient(**client_config(self.bootstrap), request_timeout_ms=int(self.timeout * 1000))
            try:
                await asyncio.wait_for(client.bootstrap(), self.timeout)
            except BaseException:
                await client.close()
                raise
            self._client = client
        try:
            metadata = await asyncio.wait_for(self._client.fetch_all_metadata(), self.timeout)
        except BaseException:
            await self.close()
            raise
        if not metadata.brokers():
            raise KafkaError("no live brokers in the metadata")

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()
