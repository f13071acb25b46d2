"""What a drill run ends with, without a stack: the exit code `fapiao drill run` derives from the scenarios' results
(0 all passed, 1 any violation or failed step, 2 a usage error), and the HTML report's shaded fault windows."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fapiao.drill.checker import Answer, IssuerInvoice, Observation, Sample, StoredInvoice, Verdict, check
from fapiao.drill.main import VIOLATION_KEYS, app, exit_code
from fapiao.drill.report import html_report
from fapiao.drill.runner import ScenarioResult, fault_windows
from fapiao.drill.scenario import parse_scenario

CONTENT = {"total": "113.00", "total_amount": "100.00", "total_tax": "13.00"}

SCENARIO = {
    "description": "windows of every kind",
    "load": {"rate": 5, "duration": "40s"},
    "steps": [{"at": "5s", "action": "kill", "target": "sync"}, {"at": "8s", "action": "start", "target": "sync"},
              {"at": "10s", "action": "store_faults", "outage": True}, {"at": "22.5s", "action": "store_clear"},
              {"at": "12s", "action": "db_cut", "target": "issuer"},
              {"at": "18s", "action": "db_restore", "target": "issuer"},
              {"at": "25s", "action": "restart", "target": "notifier"},
              {"at": "30s", "action": "pause", "target": "reconciler"}],  # never resumed: shaded to the load's end
}


def observation(n: int = 3) -> Observation:
    answers = [Answer(f"N{i:04d}", float(i), CONTENT, 201, f"id-{i}", i + 0.1) for i in range(n)]
    stored = [StoredInvoice(f"N{i:04d}", dict(CONTENT)) for i in range(n)]
    issuer = [IssuerInvoice(f"id-{i}", f"N{i:04d}", "confirmed", None, None, None) for i in range(n)]
    samples = [Sample(1.0, {"submitted": n}, 1.0), Sample(50.0, {"confirmed": n}, 0.0)]
    return Observation(answers, stored, issuer, cases=[], alerts=[], samples=samples, faults_end=30.0, load_end=40.0)


def result(verdict: Verdict, *, faults: list[dict[str, Any]] | None = None, error: str | None = None,
           name: str = "mine") -> dict[str, Any]:
    """A scenario's result as the runner hands it to the CLI (ScenarioResult.as_dict)."""
    scenario = parse_scenario(SCENARIO, where="test", default_name=name)
    samples = [Sample(1.0, {"submitted": 3}, 1.0), Sample(50.0, {"confirmed": 3}, 0.0)]
    return ScenarioResult(scenario, verdict, 0.0, 55.0, samples, faults or [], fault_windows(scenario),
                          offered_rate=5.0, error=error).as_dict()


def test_every_scenario_passing_exits_0() -> None:
    healthy = check(observation())
    assert healthy.passed
    assert exit_code([result(healthy, name="a"), result(healthy, name="b")]) == 0


def test_one_lost_invoice_in_any_scenario_exits_1() -> None:
    obs = observation()
    obs.stored = obs.stored[1:]
    lost = check(obs)
    assert lost.lost
    assert exit_code([result(check(observation()), name="a"), result(lost, name="b")]) == 1


@pytest.mark.parametrize("kind", VIOLATION_KEYS)
def test_each_kind_of_violation_exits_1(kind: str) -> None:
    """Every violation list of the verdict counts, also one a verdict reported without flipping `passed` (a report
    edited or written by an older version)."""
    r = result(check(observation()))
    assert exit_code([r]) == 0
    r["verdict"][kind] = ["N0001: doctored"]
    assert exit_code([r]) == 1
    assert set(VIOLATION_KEYS) <= set(r["verdict"]), "VIOLATION_KEYS names a list Verdict.as_dict does not have"


def test_every_violation_the_checker_knows_is_one_the_exit_code_counts() -> None:
    names = {"lost": "lost", "content mismatch": "content_mismatch", "duplicate effects": "duplicate_effects",
             "unexplained": "unexplained", "stuck without one case and one alert": "stuck_unhandled",
             "not converged": "not_converged", "missing after the restore, never reported": "unreported_after_restore"}
    v = Verdict(**{f: ["x"] for f in ("lost", "mismatched", "duplicates", "unexplained", "stuck_unhandled",
                                      "not_converged", "unreported_after_restore")})
    assert {names[k] for k in v.violations} == set(VIOLATION_KEYS)


def test_a_failed_step_or_a_scenario_that_errored_exits_1_even_with_a_clean_verdict() -> None:
    clean = check(observation())
    step = [{"at": 12.0, "label": "db_cut issuer", "ok": False, "error": "RuntimeError: no proxy"}]
    assert exit_code([result(clean, faults=step)]) == 1
    assert exit_code([result(clean, error="RuntimeError: the issuer never came up")]) == 1
    assert exit_code([result(clean, faults=[{"at": 12.0, "label": "db_cut issuer", "ok": True}])]) == 0


def test_nothing_run_is_a_usage_error() -> None:
    assert exit_code([]) == 2


@pytest.mark.parametrize("args", [
    ["run", "no-such-scenario"],                      # an unknown name
    ["run", "--stack", "--compose", "baseline"],      # options that exclude each other
    ["run", "--rate", "fast", "baseline"],            # not a number
    ["run"],                                          # no scenario named
    ["run", "--stack", "db-cut"],                     # a network scenario on a stack without Toxiproxy
])
def test_usage_errors_exit_2_before_anything_starts(args: list[str]) -> None:
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 2, out.output


def test_a_wrong_scenario_file_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[steps]]\nat = "1s"\naction = "db_cut"\ntarget = "taxstore"\n')
    out = CliRunner().invoke(app, ["run", str(bad)])
    assert out.exit_code == 2 and "steps[0].target" in out.output, out.output
    empty = tmp_path / "none"
    empty.mkdir()
    assert CliRunner().invoke(app, ["run", "all", "--dir", str(empty)]).exit_code == 2


class _Rects(HTMLParser):
    """The page's shaded fault windows: each `rect` of class fault-window, with the text of its `title`."""

    def __init__(self) -> None:
        super().__init__()
        self.windows: list[dict[str, Any]] = []
        self._open: dict[str, Any] | None = None
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "rect" and a.get("class") == "fault-window":
            self._open = {"label": "", "from": float(a["data-from"] or "nan"), "to": float(a["data-to"] or "nan"),
                          "x": float(a["x"] or "nan"), "width": float(a["width"] or "nan")}
        elif tag == "title" and self._open is not None:
            self._in_title = True

    def handle_data(self, data: str) -> None:
        if self._in_title and self._open is not None:
            self._open["label"] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag == "rect" and self._open is not None:
            self.windows.append(self._open)
            self._open = None


def _windows(page: str) -> list[dict[str, Any]]:
    parser = _Rects()
    parser.feed(page)
    return parser.windows


def test_the_html_report_shades_each_fault_window_from_its_step_to_the_step_that_undoes_it() -> None:
    r = result(check(observation()))
    page = html_report({"started": "2026-12-03T19:00:00Z", "seed": 1, "where": "test", "results": [r]})
    got = {w["label"]: w for w in _windows(page)}
    expected = {"kill sync": (5, 8), "store_faults (outage=True)": (10, 22.5), "db_cut issuer": (12, 18),
                "restart notifier": (25, 26), "pause reconciler": (30, 40)}  # restart: a 1 s mark; pause: to the end
    assert set(got) == set(expected), got
    t_max = 55.0  # the chart's time axis: the run's duration (55 s) is beyond the last sample (50 s)
    for label, (start, end) in expected.items():
        w = got[label]
        assert (w["from"], w["to"]) == (start, end), label
        assert w["x"] == pytest.approx(40 + 680 * start / t_max, abs=0.06), label
        assert w["width"] == pytest.approx(680 * (end - start) / t_max, abs=0.11), label
    # an undo step (start, store_clear, db_restore) is no window of its own
    assert len(_windows(page)) == len(expected)


def test_a_scenario_without_faults_has_no_shaded_window() -> None:
    scenario = parse_scenario({"load": {"rate": 5, "duration": "10s"}}, where="test", default_name="calm")
    r = ScenarioResult(scenario, check(observation()), 0.0, 12.0, [Sample(1.0, {"confirmed": 3}, 0.0)], [],
                       fault_windows(scenario), offered_rate=5.0).as_dict()
    page = html_report({"started": "2026-12-03T19:00:00Z", "seed": 1, "where": "test", "results": [r]})
    assert "<svg" in page and _windows(page) == []
