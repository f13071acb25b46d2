"""`python -m services.taxstore` serves the simulated tax store; `python -m services.taxstore migrate` only migrates."""

from __future__ import annotations

import asyncio
import sys

import uvicorn

from services.taxstore.app import create_app, migrate
from services.taxstore.settings import TaxstoreSettings


def main(argv: list[str]) -> int:
    settings = TaxstoreSettings()  # type: ignore[call-arg]
    if argv[:1] == ["migrate"]:
        asyncio.run(migrate(settings))
        return 0
    # A short graceful shutdown: requests hung by the timeout fault must not hold a restart for long.
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None,
                access_log=False, timeout_graceful_shutdown=3, server_header=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
