"""A small round-robin TCP balancer for `make up` with replicas: `python -m fapiao.balancer --route 8000=8010,8020`
listens on 127.0.0.1:8000 and hands each new connection to the next of 127.0.0.1:8010 and :8020, skipping a
backend that refuses the connection (a dead replica) until one answers. Several `--route`s in one process.

It balances connections, not requests: a client that keeps its connection open (HTTP keep-alive) stays on one
replica until it reconnects. Good enough for a laptop; in production use a real load balancer (docs/replicas.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import signal

import typer

log = logging.getLogger("fapiao.balancer")
app = typer.Typer(add_completion=False, help=__doc__)
CONNECT_TIMEOUT = 2.0


def parse_route(route: str) -> tuple[int, list[int]]:
    """'8000=8010,8020' -> (8000, [8010, 8020])."""
    listen, _, backends = route.partition("=")
    ports = [int(p) for p in backends.split(",") if p.strip()]
    if not listen.strip().isdigit() or not ports:
        raise typer.BadParameter(f"{route!r}: LISTEN=BACKEND[,BACKEND…], e.g. 8000=8010,8020")
    return int(listen), ports


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One direction. Its end is passed on as a half-close (a client may send its request, shut its side, and
    still read the answer); the connection closes once both directions are done (handle)."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        with contextlib.suppress(Exception):
            writer.close()


class Route:
    def __init__(self, listen: int, backends: list[int], host: str = "127.0.0.1") -> None:
        self.listen = listen
        self.backends = backends
        self.host = host
        self._next = itertools.cycle(range(len(backends)))

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        for _ in self.backends:  # each backend at most once per connection, starting at the next in turn
            port = self.backends[next(self._next)]
            try:
                return await asyncio.wait_for(asyncio.open_connection(self.host, port), CONNECT_TIMEOUT)
            except (OSError, TimeoutError):
                log.warning("backend %s:%d refused; trying the next", self.host, port)
        return None

    async def handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        backend = await self._connect()
        if backend is None:  # no replica answers: close, the client sees a refused request
            client_w.close()
            return
        back_r, back_w = backend
        try:
            await asyncio.gather(_pipe(client_r, back_w), _pipe(back_r, client_w))
        finally:
            for w in (back_w, client_w):
                with contextlib.suppress(Exception):
                    w.close()


async def serve(routes: list[Route]) -> None:
    servers = [await asyncio.start_server(r.handle, r.host, r.listen, reuse_address=True) for r in routes]
    for r in routes:
        log.info("balancing 127.0.0.1:%d over %s", r.listen, ", ".join(str(p) for p in r.backends))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for s in servers:
        s.close()
        await s.wait_closed()


@app.command()
def main(route: list[str] = typer.Option(..., "--route", help="LISTEN=BACKEND[,BACKEND…] (ports on 127.0.0.1)"),
         ) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(serve([Route(*parse_route(r)) for r in route]))


if __name__ == "__main__":
    app()
