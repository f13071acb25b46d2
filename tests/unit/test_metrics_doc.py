"""The metric and alert tables in the documents are the code's: every Prometheus metric declared in services/,
shared/ or fapiao/ is listed with its type and labels, nothing is listed that is not declared, and the alert
table names exactly the rules of ops/prometheus/alerts.yml with their `for` and severity."""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
ARCHITECTURE = ROOT / "docs" / "architecture.md"
RUNBOOK = ROOT / "docs" / "runbook.md"
ALERTS = ROOT / "ops" / "prometheus" / "alerts.yml"
KINDS = {"Counter": "counter", "Gauge": "gauge", "Histogram": "histogram", "Summary": "summary"}


@functools.cache
def declared() -> dict[str, tuple[str, tuple[str, ...]]]:
    """name -> (type, labels) of every prometheus_client metric the code constructs."""
    found: dict[str, tuple[str, tuple[str, ...]]] = {}
    for package in ("services", "shared", "fapiao"):
        for path in sorted((ROOT / package).rglob("*.py")):
            source = path.read_text(encoding="utf-8")
            if "prometheus_client" not in source:
                continue
            tree = ast.parse(source, str(path))
            imported = {a.asname or a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                        and (node.module or "").startswith("prometheus_client") for a in node.names}
            for node in ast.walk(tree):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                        and node.func.id in KINDS and node.func.id in imported):
                    continue  # collections.Counter and the like
                name = ast.literal_eval(node.args[0])
                labels_node = node.args[2] if len(node.args) > 2 else next(
                    (k.value for k in node.keywords if k.arg == "labelnames"), None)
                labels = tuple(ast.literal_eval(labels_node)) if labels_node is not None else ()
                assert name not in found, f"{name} declared twice ({path})"
                found[name] = (KINDS[node.func.id], labels)
    return found


def table_rows(text: str, heading: str) -> list[list[str]]:
    """The cells of the first table after `heading`, header and rule rows left out; `\\|` is a literal bar."""
    section = text.split(f"\n{heading}\n", 1)[1]
    rows: list[list[str]] = []
    for line in section.splitlines():
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        rows.append(cells)
    return rows[2:]


def names_in(cell: str) -> list[str]:
    return re.findall(r"`([a-z_:]+)`", cell)


def test_the_code_declares_the_metrics_this_test_looks_for() -> None:
    metrics = declared()
    assert metrics["fapiao_pipeline_waiting_invoices"] == ("gauge", ("stage",))
    assert metrics["fapiao_rate_limited_total"] == ("counter", ("service", "budget", "reason"))
    assert "fapiao_reconciler_confirmation_latency_seconds" in metrics


def test_the_architecture_metrics_table_lists_exactly_the_declared_metrics() -> None:
    documented: dict[str, tuple[str, tuple[str, ...]]] = {}
    for _exported_by, metric_cell, kind, labels in table_rows(ARCHITECTURE.read_text(encoding="utf-8"),
                                                              "### Metrics"):
        for name in names_in(metric_cell):
            assert name not in documented, f"{name} is listed twice"
            documented[name] = (kind, tuple(names_in(labels)))
    metrics = declared()
    assert sorted(documented) == sorted(metrics), "docs/architecture.md#metrics: missing or not declared"
    wrong = {n: (documented[n], metrics[n]) for n in metrics if documented[n] != metrics[n]}
    assert not wrong, f"documented (type, labels) vs declared: {wrong}"


def test_the_runbook_explains_every_declared_metric_and_no_other() -> None:
    rows = table_rows(RUNBOOK.read_text(encoding="utf-8"), "## Metrics")
    documented = {names_in(row[0])[0]: row[1] for row in rows}
    metrics = declared()
    assert sorted(documented) == sorted(metrics), "docs/runbook.md#metrics: missing or not declared"
    assert {n: k for n, k in documented.items()} == {n: kind for n, (kind, _) in metrics.items()}


def _for(rule: dict) -> str:
    value = rule.get("for")
    if value is None:
        return "at once"
    number, unit = re.fullmatch(r"(\d+)([smh])", value).groups()  # type: ignore[union-attr]
    return f"{number} {({'s': 's', 'm': 'min', 'h': 'h'})[unit]}"


def test_the_alert_table_lists_exactly_the_rules_with_their_wait_and_severity() -> None:
    doc = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    rules = {r["alert"]: r for group in doc["groups"] for r in group["rules"]}
    rows = table_rows(ARCHITECTURE.read_text(encoding="utf-8"), "### Alert rules (`ops/prometheus/alerts.yml`)")
    table = {alert.strip("`"): (fires_when, wait, severity) for alert, fires_when, wait, severity in rows}
    assert list(table) == list(rules), "docs/architecture.md's alert table: the rules of alerts.yml, in its order"
    for name, (fires_when, wait, severity) in table.items():
        rule = rules[name]
        assert (wait, severity) == (_for(rule), rule["labels"]["severity"]), name
        expr = " ".join(rule["expr"].split())
        assert f"`{expr}`" in fires_when, f"{name}: the table does not quote the rule's expression {expr!r}"
