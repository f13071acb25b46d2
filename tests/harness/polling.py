"""Waiting for the system to get somewhere, and reading what it published."""

from __future__ import annotations

import asyncio
import inspect

import httpx


async def eventually(check, *, timeout: float = 15.0, interval: float = 0.1):  # type: ignore[no-untyped-def]
    """Poll a check (sync or async) until it returns a truthy value; fail with its last value after timeout."""
    deadline = asyncio.get_running_loop().time() + timeout
    last = None
    while asyncio.get_running_loop().time() < deadline:
        last = check()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s; last value: {last!r}")


async def read_topic(bootstrap: str, topic: str, *, until, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    """All records on `topic` from the beginning, polling until `until(records)` holds or timeout."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    records: list = []
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(timeout_ms=300)
            for recs in batch.values():
                records.extend(recs)
            if until(records):
                return records
        return records
    finally:
        await consumer.stop()


async def metric(base_url: str, name: str, **labels: str) -> float:
    """One sample of a service's /metrics (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    async with httpx.AsyncClient(timeout=10) as c:
        body = (await c.get(f"{base_url}/metrics")).text
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0
