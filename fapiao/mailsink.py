"""A local SMTP sink for development and tests: accepts every message over real SMTP and keeps it as an .eml
file (one per message and recipient list), so e-mail alerts can be read without a mail server.

    python -m fapiao.mailsink --port 1025 --dir .run/mail

Files are named <UTC time>-<sequence>.eml and written atomically (a reader never sees half a message). The
envelope's sender and recipients are added as X-Sink-Mail-From / X-Sink-Rcpt-To headers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import signal
import time
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

__all__ = ["MailDir", "main", "serve"]


class MailDir:
    """The handler aiosmtpd calls for each message."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self._seq = itertools.count(1)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # aiosmtpd: handle_<VERB>
        content = envelope.original_content or b""
        head = (f"X-Sink-Mail-From: {envelope.mail_from}\r\n"
                f"X-Sink-Rcpt-To: {', '.join(envelope.rcpt_tos)}\r\n").encode()
        name = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.getpid()}-{next(self._seq):06d}.eml"
        tmp = self.directory / f".{name}.tmp"
        tmp.write_bytes(head + content)
        tmp.rename(self.directory / name)
        return "250 OK: kept as " + name


async def serve(host: str, port: int, directory: Path, *, ready: asyncio.Event | None = None) -> None:
    handler = MailDir(directory)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="fapiao-mailsink", ident="Fapiao Sync mail sink", data_size_limit=10 << 20,
                     enable_SMTPUTF8=True), host=host, port=port)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    print(f"mail sink listening on {host}:{port}, keeping messages in {directory}", flush=True)
    try:
        await stop.wait()
    finally:
        server.close()
        await server.wait_closed()


def main(argv: list[str] | None = None) -> Any:
    parser = argparse.ArgumentParser(prog="python -m fapiao.mailsink", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("FAPIAO_SMTP_PORT", "1025")))
    parser.add_argument("--dir", type=Path, default=Path(".run/mail"))
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port, args.dir))


if __name__ == "__main__":
    main()
