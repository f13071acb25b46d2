"""`python -m services.sync` runs the service; `python -m services.sync migrate` only migrates."""

from __future__ import annotations

import asyncio
import sys

import uvicorn

from services.sync.app import create_app, migrate
from services.sync.settings import SyncSettings


def main(argv: list[str]) -> int:
    settings = SyncSettings()  # type: ignore[call-arg]
    if argv[:1] == ["migrate"]:
        asyncio.run(migrate(settings))
        return 0
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None,
                access_log=False, timeout_graceful_shutdown=10, server_header=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
