"""Process helpers: spawn a child in its own process group, stop it for sure, find ports; ServiceProcess, the
one way a service process is started, probed, killed, paused and restarted."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import httpx

_PR_SET_PDEATHSIG = 1
REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(count: int) -> list[int]:
    """`count` different free ports (free_port called repeatedly may hand out the same one again)."""
    with contextlib.ExitStack() as held:
        sockets = [held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]


def port_is_open(port: int, host: str = "127.0.0.1", timeout: float = 0.3) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def _die_with_parent() -> None:
    # Test-owned children must not outlive a killed test runner. Note: the signal fires when the
    # spawning *thread* exits, so spawn such children from a long-lived thread.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def spawn(
    argv: Sequence[str],
    *,
    log_path: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    user: str | None = None,
    die_with_parent: bool = False,
) -> subprocess.Popen[bytes]:
    """Start argv in a new session (its own process group), stdout+stderr appended to log_path."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
    try:
        return subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            user=user,
            start_new_session=True,
            preexec_fn=_die_with_parent if die_with_parent else None,
        )
    finally:
        log.close()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); reap it if it is ours.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def stop_group(pid: int, *, timeout: float = 15.0, sig: int = signal.SIGTERM) -> None:
    """Signal the process group led by pid, wait, then SIGKILL whatever is left."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            break
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def wait_until(
    check: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.1,
    alive: Callable[[], bool] | None = None, log_path: Path | None = None,
) -> None:
    """Poll check() until true; raise with the tail of the log when it times out or the child died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if alive is not None and not alive():
            raise RuntimeError(f"{what}: process exited early.{_tail(log_path)}")
        time.sleep(interval)
    raise TimeoutError(f"{what}: not ready after {timeout:.0f}s.{_tail(log_path)}")


def _tail(log_path: Path | None, lines: int = 30) -> str:
    if log_path is None or not log_path.exists():
        return ""
    text = log_path.read_text(errors="replace").splitlines()[-lines:]
    return f"\n--- last lines of {log_path} ---\n" + "\n".join(text)


# --- one service process: started, checked, killed, paused and restarted the same way everywhere -------------

READINESS = ("http", "tcp")


def http_ready(url: str, path: str = "/readyz") -> bool:
    """One probe: does url+path answer 200?"""
    try:
        return httpx.get(f"{url}{path}", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def clean_environ() -> dict[str, str]:
    """This process's environment without FAPIAO_*: for a child that must see only the settings it is given."""
    return {k: v for k, v in os.environ.items() if not k.startswith("FAPIAO_")}


class ServiceProcess:
    """One long-running child (a service, the mail sink, any argv) on a known port, started in a process group
    of its own. The stack (`make up`), the bench, the tests and fault drills all start, probe, kill, pause and
    restart their processes through this class.

    `env` is the child's whole environment. Ready when GET /readyz answers 200 (`readiness="http"`) or when
    the port accepts connections (`"tcp"`). The log (stdout+stderr) is appended to `log_path` across restarts.
    """

    def __init__(self, name: str, argv: Sequence[str], *, port: int, env: Mapping[str, str], log_path: Path,
                 readiness: str = "http", cwd: Path = REPO_ROOT, die_with_parent: bool = False,
                 label: str | None = None) -> None:
        if readiness not in READINESS:
            raise ValueError(f"readiness must be one of {READINESS}, not {readiness!r}")
        self.name = name
        self.argv = tuple(argv)
        self.port = port
        self.env = dict(env)
        self.log_path = log_path
        self.readiness = readiness
        self.cwd = cwd
        self.die_with_parent = die_with_parent
        self.label = label or (f"{name} /readyz" if readiness == "http" else f"{name} on port {port}")
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def service(cls, name: str, *, env: Mapping[str, str], log_dir: Path, port: int | None = None,
                module: str | None = None, log_name: str | None = None, die_with_parent: bool = False,
                ) -> ServiceProcess:
        """`python -m services.<name>` (or `module`) told its port and public URL (FAPIAO_PORT, FAPIAO_PUBLIC_URL)."""
        port = port or free_port()
        url = f"http://127.0.0.1:{port}"
        return cls(name, [sys.executable, "-m", module or f"services.{name}"], port=port,
                   env={**env, "FAPIAO_PORT": str(port), "FAPIAO_PUBLIC_URL": url},
                   log_path=log_dir / f"{log_name or name}.log", die_with_parent=die_with_parent)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        """Started and not exited (a paused process is still running)."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    def ready(self) -> bool:
        """One readiness probe, no waiting."""
        return http_ready(self.url) if self.readiness == "http" else port_is_open(self.port)

    def spawn(self) -> None:
        """Start the process without waiting for it to be ready. Spawn from a long-lived thread when
        die_with_parent is set (see _die_with_parent)."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.proc = spawn(self.argv, log_path=self.log_path, env=self.env, cwd=self.cwd,
                          die_with_parent=self.die_with_parent)

    def wait_ready(self, timeout: float = 60, *, interval: float = 0.1) -> None:
        """Until ready; raises with the log's tail when the process exits first or the time runs out."""
        wait_until(self.ready, timeout=timeout, what=self.label, alive=lambda: self.running,
                   log_path=self.log_path, interval=interval)

    def start(self, timeout: float = 60, *, interval: float = 0.1) -> None:
        """Spawn, then wait until ready."""
        self.spawn()
        self.wait_ready(timeout, interval=interval)

    def kill(self) -> None:
        """kill -9 the whole group: no shutdown hooks, no flushing, no offset commits."""
        if self.running:
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def pause(self) -> None:
        """SIGSTOP the group: the process hangs (open sockets, no progress) until resume()."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after pause()."""
        self._signal(signal.SIGCONT)

    def _signal(self, sig: int) -> None:
        if not self.running:
            raise RuntimeError(f"{self.name} is not running")
        assert self.proc is not None
        os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 20, *, sig: int = signal.SIGTERM) -> None:
        """Ask the group to stop (SIGTERM), SIGKILL what is left after timeout; reap it. Idempotent."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGCONT)  # a paused process cannot act on SIGTERM
            stop_group(self.proc.pid, timeout=timeout, sig=sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)

    def restart(self, timeout: float = 60, **env: str) -> None:
        """Stop, then start again on the same port; `env` (FAPIAO_X="…") changes settings for this and later
        starts."""
        self.stop()
        self.env.update(env)
        self.start(timeout)

    def with_env(self, *, log_path: Path | None = None, **env: str) -> ServiceProcess:
        """A new process, not started, like this one (same command and port) with these settings over its own;
        `log_path`: a log file of its own."""
        return ServiceProcess(self.name, self.argv, port=self.port, env={**self.env, **env},
                              log_path=log_path or self.log_path, readiness=self.readiness, cwd=self.cwd,
                              die_with_parent=self.die_with_parent, label=self.label)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def record(self) -> dict[str, object]:
        """What the stack keeps of it in stack.json (enough to find, signal and stop it from another command)."""
        return {"pid": self.pid, "marker": self.marker, "ports": [self.port], "log": str(self.log_path)}

    @property
    def marker(self) -> str:
        """A piece of the command line that tells this process from another that got its pid later."""
        return self.argv[2] if self.argv[1:2] == ("-m",) and len(self.argv) > 2 else self.argv[0]

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "not running"
        return f"<ServiceProcess {self.name} {self.url} {state}>"
