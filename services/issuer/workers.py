"""The issuer as several processes: FAPIAO_API_WORKERS=N (N > 1) makes `python -m services.issuer` a small
supervisor that

- migrates once (when FAPIAO_AUTO_MIGRATE is on), before any child starts;
- binds the API's port once and hands the listening socket to N API workers (`process_role=api`), which
  accept from it in turn (the kernel spreads connections over them; no balancer in between);
- starts one background process (`process_role=background`, on `background_port`, default port + 9) that runs
  what must not run N times: the outbox relay (the advisory lock would elect one anyway; here no API worker
  even competes), the status-feed consumer, the self-check, the form-expiry alerts and the idempotency purge;
- gives all of them one PROMETHEUS_MULTIPROC_DIR, so /metrics on the API port shows the whole service (the
  relay's counters included) whichever worker answers;
- starts a child again when it dies (0.5 s, then doubling up to 30 s while it keeps dying; back to 0.5 s once
  it has run a minute), and on SIGTERM/SIGINT stops them all (SIGTERM, then SIGKILL after the grace period).

Every child is an ordinary `python -m services.issuer` told its role through the environment, set to die with
the supervisor (PR_SET_PDEATHSIG), so a kill -9 of the supervisor alone leaves nothing behind either; the
stack, the drills and the tests kill the whole process group anyway.

One API worker (the default) keeps everything in one process, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import multiprocess

from services.issuer.settings import IssuerSettings
from shared.logging import configure_logging

__all__ = ["Child", "background_port", "child_env", "supervise"]

log = logging.getLogger("services.issuer.workers")
_PR_SET_PDEATHSIG = 1
FIRST_RESTART_DELAY = 0.5
LONGEST_RESTART_DELAY = 30.0
HEALTHY_AFTER = 60.0  # a child that ran this long starts again after FIRST_RESTART_DELAY when it dies


def background_port(settings: IssuerSettings) -> int:
    return settings.background_port or settings.port + 9


def child_env(settings: IssuerSettings, *, role: str, metrics_dir: str, fd: int | None = None,
              index: int = 0, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """A child's environment: this process's, plus its role (and socket), migrations off (done once here)."""
    env = dict(os.environ if base is None else base)
    env.update({"FAPIAO_PROCESS_ROLE": role, "FAPIAO_AUTO_MIGRATE": "false", "PROMETHEUS_MULTIPROC_DIR": metrics_dir,
                "FAPIAO_WORKER_INDEX": str(index)})
    env.pop("FAPIAO_LISTEN_FD", None)
    if fd is not None:
        env["FAPIAO_LISTEN_FD"] = str(fd)
    if role == "background":
        env["FAPIAO_PORT"] = str(background_port(settings))
    return env


def _die_with_supervisor() -> None:  # runs in the child between fork and exec
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class Child:
    """One child process the supervisor keeps running."""

    name: str
    env: dict[str, str]
    pass_fds: tuple[int, ...] = ()
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    delay: float = FIRST_RESTART_DELAY
    due: float = 0.0  # when a dead child is started again
    restarts: int = 0

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "services.issuer"], env=self.env, pass_fds=self.pass_fds,
                                     stdin=subprocess.DEVNULL, preexec_fn=_die_with_supervisor)
        self.started = time.monotonic()
        log.info("issuer %s started (pid %d)", self.name, self.proc.pid)

    def exited(self) -> int | None:
        """The exit code once the child has exited (reaped), else None."""
        return None if self.proc is None else self.proc.poll()


def _bind(settings: IssuerSettings) -> socket.socket:
    sock = socket.create_server((settings.host, settings.port), backlog=2048, reuse_port=False)
    sock.set_inheritable(True)
    return sock


def supervise(settings: IssuerSettings, *, migrate: Callable[[IssuerSettings], Coroutine[Any, Any, None]],
              grace: float = 10.0) -> int:
    """Run the API workers and the background process until SIGTERM/SIGINT; see the module's docstring."""
    configure_logging(service="issuer", level=settings.log_level, json_output=settings.log_json)
    if settings.auto_migrate:
        asyncio.run(migrate(settings))
    metrics_dir = tempfile.mkdtemp(prefix="fapiao-issuer-metrics-")
    sock = _bind(settings)
    fd = sock.fileno()
    children = [Child("background", child_env(settings, role="background", metrics_dir=metrics_dir))]
    children += [Child(f"api-{i}", child_env(settings, role="api", metrics_dir=metrics_dir, fd=fd, index=i),
                       pass_fds=(fd,)) for i in range(1, settings.workers + 1)]
    stop: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        stop.append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("issuer: %d API workers on %s:%d, background on port %d", settings.workers, settings.host,
             settings.port, background_port(settings))
    try:
        for child in children:
            child.start()
        while not stop:
            _keep_alive(children, metrics_dir)
            time.sleep(0.2)
    finally:
        _stop_all(children, grace)
        sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def _keep_alive(children: list[Child], metrics_dir: str) -> None:
    now = time.monotonic()
    for child in children:
        if child.proc is None:
            if now >= child.due:
                child.start()
                child.restarts += 1
            continue
        code = child.exited()
        if code is None:
            continue
        _mark_dead(child.proc.pid, metrics_dir)
        ran = now - child.started
        child.delay = FIRST_RESTART_DELAY if ran >= HEALTHY_AFTER else min(child.delay * 2, LONGEST_RESTART_DELAY)
        child.due = now + child.delay
        log.error("issuer %s (pid %d) exited with %s after %.1f s; starting it again in %.1f s (restart %d)",
                  child.name, child.proc.pid, code, ran, child.due - now, child.restarts + 1)
        child.proc = None


def _mark_dead(pid: int, metrics_dir: str) -> None:
    """Leave a dead child's live gauges out of /metrics (prometheus_client's multiprocess clean-up)."""
    with contextlib.suppress(OSError):
        multiprocess.mark_process_dead(pid, metrics_dir)


def _stop_all(children: list[Child], grace: float) -> None:
    running = [c.proc for c in children if c.proc is not None and c.proc.poll() is None]
    for proc in running:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in running:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    for proc in running:
        if proc.poll() is None:
            log.error("issuer child pid %d did not stop within %.0f s; killing it", proc.pid, grace)
            proc.kill()
            proc.wait(timeout=5)
