"""Noticing that Kafka or PostgreSQL is back, so a loop does not sit out the rest of its backoff.

A loop whose work failed because the broker or the database went away backs off (shared.backoff) — up to 15 s
between tries. Fault drills showed the cost: after a broker restart nothing was published for ~20 s while the
outbox relay slept out its delay. `sleep_until_back` sleeps the same delay but tries a TCP connection to the
thing's address every half second meanwhile; once a try has failed and a later one connects, it returns at once.
A server that stays reachable while requests to it fail (a full disk, a missing topic) does not cut the delay
short, so the backoff still protects it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from sqlalchemy.engine import URL, make_url

__all__ = ["Address", "cancelled_from_outside", "database_addresses", "kafka_addresses", "reachable",
           "sleep_until_back"]

Address = tuple[str, int]


def kafka_addresses(bootstrap: str) -> list[Address]:
    """host:port pairs of a bootstrap list ("a:9092,b:9092"; a bare host means port 9092)."""
    out = []
    for item in bootstrap.split(","):
        item = item.strip().rsplit("://", 1)[-1]
        if not item:
            continue
        host, _, port = item.rpartition(":") if ":" in item else (item, "", "9092")
        out.append((host.strip("[]"), int(port)))
    return out


def database_addresses(url: str | URL) -> list[Address]:
    """The server of a database URL, or nothing for a unix-socket URL (no host)."""
    u = make_url(url)
    return [(u.host, u.port or 5432)] if u.host else []


async def reachable(addresses: Sequence[Address], *, timeout: float = 1.0) -> bool:
    """Does any of them accept a TCP connection?"""
    for host, port in addresses:
        with contextlib.suppress(OSError, TimeoutError):
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), timeout)
            return True
    return False


async def sleep_until_back(seconds: float, *, needs: Sequence[Sequence[Address]],
                           stopping: asyncio.Event | None = None, every: float = 0.5) -> bool:
    """Sleep up to `seconds`; True as soon as what the loop `needs` went from unreachable to reachable meanwhile
    (try again now), False when the time is up or `stopping` is set. `needs`: groups of addresses (Kafka's
    bootstrap servers, the database server); reachable means one address of every group accepts a connection."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(seconds, 0.0)
    stopping = stopping or asyncio.Event()
    groups = [g for g in needs if g]
    seen_down = False
    while (left := deadline - loop.time()) > 0 and not stopping.is_set():
        if groups:
            timeout = min(1.0, max(left, 0.05))
            up = all([await reachable(g, timeout=timeout) for g in groups])
            if up and seen_down:
                return True
            seen_down = seen_down or not up
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), min(every, max(deadline - loop.time(), 0.0)))
    return False


def cancelled_from_outside() -> bool:
    """Whether the running task itself is being cancelled (the service stops), as opposed to a CancelledError
    that leaked out of a library's cancelled inner future (aiokafka cancels a request's future when it drops a
    connection). The first ends a loop; the second is one more failure, or the loop would end without a word."""
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0
