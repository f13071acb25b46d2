"""`fapiao drill list | run NAME… | all` (also `python -m fapiao.drill.main`, and `make chaos`).

Without --stack: a private stack (PostgreSQL, Kafka, the five services, Toxiproxy when a scenario needs it) under
.test-artifacts/, stopped at the end, also on Ctrl-C. With --stack: the running `make up` stack, with its own
settings, a tenant of its own per scenario; what a drill kills it starts again; network scenarios need the private
stack. Exit 0 when every scenario passed its checker, 1 when one failed (the violations name the invoices), 2 on a
usage error (an unknown scenario, a wrong scenario file).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer

from fapiao.drill.report import table, violations_text, write_reports
from fapiao.drill.scenario import DRILLS_DIR, Scenario, ScenarioError, catalogue, load_scenario
from fapiao.infra.kafka import REPO_ROOT

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Fault drills: scenarios in drills/*.toml, a workload, faults on a schedule, and a checker.")

ARTIFACTS = REPO_ROOT / ".test-artifacts"
# The verdict's violation lists (Verdict.as_dict); any entry in one fails the scenario.
VIOLATION_KEYS = ("lost", "content_mismatch", "duplicate_effects", "unexplained", "stuck_unhandled", "not_converged",
                  "unreported_after_restore")


def _echo(msg: str) -> None:
    typer.echo(msg)
    sys.stdout.flush()


def _pick(names: list[str], directory: Path) -> list[Scenario]:
    try:
        cat = catalogue(directory)
    except ScenarioError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    picked = []
    for name in names:
        if name == "all":
            picked += list(cat.values())
        elif name.endswith(".toml") and Path(name).exists():
            try:
                picked.append(load_scenario(Path(name)))
            except ScenarioError as exc:
                typer.echo(f"error: {exc}", err=True)
                raise typer.Exit(2) from None
        elif name in cat:
            picked.append(cat[name])
        else:
            typer.echo(f"error: no scenario {name!r} in {directory}; `fapiao drill list` shows them", err=True)
            raise typer.Exit(2)
    if not picked:
        typer.echo(f"error: no scenario files (*.toml) in {directory}", err=True)
        raise typer.Exit(2)
    return picked


def failed(result: dict[str, Any]) -> bool:
    """A scenario failed: its checker found a violation, one of its steps failed, or it did not run to the end."""
    verdict = result.get("verdict") or {}
    return (not result.get("passed") or not verdict.get("passed") or bool(result.get("error"))
            or any(verdict.get(key) for key in VIOLATION_KEYS)
            or any(not f.get("ok", True) for f in result.get("faults", [])))


def exit_code(results: list[dict[str, Any]]) -> int:
    """What `fapiao drill run` exits with: 0 when every scenario passed, 1 when any failed (see failed()), 2 when
    nothing ran (a run that proves nothing is a usage error, like an unknown scenario)."""
    if not results:
        return 2
    return 1 if any(failed(r) for r in results) else 0


@app.command("list")
def list_(directory: Path = typer.Option(DRILLS_DIR, "--dir", help="where the scenario files are")) -> None:
    """The scenarios, with what each does."""
    for s in _pick(["all"], directory):
        name = s.name
        steps = "; ".join(f"{st.at:g}s {st.label()}" for st in s.steps) or "no faults"
        net = " [network]" if s.network else ""
        _echo(f"{name:24s} {s.load.rate:g}/s for {s.load.duration:g}s{net}: {steps}")


def run_many(scenarios: list[Scenario], *, seed: int, rate: float | None, duration: float | None,
             settle: float | None, report_dir: Path, progress: Any = _echo) -> dict[str, Any]:
    """Start the private infrastructure once, run each scenario on services of its own, write the reports."""
    from fapiao.drill.stack import DrillInfra, ScenarioStack

    started = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    workdir = ARTIFACTS / f"drills-{started.replace(':', '')}-{os.getpid()}"
    # One infrastructure for the run: a Kafka cluster when any scenario asks for one (kafka_brokers).
    infra = DrillInfra(workdir, brokers=max((s.kafka_brokers for s in scenarios), default=1))

    def stack_for(s: Scenario) -> ScenarioStack:
        if not infra.healthy():  # an earlier scenario's fault must not fail the ones after it
            progress("  PostgreSQL or Kafka is down after the last scenario; starting it again")
            infra.spawner.submit(infra.start_server, "postgres").result()
            infra.spawner.submit(infra.start_server, "kafka").result()
        stack = ScenarioStack(infra, s.name, s.settings, s.network, replicas=s.replicas)
        try:
            infra.spawner.submit(stack.start_all).result()
        except BaseException:
            stack.stop()
            raise
        return stack

    t0 = time.monotonic()
    try:
        progress(f"starting PostgreSQL and Kafka under {workdir} …")
        infra.spawner.submit(infra.start, network=any(s.network for s in scenarios)).result()
        results = _each(scenarios, stack_for, seed=seed, rate=rate, duration=duration, settle=settle,
                        progress=progress)
    finally:
        for problem in infra.stop():
            progress(f"warning: stopping {problem}")
    return _finish(started, seed, "private stack (no Docker)", t0, results, report_dir)


def run_on_stack(scenarios: list[Scenario], *, seed: int, rate: float | None, duration: float | None,
                 settle: float | None, report_dir: Path, progress: Any = _echo) -> dict[str, Any]:
    """Run each scenario against the running `make up` stack, each with a tenant of its own."""
    from fapiao import stack as local_stack
    from fapiao.drill.stack import RunningStack

    def stack_for(s: Scenario) -> RunningStack:
        if s.settings:
            progress(f"  note: [settings] for {', '.join(sorted(s.settings))} do not apply to a running stack; "
                     "its services keep the settings `make up` gave them")
        if s.replicas or s.kafka_brokers > 1:
            progress("  note: replicas and kafka_brokers do not apply to a running stack: start it with "
                     "FAPIAO_REPLICAS and FAPIAO_KAFKA_BROKERS")
        _private_only(s)
        return RunningStack(s.name)

    started = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    t0 = time.monotonic()
    results = _each(scenarios, stack_for, seed=seed, rate=rate, duration=duration, settle=settle, progress=progress)
    return _finish(started, seed, f"make up stack in {local_stack.state_dir()}", t0, results, report_dir)


def run_on_compose(scenarios: list[Scenario], *, seed: int, rate: float | None, duration: float | None,
                   settle: float | None, report_dir: Path, progress: Any = _echo) -> dict[str, Any]:
    """From the compose `drill` container: process faults through the Docker API (fapiao/drill/compose.py)."""
    from fapiao.drill.compose import ComposeStack

    def stack_for(s: Scenario) -> ComposeStack:
        if s.settings:
            progress(f"  note: [settings] for {', '.join(sorted(s.settings))} do not apply to a compose stack")
        _private_only(s)
        return ComposeStack(s.name)

    started = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    t0 = time.monotonic()
    results = _each(scenarios, stack_for, seed=seed, rate=rate, duration=duration, settle=settle, progress=progress)
    return _finish(started, seed, "docker compose stack (Docker API)", t0, results, report_dir)


def _private_only(s: Scenario) -> None:
    from fapiao.drill.stack import PRIVATE_ONLY

    if any(step.action in ("backup", "restore") for step in s.steps):
        raise RuntimeError(PRIVATE_ONLY)


def _each(scenarios: list[Scenario], stack_for: Any, *, seed: int, rate: float | None, duration: float | None,
          settle: float | None, progress: Any) -> list[dict[str, Any]]:
    from fapiao.drill.runner import run_scenario

    results: list[dict[str, Any]] = []
    for s in scenarios:
        progress(f"\n== {s.name}: {s.description}")
        stack = None
        try:
            stack = stack_for(s)
            res = asyncio.run(run_scenario(stack, s, seed=seed, rate=rate, duration=duration, settle=settle,
                                           progress=progress))
            results.append(res.as_dict())
        except Exception as exc:  # noqa: BLE001 - the scenario fails, the others still run
            results.append(_errored(s, f"{type(exc).__name__}: {exc}"))
        finally:
            if stack is not None:
                for problem in stack.stop():
                    progress(f"warning: {problem}")
        r = results[-1]
        progress(f"== {s.name}: {'PASS' if r['passed'] else 'FAIL'}")
        if not r["passed"]:
            progress(violations_text([r]))
    return results


def _finish(started: str, seed: int, where: str, t0: float, results: list[dict[str, Any]],
            report_dir: Path) -> dict[str, Any]:
    run = {"started": started, "seed": seed, "where": where, "duration_s": round(time.monotonic() - t0, 1),
           "results": results}
    js, page = write_reports(run, report_dir)
    run["reports"] = {"json": str(js), "html": str(page)}
    return run


def _errored(s: Scenario, error: str) -> dict[str, Any]:
    from fapiao.drill.checker import Verdict

    return {"scenario": s.name, "description": s.description, "passed": False, "error": error, "duration_s": 0,
            "offered_rate": s.load.rate, "drain_rate": None, "verdict": Verdict().as_dict(), "faults": [],
            "windows": [], "samples": [], "extra": {}}


@app.command("run")
def run(names: list[str] = typer.Argument(..., help="scenario names, a path to a .toml file, or `all`"),
        rate: float = typer.Option(None, help="invoices per second (default: the scenario's)"),
        duration: float = typer.Option(None, help="seconds of load (default: the scenario's)"),
        settle: float = typer.Option(None, help="longest convergence wait after the load, seconds"),
        seed: int = typer.Option(1, help="seeds the workload's random choices"),
        report_dir: Path = typer.Option(REPO_ROOT / "drill-results", "--report-dir"),
        directory: Path = typer.Option(DRILLS_DIR, "--dir", help="where the scenario files are"),
        stack: bool = typer.Option(False, "--stack", help="against the running `make up` stack (see docs/drills.md)"),
        compose: bool = typer.Option(False, "--compose", help="against a docker compose stack, from its `drill` "
                                     "container (Docker API; see docs/drills.md)"),
        as_json: bool = typer.Option(False, "--json", help="print the run as JSON")) -> None:
    """Run scenarios; exits 1 naming the invoices when any checker finds a violation."""
    scenarios = _pick(names, directory)
    if stack and compose:
        typer.echo("error: --stack and --compose exclude each other", err=True)
        raise typer.Exit(2)
    if stack:
        network = [s.name for s in scenarios if s.network]
        if network and names != ["all"]:
            typer.echo(f"error: {', '.join(network)} need(s) Toxiproxy between the services, which a `make up` stack "
                       "does not have; run them without --stack (a private stack)", err=True)
            raise typer.Exit(2)
        if network:
            _echo(f"skipping {', '.join(network)} (network faults need the private stack: run without --stack)")
            scenarios = [s for s in scenarios if not s.network]
        if not scenarios:
            typer.echo("error: nothing left to run against a `make up` stack", err=True)
            raise typer.Exit(2)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    runner = run_on_stack if stack else run_on_compose if compose else run_many
    result = runner(scenarios, seed=seed, rate=rate, duration=duration, settle=settle, report_dir=report_dir)
    if as_json:
        typer.echo(json.dumps(result, default=str))
    _echo("\n" + table(result["results"]))
    bad = violations_text(result["results"])
    if bad:
        _echo("\n" + bad)
    _echo(f"\nreports: {result['reports']['html']} and {result['reports']['json']}")
    if code := exit_code(result["results"]):
        raise typer.Exit(code)


@app.command("all")
def all_(rate: float = typer.Option(None), duration: float = typer.Option(None), settle: float = typer.Option(None),
         seed: int = typer.Option(1), report_dir: Path = typer.Option(REPO_ROOT / "drill-results", "--report-dir"),
         ) -> None:
    """The whole catalogue (what `make chaos` runs)."""
    run(["all"], rate=rate, duration=duration, settle=settle, seed=seed, report_dir=report_dir,
        directory=DRILLS_DIR, stack=False, compose=False, as_json=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
