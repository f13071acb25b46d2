"""shared.recovery against real sockets: a backoff is cut short when a server that was down accepts connections
again, and only then."""

from __future__ import annotations

import asyncio
import socket

import pytest

from shared.recovery import database_addresses, kafka_addresses, reachable, sleep_until_back


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_addresses_of_a_bootstrap_list_and_a_database_url() -> None:
    assert kafka_addresses("a:9092, b:19092,c") == [("a", 9092), ("b", 19092), ("c", 9092)]
    assert kafka_addresses("SASL_SSL://broker.example:9096") == [("broker.example", 9096)]
    assert kafka_addresses("[::1]:9092") == [("::1", 9092)]
    assert database_addresses("postgresql+asyncpg://u:p@db.internal:6543/x") == [("db.internal", 6543)]
    assert database_addresses("postgresql://u:p@db/x") == [("db", 5432)]
    assert database_addresses("postgresql:///x?host=/var/run/postgresql") == []


async def test_returns_at_once_when_a_server_that_was_down_comes_back() -> None:
    port = _free_port()
    server: asyncio.Server | None = None

    async def come_back() -> None:
        nonlocal server
        await asyncio.sleep(1.0)
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", port)

    task = asyncio.create_task(come_back())
    try:
        back = await asyncio.wait_for(sleep_until_back(30, needs=[[("127.0.0.1", port)]], every=0.1), 10)
        assert back is True
        assert await reachable([("127.0.0.1", port)])
    finally:
        await task
        assert server is not None
        server.close()


async def test_a_server_reachable_all_along_does_not_cut_the_backoff_short() -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        assert await sleep_until_back(1.0, needs=[[("127.0.0.1", port)]], every=0.1) is False
    finally:
        server.close()


async def test_every_group_must_be_back_and_stopping_ends_the_wait() -> None:
    up = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    down = _free_port()
    try:
        needs = [[("127.0.0.1", up.sockets[0].getsockname()[1])], [("127.0.0.1", down)]]
        assert await sleep_until_back(1.0, needs=needs, every=0.1) is False  # one group stays down
        stopping = asyncio.Event()
        asyncio.get_running_loop().call_later(0.3, stopping.set)
        assert await asyncio.wait_for(sleep_until_back(60, needs=needs, stopping=stopping), 5) is False
    finally:
        up.close()


@pytest.mark.parametrize("seconds", [0, -1])
async def test_no_time_no_wait(seconds: float) -> None:
    assert await asyncio.wait_for(sleep_until_back(seconds, needs=[[("127.0.0.1", _free_port())]]), 2) is False
