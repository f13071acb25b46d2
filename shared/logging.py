"""Structured JSON logs carrying the correlation id and invoice id of the work at hand."""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

__all__ = ["bind", "configure_logging", "correlation_id", "invoice_id", "redact"]

correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("correlation_id", default=None)
invoice_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("invoice_id", default=None)

# API keys and bearer tokens must never reach a log line, whatever a caller passes in.
_SECRETS = re.compile(r"(fsk_[A-Za-z0-9_\-]{8,}|(?i:bearer)\s+[A-Za-z0-9._\-]+)")


def redact(text: str) -> str:
    return _SECRETS.sub("[redacted]", text)


class bind:  # lower case: used like a function: `with bind(invoice_id=...)`
    """Set context fields for the log lines emitted inside the block."""

    def __init__(self, *, correlation: str | None = None, invoice: str | None = None) -> None:
        self._values = [(correlation_id, correlation), (invoice_id, invoice)]
        self._tokens: list[tuple[contextvars.ContextVar[str | None], contextvars.Token[str | None]]] = []

    def __enter__(self) -> bind:
        for var, value in self._values:
            if value is not None:
                self._tokens.append((var, var.set(value)))
        return self

    def __exit__(self, *exc: object) -> None:
        for var, token in reversed(self._tokens):
            var.reset(token)


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        if (cid := correlation_id.get()) is not None:
            entry["correlation_id"] = cid
        if (iid := invoice_id.get()) is not None:
            entry["invoice_id"] = iid
        for key, value in getattr(record, "fields", {}).items():
            entry[key] = value
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def configure_logging(*, service: str, level: str = "INFO", json_output: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(service) if json_output else TextFormatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiokafka is chatty at INFO about every coordinator hiccup.
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request to the tax store is noise
