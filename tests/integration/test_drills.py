"""The short drill subset `make test` runs: kill -9 sync, a store outage, a flaky store and a restore from a backup
under load, each against its own services on private PostgreSQL and Kafka, through the same runner and checker as
`make chaos`. Shortened copies of drills/kill-sync.toml, store-outage.toml, store-flaky.toml and
restore-under-load.toml (one process per service and one broker) so the four fit in about 6 minutes."""

from __future__ import annotations

import json
import re
import tomllib
from collections import Counter
from pathlib import Path

import pytest

from fapiao.drill.main import run_many
from fapiao.drill.scenario import DRILLS_DIR, parse_scenario

SHORT = {
    "kill-sync": {"load": {"rate": 10, "duration": "15s"},
                  "steps": [{"at": "5s", "action": "kill", "target": "sync"},
                            {"at": "8s", "action": "start", "target": "sync"}]},
    "store-outage": {"load": {"rate": 10, "duration": "25s"},
                     "steps": [{"at": "5s", "action": "store_faults", "outage": True},
                               {"at": "20s", "action": "store_clear"}]},
    "store-flaky": None,  # as shipped, shortened below
    "restore-under-load": {"load": {"rate": 8, "duration": "20s"}, "replicas": {}, "kafka_brokers": 1,
                           "steps": [{"at": "6s", "action": "backup"}, {"at": "13s", "action": "restore"}]},
}


def short(name: str) -> object:
    data = tomllib.loads((DRILLS_DIR / f"{name}.toml").read_text())
    if SHORT[name] is not None:
        data.update(SHORT[name])
    else:
        data["load"] = {"rate": 10, "duration": "20s"}
        data["steps"][1]["at"] = "15s"
    data["settle"] = "90s"
    return parse_scenario(data, where=f"{name} (short)", default_name=name)


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_kill_sync_store_outage_flaky_store_and_a_restore_lose_nothing(tmp_path: Path) -> None:
    lines: list[str] = []
    run = run_many([short(n) for n in SHORT], seed=7, rate=None, duration=None, settle=None,  # type: ignore[misc]
                   report_dir=tmp_path, progress=lines.append)
    results = {r["scenario"]: r for r in run["results"]}
    assert set(results) == set(SHORT)
    for name, r in results.items():
        v = r["verdict"]
        assert r["error"] is None, (name, r["error"], lines[-30:])
        assert v["acknowledged"] >= 100, (name, v)
        assert r["passed"], (name, {k: v[k] for k in ("lost", "content_mismatch", "duplicate_effects",
                                                      "unexplained", "stuck_unhandled", "not_converged")})
        assert v["statuses"] == {"confirmed": v["acknowledged"]}, (name, v["statuses"])
        assert all(f["ok"] for f in r["faults"]), (name, r["faults"])
    assert "<svg" in Path(run["reports"]["html"]).read_text()
    logged = [json.loads(line) for line in Path(run["requests_file"]).read_text().splitlines()]
    assert Counter(x["scenario"] for x in logged) == {n: results[n]["verdict"]["requests"] for n in SHORT}
    assert all(x["status"] in (200, 201) and x["invoice_id"] for x in logged if x["scenario"] == "kill-sync")
    # The restore lost invoices the authority held; each was reported as an orphan before the ERP re-sent it.
    restore = results["restore-under-load"]
    assert restore["verdict"]["unreported_after_restore"] == []
    note = restore["faults"][1]["note"]
    held = re.search(r"(\d+) lost by the restore and held by the authority \((\d+) reported as orphans", note)
    assert held and int(held[1]) > 0 and held[1] == held[2], note
    resent = re.search(r"(\d+) re-sent by the ERP", note)
    assert resent and int(resent[1]) >= int(held[1]), note


STACK_DRILL = """
description = "written for this test: PostgreSQL of a make up stack killed and started again"
settle = "90s"
[load]
rate = 5
duration = "14s"
[[steps]]
at = "3s"
action = "kill"
target = "postgres"
[[steps]]
at = "9s"
action = "start"
target = "postgres"
"""


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_make_up_restarts_what_dies_restart_leaves_the_rest_and_a_drill_runs_against_it(stack_home: Path) -> None:
    """`make up` on free ports in a state dir of its own: a kill -9'd service and a kill -9'd broker come back (the
    supervisor, with the restart counted in `status`); `fapiao stack restart` restarts one service while Kafka keeps
    its pid; `fapiao drill run --stack` kills the stack's PostgreSQL, which the supervisor leaves down (held) until
    the drill starts it, and its checker passes."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from fapiao.infra.procs import free_port, http_ready, port_is_open

    names = ("ISSUER", "SYNC", "RECONCILER", "NOTIFIER", "TAXSTORE", "KAFKA", "KAFKA_CONTROLLER", "PG", "SMTP")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAPIAO_")}
    env.update({f"FAPIAO_{n}_PORT": str(free_port()) for n in names}, FAPIAO_STACK_DIR=str(stack_home / "run"))
    stack = [sys.executable, "-m", "fapiao.stack"]

    def state() -> dict:
        return json.loads((stack_home / "run" / "stack.json").read_text())

    def status() -> str:
        return subprocess.run([*stack, "status"], env=env, capture_output=True, text=True, timeout=60).stdout

    try:
        up = subprocess.run([*stack, "up"], env=env, capture_output=True, text=True, timeout=180)
        assert up.returncode == 0, up.stdout + up.stderr
        time.sleep(3)  # the consumers join their groups after readiness
        for log in sorted((stack_home / "run" / "logs").glob("*.log")):  # a quiet first start: nothing alarming
            text = log.read_text(errors="replace")
            assert "ERROR" not in text and "Traceback" not in text, f"{log.name}:\n{text[-3000:]}"
        kafka_pid = state()["processes"]["kafka"]["pid"]
        sync = state()["processes"]["sync"]
        os.killpg(sync["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            now = state()["processes"]["sync"]
            if now["pid"] != sync["pid"] and http_ready(f"http://127.0.0.1:{now['ports'][0]}"):
                break
            time.sleep(0.5)
        supervisor_log = stack_home / "run" / "logs" / "supervisor.log"
        assert state()["processes"]["sync"]["restarts"] == 1, supervisor_log.read_text()
        assert "restarts 1" in next(line for line in status().splitlines() if line.startswith("sync"))
        r = subprocess.run([*stack, "restart", "notifier"], env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "notifier is ready" in r.stdout, r.stdout + r.stderr
        assert state()["processes"]["notifier"]["restarts"] == 1
        assert state()["processes"]["kafka"]["pid"] == kafka_pid
        assert subprocess.run([*stack, "status"], env=env, capture_output=True, timeout=60).returncode == 0

        os.killpg(kafka_pid, signal.SIGKILL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (state()["processes"]["kafka"]["pid"] == kafka_pid
                                               or not port_is_open(state()["processes"]["kafka"]["ports"][0])):
            time.sleep(0.5)
        supervisor_log = (stack_home / "run" / "logs" / "supervisor.log").read_text()
        assert state()["processes"]["kafka"]["restarts"] == 1, supervisor_log
        assert "kafka started again" in supervisor_log

        scenario = stack_home / "pg-on-stack.toml"
        scenario.write_text(STACK_DRILL)
        drill = subprocess.run([sys.executable, "-m", "fapiao.drill.main", "run", "--stack", str(scenario),
                                "--report-dir", str(stack_home / "reports"), "--json"],
                               env=env, capture_output=True, text=True, timeout=240)
        out = drill.stdout + drill.stderr
        assert drill.returncode == 0, out[-4000:]
        run = json.loads(next(line for line in drill.stdout.splitlines() if line.startswith("{")))
        (result,) = run["results"]
        assert result["passed"] and result["verdict"]["acknowledged"] >= 40, result["verdict"]
        assert result["verdict"]["statuses"] == {"confirmed": result["verdict"]["acknowledged"]}
        assert [f["ok"] for f in result["faults"]] == [True, True], result["faults"]
        assert run["where"].startswith("make up stack")
        supervisor_log = (stack_home / "run" / "logs" / "supervisor.log").read_text()
        assert "postgres" not in supervisor_log, supervisor_log  # held down: the drill's start, not the supervisor's
        assert state()["processes"]["postgres"]["restarts"] == 1 and "held" not in state()["processes"]["postgres"]
        assert subprocess.run([*stack, "status"], env=env, capture_output=True, timeout=60).returncode == 0
    finally:
        subprocess.run([*stack, "down"], env=env, capture_output=True, timeout=120)
