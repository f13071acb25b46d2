"""The body of every service's `__main__`: `python -m services.<name>` serves, `... migrate` only migrates."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import uvicorn

__all__ = ["run_service"]


def run_service(argv: list[str], *, settings_class: Callable[[], Any], create_app: Callable[[Any], Any],
                migrate: Callable[[Any], Coroutine[Any, Any, None]], graceful_shutdown: int = 10) -> int:
    settings = settings_class()
    if argv[:1] == ["migrate"]:
        asyncio.run(migrate(settings))
        return 0
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None,
                access_log=False, timeout_graceful_shutdown=graceful_shutdown, server_header=False)
    return 0
