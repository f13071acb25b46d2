"""The monitoring that ships with the system stays true to it: Prometheus's own promtool checks the alert rules
(and their unit tests), the scrape config and every query; each metric a rule or a Grafana panel names is one
the services export; the Grafana dashboard is well-formed and provisioned the way docker-compose.yml mounts it.
Metric names follow Prometheus conventions and carry no unbounded labels."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

from fapiao.infra.tools import ensure_promtool

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS = ROOT / "ops" / "prometheus"
GRAFANA = ROOT / "ops" / "grafana"
METRIC_MODULES = ("shared.metrics", "services.sync.metrics", "services.reconciler.metrics",
                  "services.notifier.metrics", "services.taxstore.stats", "services.issuer.ops.dashboard",
                  "services.issuer.selfcheck")
SERVICES = {"issuer": 8000, "sync": 8001, "reconciler": 8002, "notifier": 8003, "taxstore": 8100}


@pytest.fixture(scope="module")
def promtool() -> Path:
    try:
        return ensure_promtool()
    except Exception as exc:  # noqa: BLE001 - say why instead of skipping
        pytest.fail(f"promtool is needed to check the alert rules and could not be had: {exc}", pytrace=False)


def run(promtool: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(promtool), *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=120)


def exported() -> dict[str, str]:
    """Every sample name the services can export -> its metric type (counters as name_total, histograms as
    name_bucket/_count/_sum), plus Prometheus's own `up`."""
    for module in METRIC_MODULES:
        importlib.import_module(module)
    names = {"up": "gauge"}
    for family in REGISTRY.collect():
        if not family.name.startswith("fapiao_"):
            continue
        if family.type == "counter":
            names[f"{family.name}_total"] = "counter"
        elif family.type == "histogram":
            names.update({f"{family.name}_{s}": "histogram" for s in ("bucket", "count", "sum")})
        else:
            names[family.name] = family.type
    return names


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (label matchers, grouping clauses and strings removed)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    tokens = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr))
    return {t for t in tokens if t.startswith("fapiao_") or t == "up"}


def rules() -> list[dict]:
    doc = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard() -> dict:
    return json.loads((GRAFANA / "dashboards" / "fapiao.json").read_text())


def dashboard_queries() -> list[tuple[str, str]]:
    return [(panel["title"], target["expr"]) for panel in dashboard()["panels"] for target in panel["targets"]]


# --- promtool ----------------------------------------------------------------------------------------------

def test_promtool_accepts_the_alert_rules(promtool: Path) -> None:
    done = run(promtool, "check", "rules", "alerts.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout


def test_the_alert_rules_fire_on_synthetic_series_as_their_unit_tests_expect(promtool: Path) -> None:
    done = run(promtool, "test", "rules", "alerts_test.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_has_a_unit_test(promtool: Path) -> None:
    tested = {case["alertname"] for test in yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())["tests"]
              for case in test.get("alert_rule_test", []) if case.get("exp_alerts")}
    assert {r["alert"] for r in rules()} == tested


def test_a_rule_unit_test_can_fail(promtool: Path, tmp_path: Path) -> None:
    """The rule tests are not vacuous: a wrong expectation makes promtool fail."""
    broken = (PROMETHEUS / "alerts_test.yml").read_text().replace("summary: \"40 invoices are stuck\"",
                                                                 "summary: \"41 invoices are stuck\"")
    (tmp_path / "alerts.yml").write_text((PROMETHEUS / "alerts.yml").read_text())
    (tmp_path / "alerts_test.yml").write_text(broken)
    done = subprocess.run([str(promtool), "test", "rules", "alerts_test.yml"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0 and "FapiaoStuckInvoices" in done.stdout + done.stderr


def test_promtool_accepts_the_scrape_config(promtool: Path) -> None:
    done = run(promtool, "check", "config", "prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(("title", "expr"), dashboard_queries())
def test_every_dashboard_query_is_valid_promql(promtool: Path, title: str, expr: str, tmp_path: Path) -> None:
    # promtool parses rule expressions: a throwaway recording rule checks the query's syntax.
    (tmp_path / "q.yml").write_text(yaml.safe_dump({"groups": [{"name": "q", "rules": [
        {"record": "dashboard:query", "expr": expr}]}]}))
    done = subprocess.run([str(promtool), "check", "rules", str(tmp_path / "q.yml")], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, f"{title}: {done.stdout}{done.stderr}"


# --- the metrics behind the rules and panels -----------------------------------------------------------------

def test_every_alert_rule_names_exported_metrics() -> None:
    names = exported()
    for rule in rules():
        used = metric_names(rule["expr"])
        assert used, rule["alert"]
        assert used <= set(names), f"{rule['alert']} uses {used - set(names)}, which no service exports"


@pytest.mark.parametrize(("title", "expr"), dashboard_queries())
def test_every_dashboard_query_names_exported_metrics(title: str, expr: str) -> None:
    names = exported()
    used = metric_names(expr)
    assert used, f"{title}: no metric in {expr}"
    assert used <= set(names), f"{title} uses {used - set(names)}, which no service exports"
    for name in used:
        if "rate(" in expr or "increase(" in expr:
            assert names[name] in ("counter", "histogram"), f"{title}: rate() over the {names[name]} {name}"


def test_metric_names_follow_prometheus_conventions() -> None:
    names = exported()
    for name, kind in names.items():
        if name == "up":
            continue
        assert re.fullmatch(r"fapiao_[a-z0-9_]+", name), name
        if kind == "counter":
            assert name.endswith("_total"), name
        if kind == "gauge":
            assert not name.endswith("_total"), f"{name}: _total is for counters"
        if "seconds" in name or "duration" in name or "latency" in name or "age" in name:
            assert "_seconds" in name, f"{name}: a time is in seconds, and says so"


def test_no_metric_is_labelled_by_an_unbounded_value() -> None:
    exported()
    unbounded = {"invoice_id", "invoice", "tenant", "tenant_id", "number", "case_no", "alert_id", "delivery_id",
                 "url", "email", "seller_tax_id"}
    for family in REGISTRY.collect():
        if family.name.startswith("fapiao_"):
            for sample in family.samples:
                assert not unbounded & set(sample.labels), (family.name, sample.labels)
    declared = 0
    for module in METRIC_MODULES:  # also the label names declared, whether or not a sample exists yet
        for value in vars(importlib.import_module(module)).values():
            if isinstance(value, MetricWrapperBase):
                declared += 1
                assert not unbounded & set(value._labelnames), (module, value._labelnames)
    assert declared >= 10, "the metric modules declare the metrics"


# --- Grafana and Prometheus in docker-compose.yml --------------------------------------------------------------

def test_the_dashboard_is_well_formed() -> None:
    dash = dashboard()
    assert dash["uid"] and dash["title"] and isinstance(dash["schemaVersion"], int)
    panels = dash["panels"]
    assert len({p["id"] for p in panels}) == len(panels), "panel ids are unique"
    datasource = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    [source] = datasource["datasources"]
    for p in panels:
        assert p["type"] in {"timeseries", "stat", "table", "gauge", "bargauge"}, p["type"]
        assert p["title"] and set(p["gridPos"]) >= {"x", "y", "w", "h"} and 0 < p["gridPos"]["w"] <= 24
        assert p["datasource"] == {"type": "prometheus", "uid": source["uid"]}, p["title"]
        assert p["targets"] and len({t["refId"] for t in p["targets"]}) == len(p["targets"]), p["title"]
    titles = " ".join(p["title"].lower() for p in panels)
    for must in ("lag", "stuck", "gaps", "alert", "latency", "status", "dead letters", "services up"):
        assert must in titles, f"the dashboard has no panel about {must}"


def test_compose_provisions_prometheus_and_grafana_from_the_repository() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    prometheus, grafana = compose["prometheus"], compose["grafana"]
    mounts = {v.split(":")[1]: ROOT / v.split(":")[0] for v in prometheus["volumes"] + grafana["volumes"]
              if v.startswith("./")}
    assert {"prometheus.yml", "alerts.yml"} <= {f.name for f in mounts["/etc/prometheus"].iterdir()}
    provider = yaml.safe_load((mounts["/etc/grafana/provisioning"] / "dashboards" / "fapiao.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert (mounts[path] / "fapiao.json").exists(), "the provider reads the folder compose mounts"
    source = yaml.safe_load((mounts["/etc/grafana/provisioning"] / "datasources" / "prometheus.yml").read_text())
    assert source["datasources"][0]["url"] == "http://prometheus:9090"
    assert grafana["depends_on"]["prometheus"]["condition"] == "service_healthy" and "healthcheck" in prometheus

    scrape = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())["scrape_configs"]
    # A service in replicas is discovered through Docker's DNS (each replica a target of its own), the tax store
    # is one static target.
    targets = {job["job_name"]: [f"{name}:{sd['port']}" for sd in job.get("dns_sd_configs", [])
                                 for name in sd["names"]] or job["static_configs"][0]["targets"] for job in scrape}
    assert targets == {f"fapiao-{name}": [f"{name}:{port}"] for name, port in SERVICES.items()}
    for job in scrape:
        replicas = int((compose[job["job_name"].removeprefix("fapiao-")].get("deploy") or {}).get("replicas", 1))
        assert ("dns_sd_configs" in job) == (replicas > 1), job["job_name"]
    for name, port in SERVICES.items():  # each target is a compose service listening on that port
        assert name in compose
        env = compose[name].get("environment") or {}
        assert str(env.get("FAPIAO_PORT", port)) == str(port), name
