"""The two long-running shapes every service's background work takes:

- `run_rounds`: do a round of work, again at once while there is more, otherwise wait for a wake-up or an
  idle interval; a failing round (database away) backs off with jitter and the loop goes on.
- `consume_forever`: a consumer group's ConsumeLoop (shared.kafka), handing its handlers typed events, rebuilt
  from the committed offsets after any failure of Kafka or the database, until the service stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from shared.backoff import backoff
from shared.consumers import ConsumerGroup
from shared.kafka import BatchHandler, ConsumeLoop, HandlerTable, make_consumer, make_producer
from shared.metrics import DEAD_LETTERS
from shared.recovery import Address, cancelled_from_outside, database_addresses, kafka_addresses, sleep_until_back
from shared.topics import dlq_name

__all__ = ["consume_forever", "run_rounds"]

log = logging.getLogger(__name__)



async def run_rounds(name: str, round_: Callable[[], Awaitable[bool]], *, stopping: asyncio.Event,
                     wake: asyncio.Event | None = None, idle: Callable[[], float],
                     needs: Sequence[Sequence[Address]] = (), backoff_cap: float = 15) -> None:
    """Run `round_` until `stopping`: again at once after a busy round (it returned True), otherwise after
    `idle()` seconds or as soon as `wake` is set. A failed round backs off, cut short when the servers it `needs`
    (shared.recovery) come back."""
    wake = wake or asyncio.Event()
    failures = 0
    while not stopping.is_set():
        try:
            busy = await round_()
            failures = 0
        except (Exception, asyncio.CancelledError) as exc:  # the database may be away; keep going
            if isinstance(exc, asyncio.CancelledError) and cancelled_from_outside():
                raise
            failures += 1
            log.warning("%s round failed (%s: %s)", name, type(exc).__name__, exc)
            await sleep_until_back(backoff(failures, base=0.5, cap=backoff_cap), needs=needs, stopping=stopping)
            continue
        if busy:
            await asyncio.sleep(0)
            continue
        wake.clear()
        waiter = asyncio.ensure_future(wake.wait())
        stopper = asyncio.ensure_future(stopping.wait())
        try:
            await asyncio.wait({waiter, stopper}, timeout=max(idle(), 0), return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            stopper.cancel()


async def consume_forever(*, group: ConsumerGroup, prefix: str, bootstrap: str, table: HandlerTable[Any],
                          batch_handler: BatchHandler, stopping: asyncio.Event, request_timeout_ms: int,
                          max_poll_records: int = 1000, per_poll: bool = False,
                          pause: Callable[[], float] | None = None, database_url: str | None = None) -> None:
    """Consume `group`'s topics in batch mode until `stopping`, the handlers getting typed events (`table`,
    which must cover every type the topics carry); after any failure start again from committed offsets, after a
    backoff cut short when Kafka (and the database at `database_url`) come back (shared.recovery).
    Poison goes to each topic's dead-letter twin and counts in fapiao_dead_letters_total."""
    needs = [kafka_addresses(bootstrap), database_addresses(database_url) if database_url else []]
    table.check_covers(group.types, group=group.name)
    topics, group_id = group.topic_names(prefix), group.qualified(prefix)
    attempt = 0
    while not stopping.is_set():
        consumer = make_consumer(bootstrap, *topics, group_id=group_id, max_poll_records=max_poll_records,
                                 request_timeout_ms=request_timeout_ms)
        producer = make_producer(bootstrap, request_timeout_ms=request_timeout_ms)
        loop = ConsumeLoop(consumer=consumer, producer=producer, topics=topics, batch_handler=batch_handler,
                           table=table, per_poll=per_poll, pause=pause, dlq_topic=dlq_name, group_id=group_id,
                           on_dead_letter=lambda t: DEAD_LETTERS.labels(group.service, t).inc())

        async def stop_when_stopping(loop: ConsumeLoop = loop) -> None:
            await stopping.wait()
            loop.stop()

        watch = asyncio.create_task(stop_when_stopping())
        try:
            await asyncio.wait_for(consumer.start(), 30)
            await asyncio.wait_for(producer.start(), 30)
            attempt = 0
            await loop.run()
        except (Exception, asyncio.CancelledError) as exc:  # Kafka or the DB failed: start again
            if isinstance(exc, asyncio.CancelledError) and cancelled_from_outside():
                raise
            delay = backoff(attempt, base=0.5, cap=15)
            attempt += 1
            log.warning("%s consumer failed (%s: %s); restarting in %.1fs", group_id, type(exc).__name__, exc, delay)
            await sleep_until_back(delay, needs=needs, stopping=stopping)
        finally:
            watch.cancel()
            for client in (consumer, producer):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.stop(), 10)
