"""The transactional outbox relay: rows written with the business change -> Kafka, in order.

One relay per schema is active at a time (a PostgreSQL advisory lock elects it), so rows go out in
id order and one invoice's events cannot overtake each other even with several replicas running.
Inserts NOTIFY the relay, which otherwise polls. When Kafka is unreachable the rows simply wait:
the relay backs off with jitter and catches up, oldest first, when the broker returns.
Delivery is at least once (a crash between send and mark re-sends); consumers deduplicate by
event id and drop stale events by `sequence`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from sqlalchemy import Row, Table, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shared.backoff import backoff
from shared.kafka import make_producer
from shared.metrics import OUTBOX_BACKLOG, OUTBOX_LEADER, OUTBOX_OLDEST_AGE, OUTBOX_PUBLISHED
from shared.recovery import cancelled_from_outside, database_addresses, kafka_addresses, sleep_until_back

__all__ = ["BrokerUnavailable", "OutboxRelay", "PublishedRow", "notify_outbox", "service_relay"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublishedRow:
    id: int
    key: str
    event_type: str
    topic: str
    partition: int
    offset: int


class BrokerUnavailable(Exception):
    """Kafka did not take the batch; the rows stay in the outbox."""


OnPublished = Callable[[AsyncConnection, Sequence[PublishedRow]], Awaitable[None]]


def _channel(table: Table) -> str:
    return f"fapiao_outbox_{table.schema}"


async def notify_outbox(conn: Any, table: Table) -> None:
    """Wake the relay when the caller's transaction commits."""
    await conn.execute(text("select pg_notify(:ch, '')"), {"ch": _channel(table)})


class OutboxRelay:
    def __init__(self, *, engine: AsyncEngine, table: Table, bootstrap: str, on_published: OnPublished | None = None,
                 batch_size: int = 1000, poll_interval: float = 1.0, send_timeout: float = 15.0,
                 retention_seconds: float = 86_400, producer_overrides: dict[str, Any] | None = None,
                 on_round: Callable[[int, float | None], None] | None = None,
                 on_leadership: Callable[[bool], None] | None = None) -> None:
        self.engine = engine
        self.table = table
        self.bootstrap = bootstrap
        self.on_published = on_published
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.send_timeout = send_timeout
        self.retention_seconds = retention_seconds
        self.producer_overrides = producer_overrides or {}
        self.on_round = on_round
        self.on_leadership = on_leadership
        self._lock_key = zlib.crc32(f"outbox:{table.schema}".encode())
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._producer: AIOKafkaProducer | None = None
        self._leader = False
        self.kafka_ok = False
        self._last_purge = 0.0

    @property
    def is_leader(self) -> bool:
        """This replica holds the schema's relay lock (the others stand by, trying for it every poll interval)."""
        return self._leader

    @is_leader.setter
    def is_leader(self, value: bool) -> None:
        if value == self._leader:
            return
        self._leader = value
        log.info("outbox relay of %s: %s", self.table.schema, "leading" if value else "standing by")
        if self.on_leadership is not None:
            self.on_leadership(value)

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            try:
                await self._lead()
                attempt = 0
            except (Exception, asyncio.CancelledError) as exc:  # outlives DB and broker failures
                if isinstance(exc, asyncio.CancelledError) and cancelled_from_outside():
                    raise
                self.is_leader = False
                delay = backoff(attempt, base=0.5, cap=10)
                log.warning("outbox relay error (%s: %s); retrying in %.1fs", type(exc).__name__, exc, delay)
                attempt += 1
                await sleep_until_back(delay, needs=[database_addresses(self.engine.url)], stopping=self._stopping)
            finally:
                await self._close_producer()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _lead(self) -> None:
        async with self.engine.connect() as lock_conn:
            got = (await lock_conn.execute(text("select pg_try_advisory_lock(:k)"), {"k": self._lock_key})).scalar()
            await lock_conn.commit()
            if not got:
                await self._sleep(self.poll_interval)  # another replica relays; stand by
                return
            self.is_leader = True
            raw: Any = (await lock_conn.get_raw_connection()).driver_connection  # an asyncpg connection
            listener = lambda *_: self._wake.set()  # noqa: E731
            await raw.add_listener(_channel(self.table), listener)
            try:
                await self._relay_until_stopped()
            finally:
                with contextlib.suppress(Exception):
                    await raw.remove_listener(_channel(self.table), listener)
                    await lock_conn.execute(text("select pg_advisory_unlock(:k)"), {"k": self._lock_key})
                self.is_leader = False

    async def _relay_until_stopped(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                _, full = await self.relay_once()
                failures = 0
            except BrokerUnavailable as exc:  # rows stay in the outbox; back off and try again
                self.kafka_ok = False
                await self._close_producer()
                delay = backoff(failures, base=0.5, cap=15)
                failures += 1
                log.warning("outbox: Kafka unavailable (%s); %d rows wait, retry in %.1fs (sooner if it is back)",
                            exc, await self.backlog(), delay)
                await sleep_until_back(delay, needs=[kafka_addresses(self.bootstrap)], stopping=self._stopping)
                continue
            if full:
                continue  # more waiting: go again at once
            await self._maybe_purge()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)

    async def _get_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            producer = make_producer(self.bootstrap, **self.producer_overrides)
            try:
                await asyncio.wait_for(producer.start(), self.send_timeout)
            except BaseException:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(producer.stop(), 5)
                raise
            self._producer = producer
        return self._producer

    async def _close_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), 5)

    async def backlog(self) -> int:
        async with self.engine.connect() as conn:
            return int((await conn.execute(
                select(func.count()).select_from(self.table).where(self.table.c.published_at.is_(None))
            )).scalar_one())

    async def relay_once(self) -> tuple[int, bool]:
        """Send one batch of waiting rows; mark the acknowledged ones. Returns (sent, batch was full)."""
        t = self.table
        async with self.engine.connect() as conn:
            rows = (await conn.execute(
                select(t.c.id, t.c.topic, t.c.key, t.c.event_type, t.c.payload, t.c.created_at)
                .where(t.c.published_at.is_(None)).order_by(t.c.id).limit(self.batch_size)
            )).all()
        if self.on_round is not None:
            self.on_round(len(rows), rows[0].created_at.timestamp() if rows else None)
        if not rows:
            self.kafka_ok = self._producer is not None
            return 0, False
        try:
            producer = await self._get_producer()
            results = await asyncio.wait_for(self._send_all(producer, rows), self.send_timeout)
        except Exception as exc:
            raise BrokerUnavailable(f"{type(exc).__name__}: {exc}") from exc
        published = [r for r in results if isinstance(r, PublishedRow)]
        failed = [(row, r) for row, r in zip(rows, results, strict=True) if isinstance(r, BaseException)]
        async with self.engine.begin() as conn:
            if published:
                await conn.execute(
                    update(t).where(t.c.id.in_([p.id for p in published])).values(published_at=func.now())
                )
                if self.on_published is not None:
                    await self.on_published(conn, published)
            for row, err in failed:
                await conn.execute(
                    update(t).where(t.c.id == row.id)
                    .values(attempts=t.c.attempts + 1, last_error=f"{type(err).__name__}: {err}"[:500])
                )
        if failed:
            err = failed[0][1]
            raise BrokerUnavailable(f"{len(failed)} of {len(rows)} sends failed: {type(err).__name__}: {err}")
        self.kafka_ok = True
        return len(published), len(rows) == self.batch_size

    async def _send_all(self, producer: AIOKafkaProducer, rows: Sequence[Row[*tuple[Any, ...]]]) -> list[Any]:
        futures = [
            await producer.send(row.topic, value=row.payload, key=row.key.encode(),
                                headers=[("content-type", b"application/cloudevents+json")])
            for row in rows
        ]
        acks = await asyncio.gather(*futures, return_exceptions=True)
        return [
            ack if isinstance(ack, BaseException)
            else PublishedRow(row.id, row.key, row.event_type, row.topic, ack.partition, ack.offset)
            for row, ack in zip(rows, acks, strict=True)
        ]

    async def _maybe_purge(self) -> None:
        now = time.monotonic()
        if now - self._last_purge < 300:
            return
        self._last_purge = now
        async with self.engine.begin() as conn:
            await conn.execute(
                self.table.delete().where(
                    self.table.c.published_at < func.now() - text(f"interval '{int(self.retention_seconds)} seconds'")
                )
            )


def service_relay(*, service: str, engine: AsyncEngine, table: Table, bootstrap: str, batch_size: int,
                  poll_interval: float, request_timeout_ms: int,
                  on_published: OnPublished | None = None) -> OutboxRelay:
    """A service's relay with its outbox metrics wired in (backlog, oldest unpublished age, published, leader)."""
    published = OUTBOX_PUBLISHED.labels(service)

    async def published_hook(conn: AsyncConnection, rows: Sequence[PublishedRow]) -> None:
        if on_published is not None:
            await on_published(conn, rows)
        published.inc(len(rows))

    def on_round(waiting: int, oldest: float | None) -> None:
        OUTBOX_BACKLOG.labels(service).set(waiting)
        OUTBOX_OLDEST_AGE.labels(service).set(time.time() - oldest if oldest else 0)

    leader = OUTBOX_LEADER.labels(service)
    leader.set(0)

    def on_leadership(leading: bool) -> None:
        leader.set(1 if leading else 0)
        if not leading:  # only the leader measures the backlog; a standby's last reading would go stale
            on_round(0, None)

    return OutboxRelay(engine=engine, table=table, bootstrap=bootstrap, on_published=published_hook,
                       batch_size=batch_size, poll_interval=poll_interval, on_round=on_round,
                       on_leadership=on_leadership,
                       producer_overrides={"request_timeout_ms": request_timeout_ms})
