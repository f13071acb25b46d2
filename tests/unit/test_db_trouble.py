"""database_unavailable(): which errors mean "the database cannot take this now, retry" (503) and which are
bugs (500). Real exceptions: raised by the driver against a closed port, or the driver's own classes."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx
import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_dbapi

from fapiao.infra import free_port
from shared.db import database_unavailable, make_engine


def _wrapped(driver_error: Exception) -> sa_exc.DBAPIError:
    """What SQLAlchemy raises for a driver error: DBAPIError around the dialect's adapter error."""
    dbapi = AsyncAdapt_asyncpg_dbapi(asyncpg)
    adapted = next(cls for base, cls in dbapi._asyncpg_error_translate.items() if isinstance(driver_error, base))
    orig = adapted(str(driver_error), driver_error)
    return sa_exc.DBAPIError.instance("select 1", {"secret": "x"}, orig, dbapi.Error)


@pytest.mark.parametrize(("error", "reason"), [
    (asyncpg.CannotConnectNowError("the database system is starting up"), "connection_lost"),  # 57P03
    (asyncpg.AdminShutdownError("terminating connection due to administrator command"), "connection_lost"),
    (asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"), "connection_lost"),
    (asyncpg.ConnectionFailureError("connection failure"), "connection_lost"),  # 08006
    (asyncpg.TooManyConnectionsError("sorry, too many clients already"), "overloaded"),  # 53300
    (asyncpg.SerializationError("could not serialize access"), "conflict"),  # 40001
    (asyncpg.DeadlockDetectedError("deadlock detected"), "conflict"),  # 40P01
])
def test_retryable_sqlstates_bare_and_wrapped(error: Exception, reason: str) -> None:
    for exc in (error, _wrapped(error)):
        trouble = database_unavailable(exc)
        assert trouble is not None and trouble.reason == reason, (exc, trouble)
        assert trouble.retry_after >= 1
        assert "secret" not in trouble.cause and "select" not in trouble.cause


@pytest.mark.parametrize("error", [
    asyncpg.UniqueViolationError("duplicate key"), asyncpg.UndefinedColumnError("no such column"),
    asyncpg.QueryCanceledError("canceling statement due to user request"),
    asyncpg.DataError("invalid input syntax"),
])
def test_bugs_and_constraint_errors_are_not_outages(error: Exception) -> None:
    assert database_unavailable(error) is None
    assert database_unavailable(_wrapped(error)) is None


def test_pool_timeout_is_pool_exhaustion() -> None:
    exc = sa_exc.TimeoutError("QueuePool limit of size 10 overflow 10 reached, connection timed out, timeout 3.00")
    trouble = database_unavailable(exc)
    assert trouble is not None and trouble.reason == "pool_exhausted"


def test_interface_errors_and_invalidated_connections() -> None:
    assert database_unavailable(asyncpg.InterfaceError("connection is closed")).reason == "connection_lost"
    invalidated = _wrapped(asyncpg.UniqueViolationError("x"))
    invalidated.connection_invalidated = True
    assert database_unavailable(invalidated).reason == "connection_lost"


async def test_a_refused_connection_from_the_driver_is_an_outage_but_not_from_httpx() -> None:
    engine = make_engine(f"postgresql+asyncpg://u:pw-not-logged@127.0.0.1:{free_port()}/x", pool_timeout=1)
    try:
        with pytest.raises(OSError) as caught:
            async with engine.connect():
                pass
    finally:
        await engine.dispose()
    trouble = database_unavailable(caught.value)
    assert trouble is not None and trouble.reason == "connection_lost"
    assert "pw-not-logged" not in trouble.cause
    # The same socket error from an HTTP client is not the database's.
    with pytest.raises(httpx.ConnectError) as http_error:
        async with httpx.AsyncClient() as client:
            await client.get(f"http://127.0.0.1:{free_port()}/")
    assert database_unavailable(http_error.value) is None
    assert database_unavailable(ConnectionRefusedError(111, "refused")) is None  # raised outside the driver
    assert database_unavailable(TimeoutError()) is None


def test_chains_and_groups_are_searched() -> None:
    try:
        try:
            raise asyncpg.CannotConnectNowError("recovering")
        except asyncpg.PostgresError as inner:
            raise RuntimeError("while handling") from inner
    except RuntimeError as outer:
        assert database_unavailable(outer).reason == "connection_lost"
    group = ExceptionGroup("tasks", [ValueError("x"), sa_exc.TimeoutError("QueuePool limit")])
    assert database_unavailable(group).reason == "pool_exhausted"
    assert database_unavailable(ExceptionGroup("tasks", [ValueError("x")])) is None
    assert database_unavailable(asyncio.CancelledError()) is None


def test_a_consumer_retries_a_record_the_database_could_not_take_and_never_dead_letters_it() -> None:
    """shared.kafka.transient: what the consume loop retries (rewinding) instead of dead-lettering. A
    database outage seen through SQLAlchemy (not an OSError) is the database's fault, not the record's."""
    from shared.kafka import transient

    lost = _wrapped(asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"))
    assert not isinstance(lost, OSError) and transient(lost)
    assert transient(sa_exc.TimeoutError("QueuePool limit of size 5 overflow 5 reached"))
    assert transient(ConnectionRefusedError()) and transient(TimeoutError())
    # A bug or a bad record stays the record's fault: dead-lettered with its reason.
    assert not transient(_wrapped(asyncpg.UniqueViolationError("duplicate key")))
    assert not transient(ValueError("data.attempt: Field required"))
