"""A real webhook receiver (HTTP over loopback) in this process, and serving any ASGI app over real HTTP."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

import pytest

from fapiao.infra import free_port


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> dict:
        return json.loads(self.body)


class Receiver:
    """Answers POSTs on any path with the next scripted status for that path (200 once the script is used up)
    and remembers every request. Each test takes paths of its own."""

    def __init__(self) -> None:
        self.port = free_port()
        self.requests: list[Received] = []
        self.scripts: dict[str, list[int]] = {}
        self.server = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def at(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = scope["path"]
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        self.requests.append(Received(path, headers, body, time.time()))
        script = self.scripts.get(path) or []
        status = script.pop(0) if script else 200
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok" if status < 300 else b"not now"})


async def serve_app(app: object, port: int) -> tuple[object, asyncio.Task]:
    """Serve an already started ASGI app (its lifespan entered by a fixture) over real HTTP on loopback."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off",
                                           access_log=False))
    task = asyncio.create_task(server.serve())
    deadline = asyncio.get_running_loop().time() + 10
    while not server.started:
        if task.done() or asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"could not serve on port {port}", pytrace=False)
        await asyncio.sleep(0.05)
    return server, task
