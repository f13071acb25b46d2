"""The bench's pure parts, without a stack: the per-second series and the chart drawn from them (parsed back as
SVG), CPU per invoice by component, the rows its raw COPY baseline and its reconciler-scale phase write, and its
options. The phases themselves need the real stack: `make bench-quick` runs them."""

from __future__ import annotations

import re
import uuid
import xml.etree.ElementTree as ET
from datetime import date
from decimal import Decimal

import orjson
import pytest

from fapiao.bench import (
    CHART_H,
    CHART_PAD,
    COPY_COLUMNS,
    COPY_TABLES,
    LEDGER_COLUMNS,
    _axis_max,
    chart_html,
    component,
    confirmed_ledger_rows,
    cpu_per_invoice,
    cpu_table,
    issuer_rows,
    parse_args,
    per_second,
)
from shared.content import content_hash
from tests.factories import invoice, uscc

SVG = "{http://www.w3.org/2000/svg}"


def test_per_second_buckets_latency_by_acceptance_and_throughput_by_storing() -> None:
    t0 = 1_000_000.0
    timings = [(t0, t0 + 0.1), (t0 + 0.5, t0 + 0.9),  # second 0: 100 and 400 ms, both stored in second 0
               (t0 + 1.0, t0 + 3.5),  # second 1: 2,500 ms, stored in second 3
               (t0 + 3.2, t0 + 3.3)]  # second 3: 100 ms
    rows = per_second(timings)
    assert [r["t"] for r in rows] == [0, 1, 2, 3]
    assert [r["accepted"] for r in rows] == [2, 1, 0, 1]
    assert [r["stored"] for r in rows] == [2, 0, 0, 2]
    assert rows[0]["p50_ms"] == pytest.approx(100.0) and rows[0]["p99_ms"] == pytest.approx(400.0)
    assert rows[1]["p50_ms"] == pytest.approx(2500.0)
    assert rows[2]["p50_ms"] is None and rows[2]["p99_ms"] is None
    assert sum(r["stored"] for r in rows) == len(timings)
    assert per_second([]) == []


def test_a_store_clock_a_little_behind_the_issuers_counts_in_the_first_second() -> None:
    rows = per_second([(10.0, 9.99), (10.5, 10.6)])
    assert rows[0]["stored"] == 2 and rows[0]["p50_ms"] == pytest.approx(-10.0)


def test_axis_max_is_a_round_bound_at_or_above_the_largest_value() -> None:
    assert _axis_max([0.3, 0.7]) == pytest.approx(1.0)
    assert _axis_max([120.0]) == 200
    assert _axis_max([500.0]) == 500
    assert _axis_max([501.0]) == 1000
    assert _axis_max([]) == 1.0 and _axis_max([0.0]) == 1.0


def _svgs(html: str) -> list[ET.Element]:
    return [ET.fromstring(m) for m in re.findall(r"<svg\b.*?</svg>", html, flags=re.S)]  # noqa: S314 - our own output


def _points(polyline: ET.Element) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in (p.split(",") for p in polyline.attrib["points"].split())]


def test_the_chart_draws_p50_p99_and_stored_per_second_for_every_phase() -> None:
    latency = per_second([(100.0 + i / 10, 100.0 + i / 10 + (0.05 if i < 20 else 1.5)) for i in range(40)])
    outage = per_second([(200.0, 230.0), (201.0, 230.5), (231.0, 231.1)])
    html = chart_html("bench <test>", {"(c) latency": latency, "(g) store outage": outage, "(e) nothing": []})
    assert html.startswith("<!DOCTYPE html>") and "bench &lt;test&gt;" in html
    sections = re.findall(r'<section data-phase="([^"]+)">', html)
    assert sections == ["(c) latency", "(g) store outage"]  # a phase without invoices draws nothing
    svgs = _svgs(html)
    assert len(svgs) == 4  # latency and throughput per phase
    lat_svg, thr_svg = svgs[0], svgs[1]
    lines = {p.attrib["data-series"]: p for p in lat_svg.iter(f"{SVG}polyline")}
    assert set(lines) == {"p50", "p99"}
    p50, p99 = _points(lines["p50"]), _points(lines["p99"])
    assert len(p50) == len(p99) == sum(1 for r in latency if r["accepted"])
    # Seconds 0 and 1 (50 ms) sit lower on the page (larger y) than seconds 2 and 3 (1,500 ms).
    assert p50[0][1] > p50[3][1] and p99[1][1] > p99[2][1]
    assert float(lat_svg.attrib["data-ymax"]) == 2000  # 1,500 ms rounds up to 2,000
    # Value 0 is the x axis, the top of the scale is the top of the plot.
    ymax = float(lat_svg.attrib["data-ymax"])
    for (_, y), row in zip(p50, [r for r in latency if r["accepted"]], strict=True):
        assert y == pytest.approx(CHART_PAD + (CHART_H - 2 * CHART_PAD) * (1 - row["p50_ms"] / ymax), abs=0.1)
    xs = [x for x, _ in p50]
    assert xs == sorted(xs) and len(set(xs)) == len(xs)
    stored = [p for p in thr_svg.iter(f"{SVG}polyline")]
    assert [p.attrib["data-series"] for p in stored] == ["stored/s"]
    assert len(_points(stored[0])) == len(latency)  # one point per second, zeros included
    # The outage phase: nothing stored for 30 s, then all three.
    out_points = _points(next(svgs[3].iter(f"{SVG}polyline")))
    assert len(out_points) == len(outage) == 32
    assert sum(1 for _, y in out_points if y < CHART_H - CHART_PAD) == 2  # seconds 30 and 31 only


def test_cpu_per_invoice_groups_replicas_and_leaves_the_store_and_the_load_out_of_the_pipeline() -> None:
    assert component("issuer-2") == "issuer" and component("kafka (java)") == "kafka"
    assert component("postgres (all backends)") == "postgres" and component("bench (load generator)") == "bench"
    cpu = {"issuer": 1.0, "issuer-2": 0.5, "sync": 0.5, "taxstore": 2.0, "kafka (java)": 0.25,
           "postgres (all backends)": 1.0, "bench (load generator)": 3.0, "reconciler": 0.25}
    per = cpu_per_invoice(cpu, 1000)
    assert per["issuer"] == pytest.approx(1.5) and per["taxstore"] == pytest.approx(2.0)
    assert per["pipeline"] == pytest.approx(1.5 + 0.5 + 0.25 + 1.0 + 0.25)
    assert cpu_per_invoice(cpu, 0) == {}


def _cpu(**cpu_s: float) -> dict[str, object]:
    return {"wall_s": 2.0, "cpu_s": cpu_s}


def test_every_phase_that_ran_gets_its_cpu_per_invoice() -> None:
    results = {
        "a_raw_kafka": {"messages": 100, "cpu": _cpu(**{"kafka (java)": 0.1})},
        "b_end_to_end": {"invoices": 100, "cpu": _cpu(issuer=0.2)},
        "c_latency": {"offered_rate_per_s": 200.0, "accepted": 50, "cpu": _cpu(issuer=0.5)},
        "e_steps": {"steps": [{"rate_per_s": 100.0, "accepted": 10, "cpu": _cpu(issuer=0.1)}]},
        "h_flaky": {"accepted": 20, "cpu": _cpu(reconciler=0.2)},
        "i_reconciler_scale": {"scale": 1000, "unconfirmed": 40, "without": {"cpu": _cpu(reconciler=0.4)},
                               "beside": {"cpu": _cpu(reconciler=0.8)}},
    }
    table = cpu_table(results)
    assert list(table) == ["(a) raw Kafka", "(b) end to end", "(c) 200/s", "(e) 100/s", "(i) rounds, without",
                           "(i) rounds, beside 1,000", "(h) flaky store"]
    assert table["(c) 200/s"]["ms_per_invoice"]["issuer"] == pytest.approx(10.0)
    assert table["(i) rounds, beside 1,000"]["ms_per_invoice"]["reconciler"] == pytest.approx(20.0)
    assert table["(h) flaky store"]["invoices"] == 20
    assert results["b_end_to_end"]["cpu"]["ms_per_invoice"] == {"issuer": 2.0, "pipeline": 2.0}  # type: ignore[index]


def test_the_copy_baseline_writes_the_issuers_three_rows_per_invoice() -> None:
    seller, tenant = uscc(), uuid.uuid4()
    docs = [invoice(seller) for _ in range(3)]
    rows = issuer_rows(docs, tenant, seller, "invoice.events.v1", 7)
    assert len(rows) == 3
    for k, table in enumerate(COPY_TABLES):
        assert all(len(r[k]) == len(COPY_COLUMNS[table]) for r in rows), table
    inv = dict(zip(COPY_COLUMNS["invoices"], rows[0][0], strict=True))
    content = orjson.loads(inv["content"])
    assert inv["content_hash"] == content_hash(content) and inv["tenant_id"] == tenant
    assert inv["number"] == docs[0]["number"] and inv["status"] == "accepted"
    assert inv["total"] == Decimal(docs[0]["total"]) and isinstance(inv["issue_date"], date)
    outbox = dict(zip(COPY_COLUMNS["outbox"], rows[0][2], strict=True))
    envelope = orjson.loads(outbox["payload"])
    assert envelope["subject"] == str(inv["id"]) == outbox["key"] and envelope["id"] == outbox["event_id"]
    assert envelope["data"]["invoice"] == content and envelope["data"]["content_hash"] == inv["content_hash"]
    timeline = dict(zip(COPY_COLUMNS["invoice_timeline"], rows[0][1], strict=True))
    assert timeline["invoice_id"] == inv["id"] and timeline["kind"] == "accepted"
    assert [r[1][0] for r in rows] == [7, 8, 9] == [r[2][0] for r in rows]  # explicit ids: no shared sequence


def test_the_confirmed_ledger_rows_are_distinct_and_never_due() -> None:
    rows = list(confirmed_ledger_rows(5000, uuid.uuid4(), sellers=100, days=30, salt=3))
    assert len(rows) == 5000 and all(len(r) == len(LEDGER_COLUMNS) for r in rows)
    col = {name: i for i, name in enumerate(LEDGER_COLUMNS)}
    assert len({r[col["invoice_id"]] for r in rows}) == 5000
    assert len({(r[col["seller_tax_id"]], r[col["number"]]) for r in rows}) == 5000
    assert len({r[col["seller_tax_id"]] for r in rows}) == 100
    assert len({r[col["issue_date"]] for r in rows}) == 30
    assert all(r[col["state"]] == "confirmed" and r[col["next_check_at"]] is None for r in rows)
    assert all(len(r[col["seller_tax_id"]]) == 18 and len(r[col["number"]]) == 20 for r in rows)
    other = next(iter(confirmed_ledger_rows(1, uuid.uuid4(), salt=4)))
    assert other[col["invoice_id"]] not in {r[col["invoice_id"]] for r in rows}


def test_the_new_phases_options() -> None:
    args = parse_args([])
    assert args.flaky == 60 and args.flaky_rate == 50 and args.flaky_settle == args.phase_timeout
    assert args.reconciler_scale == 1_000_000 and args.reconciler_unconfirmed == 10_000
    args = parse_args(["--flaky", "0", "--reconciler-scale", "0", "--phase-timeout", "30"])
    assert args.flaky == 0 and args.reconciler_scale == 0 and args.flaky_settle == 30
    assert parse_args(["--flaky-settle", "12"]).flaky_settle == 12
    for bad in (["--flaky", "-1"], ["--reconciler-scale", "-5"], ["--reconciler-unconfirmed", "0"],
                ["--flaky-rate", "0"]):
        with pytest.raises(SystemExit) as exc:
            parse_args(bad)
        assert exc.value.code == 2, bad
