"""fapiao.infra.ServiceProcess, the one launcher of the stack, the bench, the tests and fault drills: started
until ready, killed with -9, paused and resumed, restarted with other settings, its log kept across starts.
A tiny HTTP child stands in for a service (it answers /readyz like one)."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fapiao.infra import ServiceProcess, free_port

CHILD = textwrap.dedent("""
    import http.server, os, sys
    print("flavour", os.environ.get("FLAVOUR"), flush=True)
    if os.environ.get("FAIL"):
        sys.exit("cannot start: " + os.environ["FAIL"])
    class Ready(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/readyz" else 404)
            self.end_headers()
        def log_message(self, *args):
            pass
    http.server.HTTPServer(("127.0.0.1", int(os.environ["FAPIAO_PORT"])), Ready).serve_forever()
""")


def child(tmp_path: Path, readiness: str = "http", **env: str) -> ServiceProcess:
    port = free_port()
    return ServiceProcess("child", [sys.executable, "-c", CHILD], port=port, readiness=readiness,
                          env={**os.environ, "FAPIAO_PORT": str(port), "FLAVOUR": "plain", **env},
                          log_path=tmp_path / "child.log", die_with_parent=True)


def state(pid: int) -> str:
    """The process state letter from /proc (R, S, T for stopped, ...)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def settles(pid: int, stopped: bool) -> bool:
    """Signals arrive asynchronously: wait (briefly) for the process to be stopped, or not."""
    deadline = time.monotonic() + 5
    while (state(pid) == "T") != stopped:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture
def proc(tmp_path: Path):  # type: ignore[no-untyped-def]
    p = child(tmp_path)
    yield p
    p.stop(5)


def test_started_until_ready_then_killed_with_9(proc: ServiceProcess) -> None:
    proc.start(20)
    assert proc.running and proc.ready() and proc.pid is not None
    proc.kill()
    assert not proc.running and proc.returncode == -signal.SIGKILL
    assert not proc.ready()


def test_paused_and_resumed(proc: ServiceProcess) -> None:
    proc.start(20)
    proc.pause()
    assert settles(proc.pid, stopped=True) and proc.running  # type: ignore[arg-type]
    proc.resume()
    assert settles(proc.pid, stopped=False) and proc.ready()  # type: ignore[arg-type]
    proc.pause()
    proc.stop(5)  # a paused process is stopped too (it is woken to take the SIGTERM)
    assert not proc.running


def test_restarted_on_its_port_with_other_settings_and_one_log(proc: ServiceProcess) -> None:
    proc.start(20)
    first = proc.pid
    proc.restart(20, FLAVOUR="spicy")
    assert proc.running and proc.pid != first and proc.ready()
    assert proc.env["FLAVOUR"] == "spicy"
    assert proc.log_text().splitlines() == ["flavour plain", "flavour spicy"]
    assert proc.log_tail(1) == "flavour spicy"


def test_a_copy_with_other_settings_takes_the_port_and_keeps_its_own_log(proc: ServiceProcess,
                                                                          tmp_path: Path) -> None:
    other = proc.with_env(log_path=tmp_path / "other.log", FLAVOUR="other")
    assert (other.port, other.argv) == (proc.port, proc.argv) and proc.env["FLAVOUR"] == "plain"
    try:
        other.start(20)
        assert other.ready() and other.log_text() == "flavour other\n" and proc.log_text() == ""
    finally:
        other.stop(5)


def test_a_process_that_exits_early_fails_the_start_with_its_log(tmp_path: Path) -> None:
    p = child(tmp_path, FAIL="no database")
    with pytest.raises(RuntimeError, match="process exited early") as info:
        p.start(20)
    assert "cannot start: no database" in str(info.value)
    assert not p.running and p.returncode == 1


def test_tcp_readiness_and_the_stack_record(tmp_path: Path) -> None:
    p = child(tmp_path, readiness="tcp")
    try:
        p.start(20)
        assert p.ready()
        assert p.record() == {"pid": p.pid, "marker": sys.executable, "ports": [p.port], "log": str(p.log_path)}
    finally:
        p.stop(5)
    with pytest.raises(RuntimeError, match="not running"):
        p.pause()
