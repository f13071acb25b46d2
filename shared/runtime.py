"""The part of a service's lifespan every service with an outbox shares: migrate (when asked), open the
engines, relay the outbox to Kafka, answer the readiness checks; on the way out, stop the relay and close
what was opened. Each service's lifespan wraps its own workers inside it:

    async with service_runtime(app, settings, service=SERVICE, migrate=migrate, outbox=models.outbox) as rt:
        ...start the service's own tasks with rt.worker_sessions...
        try:
            yield
        finally:
            ...stop them...
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from shared.db import engine_for, ping, session_factory
from shared.kafka import KafkaProbe
from shared.outbox import OnPublished, OutboxRelay, service_relay


@dataclass(frozen=True)
class Runtime:
    """Two pools: `engine`/`sessions` serve HTTP requests only; `worker_engine`/`worker_sessions` serve the
    relay, consumers, sweeps and samplers. A busy or stuck background loop can then never take the
    connections a request needs (nor the other way round)."""

    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    worker_engine: AsyncEngine
    worker_sessions: async_sessionmaker[AsyncSession]
    relay: OutboxRelay | None


@asynccontextmanager
async def service_runtime(app: FastAPI, settings: Any, *, service: str, migrate: Callable[[Any], Awaitable[None]],
                          outbox: Table, on_published: OnPublished | None = None,
                          session_settings: Mapping[str, str] | None = None,
                          relay: bool = True) -> AsyncIterator[Runtime]:
    """Yields both engines, their session factories and the running relay; sets app.state.engine/sessions
    (requests), app.state.worker_engine/worker_sessions (background loops), app.state.relay and the
    "database" and "kafka" readiness checks. `relay=False` (an API-only process of the issuer, whose
    background process relays) starts no relay; app.state.relay and Runtime.relay are then None."""
    if settings.auto_migrate:
        await migrate(settings)
    engine = engine_for(settings, service=service, session_settings=session_settings)
    worker_engine = engine_for(settings, service=service, worker=True, session_settings=session_settings)
    outbox_relay = service_relay(
        service=service, engine=worker_engine, table=outbox, bootstrap=settings.kafka_bootstrap,
        batch_size=settings.relay_batch_size, poll_interval=settings.relay_poll_interval,
        request_timeout_ms=settings.kafka_request_timeout_ms, on_published=on_published,
    ) if relay else None
    probe = KafkaProbe(settings.kafka_bootstrap)
    runtime = Runtime(engine=engine, sessions=session_factory(engine), worker_engine=worker_engine,
                      worker_sessions=session_factory(worker_engine), relay=outbox_relay)
    app.state.engine = engine
    app.state.sessions = runtime.sessions
    app.state.worker_engine = worker_engine
    app.state.worker_sessions = runtime.worker_sessions
    app.state.relay = outbox_relay
    app.state.checks.update({"database": lambda: ping(engine), "kafka": probe.check})
    relay_task = asyncio.create_task(outbox_relay.run(), name="outbox-relay") if outbox_relay else None
    try:
        yield runtime
    finally:
        if outbox_relay is not None and relay_task is not None:
            outbox_relay.stop()
            relay_task.cancel()
            await asyncio.gather(relay_task, return_exceptions=True)
        await probe.close()
        await worker_engine.dispose()
        await engine.dispose()
