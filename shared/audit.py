"""Operators by name, and the record of what each of them changed.

**Named tokens.** Besides FAPIAO_ADMIN_TOKEN (the operator `admin`, and the token the services call each other
with), operators have names: `alice:<sha256 hex of her token>`. The entries come from FAPIAO_OPERATOR_TOKENS
(comma-separated; read at start) and from the file FAPIAO_OPERATOR_TOKENS_FILE (one entry a line, `#` comments;
read again within a second of any change, so `fapiao operators add/revoke` takes effect on every service that
reads the file without a restart). Both hold hashes only, so neither is a secret. The tokens are 256-bit random,
so a plain SHA-256 is as good as a slow KDF here.

**The audit log.** Every change made with an operator's token (any method but GET, HEAD and OPTIONS, on any
route that asked for the admin token) is written to the service's own `audit_log` table before the answer leaves:
who (the operator; for a call one service makes for another, the operator or tenant it acted for, from the
`X-Fapiao-On-Behalf-Of` header, trusted only with the services' own token), what (method, path and query, the
status of the answer), when, and from where (the client address, its user agent, the correlation id). Every
service answers `GET /admin/audit`; `fapiao audit` merges the five.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import re
import time
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy import BigInteger, Column, DateTime, Index, Integer, MetaData, String, Table, Text, func, select

from shared.db import make_metadata

__all__ = ["ON_BEHALF", "Operators", "audit_router", "audit_table", "parse_operator_tokens", "read_operator_file",
           "record", "write_operator_file"]

log = logging.getLogger(__name__)
ON_BEHALF = "X-Fapiao-On-Behalf-Of"
SERVICE_OPERATOR = "admin"  # FAPIAO_ADMIN_TOKEN's holder: people with it, and the services themselves
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_HEX = re.compile(r"[0-9a-f]{64}")
_BEHALF = re.compile(r"(tenant|operator):[0-9A-Za-z._-]{1,64}")
QUIET = frozenset({"GET", "HEAD", "OPTIONS"})
AUDIT_TIMEOUT = 2.0  # the answer waits for its record at most this long (then: logged, not recorded)
RELOAD_EVERY = 1.0  # seconds between looks at FAPIAO_OPERATOR_TOKENS_FILE: a revocation holds within this


def audit_table(metadata: MetaData) -> Table:
    return Table(
        "audit_log", metadata,
        Column("id", BigInteger, primary_key=True, autoincrement=True),
        Column("at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("actor", String(64), nullable=False),
        Column("on_behalf_of", String(80)),
        Column("method", String(10), nullable=False),
        Column("path", Text, nullable=False),
        Column("status", Integer, nullable=False),
        Column("client", String(80)),
        Column("user_agent", String(200)),
        Column("correlation_id", String(64)),
        Index("ix_audit_log_at", "at"),
    )


_TABLES: dict[str, Table] = {}


def _table(schema: str) -> Table:
    """The audit_log of one service's schema (as its models declare it)."""
    if schema not in _TABLES:
        _TABLES[schema] = audit_table(make_metadata(schema))
    return _TABLES[schema]


def parse_operator_tokens(value: str) -> dict[str, str]:
    """'alice:<hex>,bob:<hex>' -> {hex: name}; ValueError naming the bad entry."""
    out: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        name, _, digest = item.partition(":")
        name, digest = name.strip(), digest.strip().lower()
        if not _NAME.fullmatch(name) or name == SERVICE_OPERATOR:
            raise ValueError(f"operator name {name!r}: lower-case letters, digits, '.', '_' or '-' (not 'admin')")
        if not _HEX.fullmatch(digest):
            raise ValueError(f"operator {name}: the token's SHA-256 as 64 hex digits (fapiao operators token {name})")
        if name in out.values():
            raise ValueError(f"operator {name} is named twice")
        out[digest] = name
    return out


def read_operator_file(path: str | Path) -> dict[str, str]:
    """The entries of an operators file ({hex: name}): one `name:<hex>` a line, blank lines and `#` comments
    allowed. OSError when it cannot be read, ValueError naming the line at fault."""
    text = Path(path).read_text(encoding="utf-8")
    out: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        entry = line.partition("#")[0].strip()
        if not entry:
            continue
        try:
            one = parse_operator_tokens(entry)
        except ValueError as exc:
            raise ValueError(f"{path}, line {n}: {exc}") from None
        if set(one.values()) & set(out.values()):
            raise ValueError(f"{path}, line {n}: operator {entry.partition(':')[0]} is named twice")
        out.update(one)
    return out


def write_operator_file(path: str | Path, entries: dict[str, str]) -> None:
    """Replace the file's entries ({name: hex}) at once (a reader sees the old list or the new one, never half)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    body = "# Named operators: name:<SHA-256 hex of the token>. Hashes only; `fapiao operators` edits this file.\n"
    body += "".join(f"{name}:{digest}\n" for name, digest in sorted(entries.items()))
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(body, encoding="utf-8")
    tmp.chmod(0o644)  # hashes, no secret: every service's user reads it
    os.replace(tmp, target)


@dataclass
class Operators:
    """Who may use /admin: the admin token, the settings' named operators, and those of the operators file
    (looked at again at most every RELOAD_EVERY seconds, when its size or mtime changed)."""

    admin_token: str
    named: dict[str, str]  # sha256 hex -> name, from FAPIAO_OPERATOR_TOKENS
    file: Path | None = None
    _from_file: dict[str, str] = field(default_factory=dict)
    _seen: tuple[int, int] | None = None
    _looked: float = -1e9

    @classmethod
    def from_settings(cls, settings: Any) -> Operators:
        path = getattr(settings, "operator_tokens_file", None)
        ops = cls(settings.admin_token.get_secret_value(), parse_operator_tokens(settings.operator_tokens),
                  Path(path) if path else None)
        ops.refresh(force=True)
        return ops

    def refresh(self, *, force: bool = False) -> None:
        """Read the file again if it changed. A file gone means no operators from it (fail closed); a file that
        cannot be parsed keeps the last good list and says so (the CLI writes whole files, so that is a hand edit)."""
        if self.file is None:
            return
        now = time.monotonic()
        if not force and now - self._looked < RELOAD_EVERY:
            return
        self._looked = now
        try:
            st = self.file.stat()
        except FileNotFoundError:
            if self._from_file:
                log.warning("operators file %s is gone: its operators are no longer accepted", self.file)
            self._from_file, self._seen = {}, None
            return
        seen = (st.st_mtime_ns, st.st_size)
        if seen == self._seen and not force:
            return
        try:
            entries = read_operator_file(self.file)
        except (OSError, ValueError) as exc:
            log.error("operators file %s not reloaded, the last good list stays: %s", self.file, exc)
            return
        clash = set(entries.values()) & set(self.named.values())
        if clash:
            log.error("operators file %s not reloaded: %s also named in FAPIAO_OPERATOR_TOKENS", self.file,
                      ", ".join(sorted(clash)))
            return
        self._from_file, self._seen = entries, seen

    def identify(self, token: str) -> str | None:
        """The operator this token belongs to, or None (compared in constant time)."""
        if token and hmac.compare_digest(token.encode(), self.admin_token.encode()):
            return SERVICE_OPERATOR
        self.refresh()
        digest = hashlib.sha256(token.encode()).hexdigest()
        found = None
        for known, name in (*self.named.items(), *self._from_file.items()):
            if hmac.compare_digest(digest, known):
                found = name
        return found


def on_behalf(request: Request, operator: str) -> str | None:
    """Whom a service's call was made for: only the services' own token may say so."""
    value = request.headers.get(ON_BEHALF)
    if operator != SERVICE_OPERATOR or value is None or not _BEHALF.fullmatch(value):
        return None
    return value


async def record(scope: MutableMapping[str, Any], status: int, *, schema: str) -> None:
    """Write the audit row of a change an operator made (see the module's doc); never raises (it logs)."""
    state = scope.get("state") or {}
    operator = state.get("operator")
    if operator is None or scope.get("method") in QUIET:
        return
    if status == 503:  # the database (or what the route needed) is down: no change was made, none can be noted
        log.warning("audit: %s %s by %s answered 503, not recorded", scope.get("method"), scope.get("path"), operator)
        return
    app = scope.get("app")
    engine = getattr(getattr(app, "state", None), "engine", None)
    if engine is None:
        return
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
    query = scope.get("query_string", b"").decode("latin-1")
    client = scope.get("client")
    row = {"actor": operator, "behalf": state.get("on_behalf_of"), "method": scope["method"],
           "path": (scope.get("path", "") + (f"?{query}" if query else ""))[:2000], "status": status,
           "client": f"{client[0]}:{client[1]}"[:80] if client else None,
           "agent": headers.get("user-agent", "")[:200] or None, "cid": state.get("correlation_id")}
    try:
        async with asyncio.timeout(AUDIT_TIMEOUT), engine.begin() as conn:
            await conn.execute(_table(schema).insert().values(
                actor=row["actor"], on_behalf_of=row["behalf"], method=row["method"], path=row["path"],
                status=row["status"], client=row["client"], user_agent=row["agent"], correlation_id=row["cid"]))
    except Exception as exc:  # noqa: BLE001 - the change is made; say loudly that its record is missing
        log.error("audit record not written for %s %s by %s: %s", row["method"], row["path"], operator,
                  type(exc).__name__)


def audit_router(schema: str) -> APIRouter:
    """GET /admin/audit for one service (its schema's audit_log)."""
    from shared.http import require_admin  # shared.http records with this module: imported late, not in a cycle

    router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])

    @router.get("/audit")
    async def audit(request: Request, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                    actor: Annotated[str | None, Query(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")] = None,
                    ) -> dict[str, Any]:
        """The changes operators made through this service, newest first: who (and for whom), what, when, from
        where, and the status answered."""
        t = _table(schema)
        query = select(t.c.at, t.c.actor, t.c.on_behalf_of, t.c.method, t.c.path, t.c.status, t.c.client,
                       t.c.user_agent, t.c.correlation_id).order_by(t.c.at.desc(), t.c.id.desc()).limit(limit)
        if actor is not None:
            query = query.where(t.c.actor == actor)
        async with request.app.state.engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return {"items": [{**r, "at": r["at"].isoformat(), "service": schema} for r in rows]}

    return router
