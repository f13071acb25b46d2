"""FAPIAO_REPLICAS for `make up` (fapiao/stack.py) and the round-robin balancer in front of the replicas
(fapiao/balancer.py), over real sockets on loopback."""

from __future__ import annotations

import asyncio

import pytest

from fapiao import stack
from fapiao.balancer import Route, parse_route
from fapiao.infra import free_port


def test_replicas_default_to_one_of_each_and_name_each_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FAPIAO_REPLICAS", raising=False)
    assert stack._replicas() == {"issuer": 1, "sync": 1, "reconciler": 1, "notifier": 1}
    monkeypatch.setenv("FAPIAO_REPLICAS", " sync=2, issuer=3 ,")
    assert stack._replicas() == {"issuer": 3, "sync": 2, "reconciler": 1, "notifier": 1}
    assert stack._replica_names("sync", 1) == ["sync"]
    assert stack._replica_names("sync", 2) == ["sync-1", "sync-2"]
    assert [stack._service_of(n) for n in ("sync-2", "sync", "kafka-2", "taxstore")] == [
        "sync", "sync", "kafka-2", "taxstore"]


@pytest.mark.parametrize("value", ["taxstore=2", "sync=0", "sync=10", "sync=two", "sync"])
def test_a_wrong_replicas_setting_is_refused_saying_what_is_allowed(monkeypatch: pytest.MonkeyPatch,
                                                                     value: str) -> None:
    monkeypatch.setenv("FAPIAO_REPLICAS", value)
    with pytest.raises(RuntimeError, match="SERVICE=N.*the tax store runs once"):
        stack._replicas()


def test_a_route_is_parsed_or_refused() -> None:
    assert parse_route("8000=8010,8020") == (8000, [8010, 8020])
    with pytest.raises(Exception, match="LISTEN=BACKEND"):
        parse_route("8000")


async def test_the_balancer_takes_turns_and_skips_a_backend_that_refuses() -> None:
    async def backend(name: bytes) -> tuple[asyncio.Server, int]:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readline()
            writer.write(name)
            await writer.drain()
            writer.close()

        port = free_port()
        return await asyncio.start_server(answer, "127.0.0.1", port), port

    (a, a_port), (b, b_port) = await backend(b"a"), await backend(b"b")
    dead = free_port()  # nobody listens: a replica that died
    route = Route(free_port(), [a_port, dead, b_port])
    server = await asyncio.start_server(route.handle, "127.0.0.1", route.listen)
    answers = []
    try:
        for _ in range(6):
            reader, writer = await asyncio.open_connection("127.0.0.1", route.listen)
            writer.write(b"hello\n")
            await writer.drain()
            answers.append(await asyncio.wait_for(reader.read(), 5))
            writer.close()
    finally:
        for s in (server, a, b):
            s.close()
    assert set(answers) == {b"a", b"b"} and b"" not in answers, answers
