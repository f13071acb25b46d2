"""`make bench`: how fast the whole pipeline runs on this machine, next to raw baselines from the same run.

    .venv/bin/python -m fapiao.bench [--invoices N] [--rate R] [--duration S] [--out FILE] [--flaky S]
                                     [--reconciler-scale N] ... (--help: every option)

Starts its own PostgreSQL and Kafka (fapiao.infra, free ports, a private directory under .test-artifacts/)
and the three services as real processes (`python -m services.<name>`), never touching a `make up` stack,
and stops all of it at the end, also on Ctrl-C or an error. Then, in one run:

(a) raw Kafka: N copies of a real `invoice.issued` envelope produced with the project's producer settings
    (acks=all, idempotent) and consumed by a group with manual commits, in a second process -> messages/s;
(b) end to end: N invoices posted through the issuer's batch endpoint until the tax store holds all of them,
    and until the issuer shows all of them `submitted` -> invoices/s, against (a) and (d);
(c) latency at a fixed offered rate of single POST /v1/invoices, paced on a schedule (open loop):
    tax store `stored_at` minus issuer `accepted_at` per invoice -> p50/p95/p99/max;
(d) the tax store alone: the same canonical documents posted straight to it, in the sync service's batch
    size and in-flight limit, and one at a time at concurrency 32 -> invoices/s;
(j) raw PostgreSQL: the rows the issuer writes per accepted invoice (invoice, timeline entry, outbox row)
    for N invoices, COPYed by asyncpg into scratch tables LIKE the issuer's -> rows/s, invoices/s, against (b);
(e) step load: (c) at rising rates until the p99 passes 500 ms -> the highest rate within it;
(f) (c) right after a batch of --after-batch invoices: how long live invoices wait behind a month-end run;
(g) single POSTs at --rate with the tax store down for --outage seconds: first stored after its return, the drain;
(i) the reconciler's check rounds over --reconciler-unconfirmed due invoices, without and then beside
    --reconciler-scale confirmed ledger rows (COPYed in as setup) -> round seconds and their ratio;
(h) a flaky store (drops, timeouts, errors on, and left on) under --flaky-rate single POSTs for --flaky
    seconds -> seconds from the end of the load until every accepted invoice is confirmed, or "not converged".
(i) and (h) need the reconciler: without --reconciler it joins after (g), from the ends of its topics.

Per-process CPU seconds (from /proc/<pid>/stat) are sampled around every phase: where the time goes, as CPU ms
per invoice by component. Results are printed and written as JSON (default bench-results/bench-<UTC
timestamp>.json) with an HTML chart of the same name (.html: p50/p99 latency and stored per second over time,
inline SVG). Nothing is asserted: the figures are reported, with the project's targets next to them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson

from fapiao.infra.kafka import KAFKA_VERSION, REPO_ROOT, KafkaBroker, ensure_kafka_jars
from fapiao.infra.postgres import PostgresServer
from fapiao.infra.procs import ServiceProcess, clean_environ, free_port, spawn, stop_group

if str(REPO_ROOT) not in sys.path:  # tests.factories is not an installed package
    sys.path.insert(0, str(REPO_ROOT))

ARTIFACTS = REPO_ROOT / ".test-artifacts"
RESULTS = REPO_ROOT / "bench-results"
SERVICES = ("taxstore", "issuer", "sync")
REPLICATED = ("issuer", "sync", "reconciler")
# The targets of the throughput issue (reported next to the figures, never asserted)
TARGET_E2E_PER_S = 3000.0
TARGET_P50_MS = 40.0
TARGET_P99_MS = 150.0
TARGET_CPU_MS_PER_INVOICE = 0.5  # the whole pipeline but the tax store (the authority's side) and the load
TARGET_STEP_RATE = 800.0  # (e): the highest single-POST rate whose p99 stays within STEP_P99_LIMIT_MS
STEP_P99_LIMIT_MS = 500.0
TARGET_AFTER_BATCH_P99_MS = 1000.0  # (f): single POSTs at 200/s right after a batch
TARGET_DRAIN_FACTOR = 5.0  # (g): the backlog of an outage drains at ≥ 5× the offered rate (best 10 s)
TARGET_FIRST_AFTER_OUTAGE_S = 3.0  # (g): the first invoice stored within 3 s of the store's return
TARGET_RECONCILER_SCALE_RATIO = 1.1  # (i): rounds beside 1M confirmed take < 1.1x the rounds without them
DRAIN_WINDOW_S = 10.0
ISSUER_BATCH = 1000  # invoices per POST /v1/invoices/batch (the issuer's default FAPIAO_BATCH_MAX)
CLK_TCK = os.sysconf("SC_CLK_TCK")
# What is not the pipeline in CPU per invoice: the tax store (the authority's side) and the benchmark's own load
NOT_PIPELINE = frozenset({"taxstore", "bench", "raw consumer process"})


class BenchError(RuntimeError):
    """A phase could not complete; the message says what was waited for and what was seen."""


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- CPU accounting from /proc ---------------------------------------------------------------------

def _proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (ppid, CPU seconds of the process incl. its reaped children) for every readable process."""
    out: dict[int, tuple[int, float]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        fields = raw.rsplit(")", 1)[1].split()
        # after "pid (comm)": state ppid ... utime(14) stime(15) cutime(16) cstime(17), i.e. fields[11:15]
        ticks = sum(int(x) for x in fields[11:15])
        out[int(entry.name)] = (int(fields[1]), ticks / CLK_TCK)
    return out


def tree_cpu(pid: int, table: dict[int, tuple[int, float]]) -> float:
    """CPU seconds of pid and all its live descendants (exited ones are in their parent's cutime/cstime)."""
    children: dict[int, list[int]] = {}
    for p, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(p)
    total, stack, seen = 0.0, [pid], set()
    while stack:
        p = stack.pop()
        if p in seen or p not in table:
            continue
        seen.add(p)
        total += table[p][1]
        stack.extend(children.get(p, ()))
    return total


def system_cpu() -> dict[str, float]:
    """Machine-wide CPU seconds since boot from /proc/stat: busy (all non-idle) and steal."""
    parts = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    v = [int(x) for x in parts] + [0] * 10
    user, nice, system, idle, iowait, irq, softirq, steal = v[:8]
    return {"busy": (user + nice + system + irq + softirq) / CLK_TCK, "steal": steal / CLK_TCK,
            "idle": (idle + iowait) / CLK_TCK}


@dataclass
class CpuSampler:
    """CPU seconds per component between two snapshots."""

    pids: dict[str, int]  # component -> pid (its process tree is counted)

    def snapshot(self) -> dict[str, Any]:
        table = _proc_table()
        t = os.times()
        snap: dict[str, Any] = {name: tree_cpu(pid, table) for name, pid in self.pids.items()}
        snap["bench (load generator)"] = t.user + t.system  # this process only, not its children
        snap["_system"] = system_cpu()
        snap["_wall"] = time.monotonic()
        return snap

    @staticmethod
    def delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
        wall = after["_wall"] - before["_wall"]
        per = {k: round(after[k] - before[k], 2) for k in before if not k.startswith("_")}
        busy = after["_system"]["busy"] - before["_system"]["busy"]
        ours = sum(per.values())
        return {
            "wall_s": round(wall, 2),
            "cpu_s": per,
            "ours_cpu_s": round(ours, 2),
            "machine_busy_cpu_s": round(busy, 2),
            "other_processes_cpu_s": round(max(0.0, busy - ours), 2),
            "steal_s": round(after["_system"]["steal"] - before["_system"]["steal"], 2),
            "machine_capacity_cpu_s": round(wall * (os.cpu_count() or 1), 2),
        }


# --- the private stack -----------------------------------------------------------------------------

@dataclass
class Stack:
    workdir: Path
    admin_token: str = field(default_factory=lambda: "bench-" + secrets.token_urlsafe(32))
    topic_prefix: str = field(default_factory=lambda: f"bench{uuid.uuid4().hex[:8]}.")
    pg: PostgresServer | None = None
    kafka: KafkaBroker | None = None
    services: dict[str, ServiceProcess] = field(default_factory=dict)
    extra_procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    replicas: int = 1  # processes of each service but the tax store (the authority's side stays one)
    reconciler: bool = False  # with the reconciler, invoices go on from `submitted` to `confirmed`
    more: dict[str, list[ServiceProcess]] = field(default_factory=dict)  # replicas 2..N of each, by service
    issuer_workers: int = 0  # FAPIAO_API_WORKERS of each issuer process, as make up runs it (0: half the cores)
    reconciler_port: int = field(default_factory=free_port)  # known before it starts: the issuer's self-check asks it

    def _extra(self, name: str) -> dict[str, str]:
        """Settings one process of `name` gets over _env(): where its peers are; the issuer's workers and the
        port of its background process (one of its own per process)."""
        if name in ("sync", "reconciler"):
            return {"FAPIAO_TAXSTORE_URL": self.services["taxstore"].url}
        if name == "issuer":
            return {"FAPIAO_API_WORKERS": str(self.issuer_workers), "FAPIAO_BACKGROUND_PORT": str(free_port()),
                    "FAPIAO_RECONCILER_URL": f"http://127.0.0.1:{self.reconciler_port}"}
        return {}

    @property
    def names(self) -> tuple[str, ...]:
        return SERVICES + (("reconciler",) if self.reconciler else ())

    def processes(self, name: str) -> list[ServiceProcess]:
        """Every process of a service, the first one first."""
        return [self.services[name], *self.more.get(name, [])]

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    def start(self, *, timeout: float) -> None:
        """Everything is spawned from the calling (main) thread with die_with_parent: if this process is
        killed outright the children get SIGKILL from the kernel; otherwise stop() runs from a finally."""
        ensure_kafka_jars()
        self.pg = PostgresServer(self.workdir / "postgres", port=free_port(), die_with_parent=True)
        self.kafka = KafkaBroker(self.workdir / "kafka", port=free_port(), controller_port=free_port(),
                                 die_with_parent=True)
        say(f"starting PostgreSQL on 127.0.0.1:{self.pg.port} and Kafka {KAFKA_VERSION} on {self.kafka.bootstrap}")
        self.pg.start(timeout=timeout)
        self.kafka.start(timeout=timeout)
        env = self._env()
        for name in self.names:
            port = self.reconciler_port if name == "reconciler" else None
            self.services[name] = ServiceProcess.service(name, env={**env, **self._extra(name)}, port=port,
                                                         log_dir=self.workdir / "logs", die_with_parent=True)
            if name in REPLICATED:  # same database schema, topics and consumer groups: replicas, as make up runs them
                self.more[name] = [ServiceProcess.service(name, env={**env, **self._extra(name)},
                                                          log_dir=self.workdir / "logs", log_name=f"{name}-{i}",
                                                          die_with_parent=True)
                                   for i in range(2, self.replicas + 1)]
        everything = [p for name in self.names for p in self.processes(name)]
        for svc in everything:
            svc.spawn()
        say("services spawned: " + ", ".join(f"{s.name} {s.url} (pid {s.pid})" for s in everything))
        for svc in everything:
            svc.wait_ready(timeout, interval=0.25)

    def start_reconciler(self, *, timeout: float) -> list[ServiceProcess]:
        """The reconciler (and its replicas) after the other services, for (h) and (i) in a run without
        --reconciler: (a)-(g) stay comparable with earlier runs, which did not have it. Called from the main
        thread (the event loop runs there), as die_with_parent needs."""
        env = {**self._env(), **self._extra("reconciler")}
        procs = [ServiceProcess.service("reconciler", env=env, port=self.reconciler_port, log_dir=self.workdir / "logs",
                                        die_with_parent=True),
                 *(ServiceProcess.service("reconciler", env=env, log_dir=self.workdir / "logs",
                                          log_name=f"reconciler-{i}", die_with_parent=True)
                   for i in range(2, self.replicas + 1))]
        self.services["reconciler"], self.more["reconciler"] = procs[0], procs[1:]
        self.reconciler = True
        for svc in procs:
            svc.spawn()
        say("reconciler spawned: " + ", ".join(f"{s.url} (pid {s.pid})" for s in procs))
        for svc in procs:
            svc.wait_ready(timeout, interval=0.25)
        return procs

    def _env(self) -> dict[str, str]:
        assert self.pg is not None and self.kafka is not None
        return {
            **clean_environ(),
            "FAPIAO_ENV": "test", "FAPIAO_DATABASE_URL": self.pg.url(), "FAPIAO_KAFKA_BOOTSTRAP": self.kafka.bootstrap,
            "FAPIAO_ADMIN_TOKEN": self.admin_token, "FAPIAO_LOG_LEVEL": "WARNING", "FAPIAO_LOG_JSON": "false",
            "FAPIAO_TOPIC_PREFIX": self.topic_prefix, "FAPIAO_STACK_DIR": str(self.workdir / "no-stack"),
            "PYTHONUNBUFFERED": "1",
            # The bench measures what the pipeline can do, one tenant at full speed (200 single POSTs a second in
            # (c), 64 in flight): the per-tenant limits, sized to share an issuer between tenants, stay off.
            "FAPIAO_RATE_LIMITS": "false",
        }

    def pids(self) -> dict[str, int]:
        out = {name: s.pid for name, s in self.services.items() if s.pid is not None}
        for name, extra in self.more.items():
            out.update({f"{name}-{i}": s.pid for i, s in enumerate(extra, start=2) if s.pid is not None})
        if self.kafka is not None and self.kafka.pid is not None:
            out["kafka (java)"] = self.kafka.pid
        if self.pg is not None and self.pg.pid is not None:
            out["postgres (all backends)"] = self.pg.pid
        return out

    def stop(self) -> list[str]:
        """Stop everything that was started, services first; returns what could not be stopped cleanly."""
        problems: list[str] = []
        for proc in self.extra_procs:
            with contextlib.suppress(Exception):
                if proc.poll() is None:
                    stop_group(proc.pid, timeout=5)
                proc.wait(5)
        for name in ("reconciler", "sync", "issuer", "taxstore"):
            if name not in self.services:
                continue
            for svc in self.processes(name):
                try:
                    svc.stop(15)
                except Exception as exc:  # noqa: BLE001 - keep stopping the rest
                    problems.append(f"{svc.log_path.stem}: {exc}")
        for label, server in (("kafka", self.kafka), ("postgres", self.pg)):
            if server is None:
                continue
            try:
                server.stop()
            except Exception as exc:  # noqa: BLE001
                problems.append(f"{label}: {exc}")
        return problems


# --- helpers ---------------------------------------------------------------------------------------

def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def per_second(timings: list[tuple[float, float]]) -> list[dict[str, Any]]:
    """Per-second series of one phase from (accepted_at, stored_at) epoch seconds per invoice: for each second
    since the first acceptance, the invoices accepted in it with the p50/p99 of their accepted → stored
    latency (None when none was accepted), and the invoices the tax store stored in it."""
    if not timings:
        return []
    t0 = min(a for a, _ in timings)
    last = max(max(a, s) for a, s in timings)
    seconds = int(last - t0) + 1
    lat: list[list[float]] = [[] for _ in range(seconds)]
    stored = [0] * seconds
    for accepted, at_store in timings:
        lat[int(accepted - t0)].append((at_store - accepted) * 1000)
        stored[max(0, int(at_store - t0))] += 1
    out = []
    for i in range(seconds):
        values = sorted(lat[i])
        out.append({"t": i, "accepted": len(values),
                    "p50_ms": round(percentile(values, 50), 1) if values else None,
                    "p99_ms": round(percentile(values, 99), 1) if values else None,
                    "stored": stored[i]})
    return out


def component(process: str) -> str:
    """The component a sampled process belongs to: replicas (issuer-2) count with their service."""
    base = process.split(" (")[0]
    head, _, tail = base.rpartition("-")
    return head if head and tail.isdigit() else base


def cpu_per_invoice(cpu_s: dict[str, float], invoices: int) -> dict[str, float]:
    """CPU milliseconds per invoice by component (replicas summed), and `pipeline`: every component but the tax
    store (the authority's side) and the benchmark's own processes (the load)."""
    if invoices <= 0:
        return {}
    by: dict[str, float] = {}
    for name, secs in cpu_s.items():
        by[component(name)] = by.get(component(name), 0.0) + secs
    out = {k: round(1000 * v / invoices, 3) for k, v in by.items()}
    out["pipeline"] = round(1000 * sum(v for k, v in by.items() if k not in NOT_PIPELINE) / invoices, 3)
    return out


def phase_cpus(results: dict[str, Any]) -> list[tuple[str, dict[str, Any], int]]:
    """(label, CPU delta, invoices) of every phase that ran, in the order of the report."""
    r = results
    out: list[tuple[str, dict[str, Any], int]] = []
    if a := r.get("a_raw_kafka"):
        out.append(("(a) raw Kafka", a["cpu"], a["messages"]))
    if b := r.get("b_end_to_end"):
        out.append(("(b) end to end", b["cpu"], b["invoices"]))
    if c := r.get("c_latency"):
        out.append((f"(c) {c['offered_rate_per_s']:g}/s", c["cpu"], c["accepted"]))
    if d := r.get("d_taxstore"):
        out.append(("(d) tax store, batch", d["batch"]["cpu"], d["batch"]["invoices"]))
        out.append(("(d) tax store, single", d["single"]["cpu"], d["single"]["invoices"]))
    if j := r.get("j_raw_copy"):
        out.append(("(j) raw COPY", j["cpu"], j["invoices"]))
    for step in (r.get("e_steps") or {}).get("steps", []):
        if "cpu" in step:
            out.append((f"(e) {step['rate_per_s']:g}/s", step["cpu"], step["accepted"]))
    if f := r.get("f_after_batch"):
        out.append(("(f) after a batch", f["cpu"], f.get("accepted", f["measured"])))
    if g := r.get("g_outage_drain"):
        out.append(("(g) store outage", g["cpu"], g["accepted"]))
    if i := r.get("i_reconciler_scale"):
        out.append(("(i) rounds, without", i["without"]["cpu"], i["unconfirmed"]))
        out.append((f"(i) rounds, beside {i['scale']:,}", i["beside"]["cpu"], i["unconfirmed"]))
    if h := r.get("h_flaky"):
        out.append(("(h) flaky store", h["cpu"], h["accepted"]))
    return out


def cpu_table(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """CPU ms per invoice by component for every phase (also put into each phase's own `cpu`)."""
    table: dict[str, dict[str, Any]] = {}
    for label, cpu, n in phase_cpus(results):
        cpu["invoices"] = n
        cpu["ms_per_invoice"] = per = cpu_per_invoice(cpu["cpu_s"], n)
        table[label] = {"invoices": n, "wall_s": cpu["wall_s"], "ms_per_invoice": per}
    return table


# --- the chart: inline SVG, written by the bench itself (no plotting library) ---------------------------

CHART_W, CHART_H, CHART_PAD = 860, 220, 48


def _axis_max(values: list[float]) -> float:
    """A round upper bound (1, 2 or 5 × 10^k) at or above the largest value."""
    top = max(values, default=0.0)
    if top <= 0:
        return 1.0
    scale = 10 ** math.floor(math.log10(top))
    return next(m * scale for m in (1, 2, 5, 10) if m * scale >= top)


def _svg(title: str, unit: str, seconds: int, series: dict[str, list[tuple[int, float]]],
         colours: dict[str, str]) -> str:
    """One panel: a polyline per series of (second, value) points, linear axes from 0."""
    from xml.sax.saxutils import escape

    ymax = _axis_max([v for pts in series.values() for _, v in pts])
    xmax = max(1, seconds - 1)
    inner_w, inner_h = CHART_W - 2 * CHART_PAD, CHART_H - 2 * CHART_PAD

    def x(t: float) -> float:
        return round(CHART_PAD + inner_w * t / xmax, 1)

    def y(v: float) -> float:
        return round(CHART_PAD + inner_h * (1 - v / ymax), 1)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{CHART_W}" height="{CHART_H}" '
             f'viewBox="0 0 {CHART_W} {CHART_H}" data-ymax="{ymax:g}" data-xmax="{xmax}" role="img">',
             f'<title>{escape(title)}</title>',
             f'<text x="{CHART_PAD}" y="20" font-size="13" font-weight="bold">{escape(title)}</text>',
             f'<line x1="{CHART_PAD}" y1="{y(0)}" x2="{x(xmax)}" y2="{y(0)}" stroke="#444"/>',
             f'<line x1="{CHART_PAD}" y1="{y(0)}" x2="{CHART_PAD}" y2="{y(ymax)}" stroke="#444"/>']
    for frac in (0.25, 0.5, 0.75, 1.0):
        v = ymax * frac
        parts.append(f'<line x1="{CHART_PAD}" y1="{y(v)}" x2="{x(xmax)}" y2="{y(v)}" stroke="#ddd"/>')
        parts.append(f'<text x="{CHART_PAD - 4}" y="{y(v) + 4}" font-size="10" text-anchor="end">{v:g}</text>')
    step = max(1, round(xmax / 10))
    for t in range(0, xmax + 1, step):
        parts.append(f'<text x="{x(t)}" y="{y(0) + 14}" font-size="10" text-anchor="middle">{t}</text>')
    parts.append(f'<text x="{x(xmax)}" y="{CHART_H - 8}" font-size="10" text-anchor="end">seconds since the '
                 f'phase\'s first acceptance; y: {escape(unit)}</text>')
    for i, (name, pts) in enumerate(series.items()):
        colour = colours.get(name, "#000")
        points = " ".join(f"{x(t)},{y(v)}" for t, v in pts)
        parts.append(f'<polyline data-series="{escape(name)}" fill="none" stroke="{colour}" stroke-width="1.5" '
                     f'points="{points}"/>')
        parts.append(f'<text x="{CHART_W - CHART_PAD - 90 * i}" y="20" font-size="11" fill="{colour}" '
                     f'text-anchor="end">{escape(name)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def chart_html(title: str, phases: dict[str, list[dict[str, Any]]]) -> str:
    """A self-contained HTML page: per phase, p50/p99 latency (accepted → stored, by second of acceptance) and
    invoices stored per second, from per_second() series."""
    from xml.sax.saxutils import escape

    body = [f"<h1>{escape(title)}</h1>"]
    for label, rows in phases.items():
        if not rows:
            continue
        seconds = len(rows)
        latency = {"p50": [(r["t"], r["p50_ms"]) for r in rows if r["p50_ms"] is not None],
                   "p99": [(r["t"], r["p99_ms"]) for r in rows if r["p99_ms"] is not None]}
        body.append(f'<section data-phase="{escape(label)}"><h2>{escape(label)}</h2>')
        body.append(_svg(f"{label}: latency accepted → stored", "ms", seconds, latency,
                         {"p50": "#1f77b4", "p99": "#d62728"}))
        body.append(_svg(f"{label}: throughput", "invoices stored per second", seconds,
                         {"stored/s": [(r["t"], float(r["stored"])) for r in rows]}, {"stored/s": "#2ca02c"}))
        body.append("</section>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(title)}</title><style>body{{font-family:sans-serif;margin:1em}}"
            "svg{display:block;margin:0.5em 0}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


async def poll_until(check: Callable[[], Awaitable[Any]], *, timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise BenchError(f"{what}: not reached within {timeout:.0f}s (last seen: {last!r})")


def make_docs(seller_tax_id: str, n: int) -> list[dict[str, Any]]:
    from tests.factories import invoice

    docs: list[dict[str, Any]] = []
    seen: set[str] = set()
    while len(docs) < n:
        d = invoice(seller_tax_id)
        if d["number"] not in seen:
            seen.add(d["number"])
            docs.append(d)
    return docs


def canonical_docs(seller_tax_id: str, n: int) -> list[dict[str, Any]]:
    """The issuer's canonical form of fresh invoices: exactly what the sync service submits."""
    from services.issuer.rules import canonical
    from services.issuer.schemas import InvoiceCreate

    return [canonical(InvoiceCreate.model_validate(d)) for d in make_docs(seller_tax_id, n)]


class LeanHttp:
    """A minimal HTTP/1.1 keep-alive client for the load itself (httpx costs several ms of CPU per request at
    high concurrency, CPU the services need on a 2-core machine). Control calls use httpx."""

    def __init__(self, base_url: str, *, max_idle_s: float = 2.0) -> None:
        url = httpx.URL(base_url)
        self.host, self.port = url.host, url.port or 80
        self.max_idle_s = max_idle_s  # below uvicorn's 5 s keep-alive: never reuse a connection it is closing
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        now = time.monotonic()
        while self._idle:
            reader, writer, used = self._idle.pop()
            if now - used < self.max_idle_s and not writer.is_closing() and not reader.at_eof():
                return reader, writer
            writer.close()
        return await asyncio.wait_for(asyncio.open_connection(self.host, self.port), 10)

    async def request(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
                      timeout: float = 60) -> tuple[int, bytes]:
        reader, writer = await self._connection()
        try:
            head = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                    f"Content-Length: {len(body)}\r\n"
                    + "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items()) + "\r\n")
            writer.write(head.encode("latin-1") + body)
            status, close, data = await asyncio.wait_for(self._response(reader), timeout)
        except BaseException:
            writer.close()
            raise
        if close:
            writer.close()
        else:
            self._idle.append((reader, writer, time.monotonic()))
        return status, data

    @staticmethod
    async def _response(reader: asyncio.StreamReader) -> tuple[int, bool, bytes]:
        lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        hdrs = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                hdrs[name.strip().lower()] = value.strip()
        close = hdrs.get("connection", "").lower() == "close"
        if "content-length" in hdrs:
            return status, close, await reader.readexactly(int(hdrs["content-length"]))
        if hdrs.get("transfer-encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunk = await reader.readexactly(size + 2)
                if size == 0:
                    return status, close, b"".join(chunks)
                chunks.append(chunk[:-2])
        return status, True, await reader.read()

    def close(self) -> None:
        for _, writer, _ in self._idle:
            writer.close()
        self._idle.clear()


class RoundRobin:
    """Requests spread over every replica of a service in turn, one keep-alive client each (the bench's own
    balancing: a TCP balancer in between would spend CPU this 2-core machine needs for the services)."""

    def __init__(self, clients: list[LeanHttp]) -> None:
        self.clients = clients
        self._next = 0

    async def request(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
                      timeout: float = 60) -> tuple[int, bytes]:
        client = self.clients[self._next % len(self.clients)]
        self._next += 1
        return await client.request(method, path, body, headers, timeout)

    def close(self) -> None:
        for client in self.clients:
            client.close()


@dataclass
class Ctx:
    stack: Stack
    http: httpx.AsyncClient
    db: Any  # asyncpg connection, for the issuer's status counts
    sampler: CpuSampler
    lean: dict[str, RoundRobin] = field(default_factory=dict)
    # (accepted_at, stored_at) epoch seconds of every measured invoice, by chart phase: the chart's series
    timings: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    def load(self, service: str) -> RoundRobin:
        if service not in self.lean:
            self.lean[service] = RoundRobin([LeanHttp(p.url) for p in self.stack.processes(service)])
        return self.lean[service]

    def url(self, service: str) -> str:
        return self.stack.services[service].url

    async def new_tenant(self, label: str) -> dict[str, Any]:
        from tests.factories import uscc

        r = await self.http.post(f"{self.url('issuer')}/admin/tenants", headers=self.stack.admin,
                                 json={"name": f"基准测试 Bench {label}", "tax_id": uscc()})
        if r.status_code != 201:
            raise BenchError(f"creating a tenant failed: HTTP {r.status_code} {r.text[:300]}")
        body = r.json()
        body["headers"] = {"Authorization": f"Bearer {body['api_key']}", "Content-Type": "application/json"}
        return body

    async def stored(self) -> int:
        """The tax store's in-memory 'stored' counter (new invoices stored since it started)."""
        r = await self.http.get(f"{self.url('taxstore')}/admin/stats", headers=self.stack.admin)
        if r.status_code != 200:
            raise BenchError(f"taxstore /admin/stats: HTTP {r.status_code} {r.text[:200]}")
        return int(r.json()["stored"])

    async def statuses(self, tenant_id: str) -> dict[str, int]:
        rows = await self.db.fetch(
            "select status, count(*) as n from issuer.invoices where tenant_id = $1 group by status",
            uuid.UUID(tenant_id))
        return {r["status"]: int(r["n"]) for r in rows}

    async def listing(self, seller_tax_id: str) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        cursor = None
        while True:
            params: dict[str, Any] = {"seller_tax_id": seller_tax_id, "limit": 1000}
            if cursor:
                params["cursor"] = cursor
            r = await self.http.get(f"{self.url('taxstore')}/v1/invoices", params=params)
            if r.status_code != 200:
                raise BenchError(f"taxstore listing: HTTP {r.status_code} {r.text[:200]}")
            body = r.json()
            for item in body["items"]:
                out[item["number"]] = item
            cursor = body.get("next_cursor")
            if not cursor:
                return out


async def post_issuer_batches(ctx: Ctx, tenant: dict[str, Any], docs: list[dict[str, Any]],
                              concurrency: int) -> None:
    bodies = [orjson.dumps({"invoices": docs[i:i + ISSUER_BATCH]}) for i in range(0, len(docs), ISSUER_BATCH)]
    sizes = [len(docs[i:i + ISSUER_BATCH]) for i in range(0, len(docs), ISSUER_BATCH)]
    sem = asyncio.Semaphore(concurrency)
    http = ctx.load("issuer")

    async def one(body: bytes, size: int) -> None:
        async with sem:
            status, data = await http.request("POST", "/v1/invoices/batch", body, tenant["headers"], timeout=120)
        if status != 200:
            raise BenchError(f"issuer batch: HTTP {status} {data[:300]!r}")
        created = orjson.loads(data)["created"]
        if created != size:
            raise BenchError(f"issuer batch created {created} of {size}: {data[:300]!r}")

    await asyncio.gather(*(one(b, s) for b, s in zip(bodies, sizes, strict=True)))


# --- (a) raw Kafka ---------------------------------------------------------------------------------

def _write(path: Path, text: str) -> None:
    path.write_text(text)


async def raw_consumer_main(args: argparse.Namespace) -> None:
    """The consuming half of phase (a), in its own process (as the sync service is)."""
    from shared.kafka import make_consumer

    out = Path(args.out)
    consumer = make_consumer(args.bootstrap, args.topic, group_id=args.group, max_poll_records=args.max_poll)
    await asyncio.wait_for(consumer.start(), 30)
    try:
        deadline = time.monotonic() + 30
        while len(consumer.assignment()) < args.partitions:
            if time.monotonic() > deadline:
                raise BenchError(f"raw consumer got {len(consumer.assignment())} of {args.partitions} partitions")
            await consumer.getmany(timeout_ms=100)
        _write(out.parent / (out.name + ".ready"), "ready")
        received, first, last, commits = 0, None, None, 0
        deadline = time.monotonic() + args.timeout
        while received < args.count:
            if time.monotonic() > deadline:
                raise BenchError(f"raw consumer received {received} of {args.count} in {args.timeout:.0f}s")
            batches = await consumer.getmany(timeout_ms=200)
            n = sum(len(recs) for recs in batches.values())
            if n:
                now = time.time()
                first = first or now
                last = now
                received += n
                await consumer.commit()  # manual commit per batch, as the services do
                commits += 1
        t = os.times()
        _write(out, json.dumps({"received": received, "first_recv": first, "last_recv": last,
                                   "commits": commits, "cpu_s": t.user + t.system}))
    finally:
        await asyncio.wait_for(consumer.stop(), 10)


async def phase_raw_kafka(ctx: Ctx, n: int, partitions: int, max_poll: int, timeout: float) -> dict[str, Any]:
    from shared.content import content_hash
    from shared.envelope import encode, new_envelope
    from shared.events import INVOICE_ISSUED, ISSUER_SOURCE
    from shared.kafka import ensure_topics, make_producer
    from shared.topics import Topic
    from tests.factories import uscc

    stack = ctx.stack
    assert stack.kafka is not None
    seller = uscc()
    doc = canonical_docs(seller, 1)[0]
    invoice_id, tenant_id = uuid.uuid4(), uuid.uuid4()
    envelope = new_envelope(
        source=ISSUER_SOURCE, type=INVOICE_ISSUED, subject=str(invoice_id), tenant=str(tenant_id), sequence=1,
        data={"invoice_id": str(invoice_id), "tenant_id": str(tenant_id), "seller_tax_id": seller,
              "number": doc["number"], "content_hash": content_hash(doc),
              "accepted_at": datetime.now(UTC).isoformat(), "invoice": doc})
    payload = encode(envelope)
    topic = Topic(f"bench.raw-{uuid.uuid4().hex[:6]}.v1", "bench: raw produce/consume")
    await ensure_topics(stack.kafka.bootstrap, [topic], prefix=stack.topic_prefix, partitions=partitions)
    qualified = topic.qualified(stack.topic_prefix)
    out = stack.workdir / "raw-consumer.json"
    ready = out.parent / (out.name + ".ready")
    proc = spawn([sys.executable, "-m", "fapiao.bench", "_raw-consumer", "--bootstrap", stack.kafka.bootstrap,
                  "--topic", qualified, "--group", f"{stack.topic_prefix}bench.raw", "--count", str(n),
                  "--partitions", str(partitions), "--max-poll", str(max_poll), "--timeout", str(timeout),
                  "--out", str(out)],
                 log_path=stack.workdir / "logs" / "raw-consumer.log", cwd=REPO_ROOT, die_with_parent=True)
    stack.extra_procs.append(proc)
    deadline = time.monotonic() + 60
    while not ready.exists():
        if proc.poll() is not None:
            raise BenchError(f"raw consumer exited early; see {stack.workdir / 'logs' / 'raw-consumer.log'}")
        if time.monotonic() > deadline:
            raise BenchError("raw consumer did not join its group within 60s")
        await asyncio.sleep(0.05)
    keys = [str(uuid.uuid4()).encode() for _ in range(n)]  # spread over partitions like invoice ids
    producer = make_producer(stack.kafka.bootstrap)
    await asyncio.wait_for(producer.start(), 30)
    before = ctx.sampler.snapshot()
    try:
        t0 = time.time()
        futures = [await producer.send(qualified, value=payload, key=k,
                                       headers=[("content-type", b"application/cloudevents+json")]) for k in keys]
        await asyncio.wait_for(asyncio.gather(*futures), timeout)
        t_acked = time.time()
    finally:
        await asyncio.wait_for(producer.stop(), 10)
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if time.monotonic() > deadline:
            raise BenchError(f"raw consumer did not finish within {timeout:.0f}s")
        await asyncio.sleep(0.05)
    cpu = CpuSampler.delta(before, ctx.sampler.snapshot())
    if proc.returncode != 0 or not out.exists():
        raise BenchError(f"raw consumer failed (exit {proc.returncode}); see its log in {stack.workdir / 'logs'}")
    res = json.loads(out.read_text())
    elapsed = res["last_recv"] - t0
    cpu["cpu_s"]["raw consumer process"] = round(res["cpu_s"], 2)
    cpu["ours_cpu_s"] = round(cpu["ours_cpu_s"] + res["cpu_s"], 2)
    cpu["other_processes_cpu_s"] = round(max(0.0, cpu["machine_busy_cpu_s"] - cpu["ours_cpu_s"]), 2)
    return {
        "messages": n, "payload_bytes": len(payload), "partitions": partitions, "topic": qualified,
        "producer": "shared.kafka.make_producer (acks=all, idempotent, linger 5 ms)",
        "consumer": f"shared.kafka.make_consumer in a second process, group, max_poll_records={max_poll}, "
                    "commit per poll",
        "commits": res["commits"], "produce_acked_s": round(t_acked - t0, 3), "elapsed_s": round(elapsed, 3),
        "messages_per_s": round(n / elapsed, 1), "cpu": cpu,
    }


# --- (b) end to end --------------------------------------------------------------------------------

def past_submit(counts: dict[str, int]) -> int:
    """Invoices the store has answered for (with the reconciler running they go on to `confirmed`)."""
    return counts.get("submitted", 0) + counts.get("confirmed", 0)


async def warm_up(ctx: Ctx, timeout: float) -> None:
    """A few invoices through the whole pipeline: topics exist, every consumer has joined its group."""
    tenant = await ctx.new_tenant("warm-up")
    docs = make_docs(tenant["tax_id"], 20)
    await post_issuer_batches(ctx, tenant, docs, 1)

    async def done() -> Any:
        return past_submit(await ctx.statuses(tenant["id"])) == len(docs) or False

    await poll_until(done, timeout=timeout, what="warm-up invoices submitted end to end", interval=0.25)


async def db_counters(db: Any) -> dict[str, Any]:
    """PostgreSQL's own counters for the services' database: rows written per schema, commits, WAL position."""
    rows = await db.fetch(
        "select schemaname, sum(n_tup_ins)::bigint as ins, sum(n_tup_upd)::bigint as upd, "
        "sum(n_tup_hot_upd)::bigint as hot, sum(n_tup_del)::bigint as del "
        "from pg_stat_user_tables group by schemaname")
    totals = await db.fetchrow("select xact_commit, pg_current_wal_lsn()::text as lsn, "
                               "pg_database_size(current_database()) as size "
                               "from pg_stat_database where datname = current_database()")
    return {"schemas": {r["schemaname"]: {k: int(r[k] or 0) for k in ("ins", "upd", "hot", "del")} for r in rows},
            "commits": int(totals["xact_commit"]), "lsn": totals["lsn"], "size": int(totals["size"])}


async def db_writes(db: Any, before: dict[str, Any], n: int) -> dict[str, Any]:
    """What one invoice cost PostgreSQL between two readings. The counters are the ones each backend reports when
    it next flushes (at most a second late while it works): wait that out first. Commits count every transaction
    in the database, the benchmark's own polling included (a few dozen)."""
    await asyncio.sleep(2.5)
    after = await db_counters(db)
    wal = await db.fetchval("select pg_wal_lsn_diff(cast($1::text as pg_lsn), cast($2::text as pg_lsn))",
                            after["lsn"], before["lsn"])
    per_schema = {}
    for schema, a in after["schemas"].items():
        b = before["schemas"].get(schema, {})
        d = {k: a[k] - b.get(k, 0) for k in a}
        if any(d.values()):
            per_schema[schema] = {"inserted_per_invoice": round(d["ins"] / n, 2),
                                  "updated_per_invoice": round(d["upd"] / n, 2),
                                  "hot_updated_per_invoice": round(d["hot"] / n, 2),
                                  "deleted_per_invoice": round(d["del"] / n, 2)}
    rows = sum(v["inserted_per_invoice"] + v["updated_per_invoice"] + v["deleted_per_invoice"]
               for v in per_schema.values())
    return {"rows_written_per_invoice": round(rows, 2), "commits_per_invoice": round(
        (after["commits"] - before["commits"]) / n, 3), "wal_bytes_per_invoice": round(float(wal) / n),
        # tables and indexes grown (before any vacuum: rows a later clean-up deletes, such as sent outbox rows, count)
        "database_bytes_per_invoice": round((after["size"] - before["size"]) / n), "per_schema": per_schema}


async def kafka_records(ctx: Ctx) -> dict[str, int]:
    """Records each of the pipeline's topics holds now, by unprefixed name."""
    from shared.kafka import OffsetReader
    from shared.topics import ALL_TOPICS

    assert ctx.stack.kafka is not None
    reader = OffsetReader(ctx.stack.kafka.bootstrap, timeout=10)
    try:
        sizes = await reader.sizes([t.qualified(ctx.stack.topic_prefix) for t in ALL_TOPICS])
    finally:
        await reader.close()
    return {k.removeprefix(ctx.stack.topic_prefix): v for k, v in sizes.items()}


async def phase_end_to_end(ctx: Ctx, n: int, concurrency: int, timeout: float) -> dict[str, Any]:
    tenant = await ctx.new_tenant("e2e")
    docs = make_docs(tenant["tax_id"], n)
    stored0 = await ctx.stored()
    db0 = await db_counters(ctx.db)
    kafka0 = await kafka_records(ctx)
    before = ctx.sampler.snapshot()
    t0 = time.monotonic()
    sender = asyncio.create_task(post_issuer_batches(ctx, tenant, docs, concurrency))
    marks: dict[str, float] = {}
    last_report = next_db = t0
    stored, counts = 0, {}
    try:
        while True:
            now = time.monotonic()
            if sender.done() and "ingested" not in marks:
                sender.result()  # raise its error, if any
                marks["ingested"] = now - t0
            stored = await ctx.stored() - stored0
            if now >= next_db:  # the status count scans the tenant's rows: less often
                counts = await ctx.statuses(tenant["id"])
                next_db = now + 0.5
            now = time.monotonic()
            if "taxstore_all_stored" not in marks and stored >= n:
                marks["taxstore_all_stored"] = now - t0
            if "issuer_all_published" not in marks and sum(counts.values()) == n and not counts.get("accepted"):
                marks["issuer_all_published"] = now - t0
            if "issuer_all_submitted" not in marks and past_submit(counts) >= n:
                marks["issuer_all_submitted"] = now - t0
            if ctx.stack.reconciler and "issuer_all_confirmed" not in marks and counts.get("confirmed", 0) >= n:
                marks["issuer_all_confirmed"] = now - t0
            bad = {k: v for k, v in counts.items() if k not in ("accepted", "published", "submitted", "confirmed")}
            if bad.get("rejected"):
                raise BenchError(f"the pipeline rejected invoices: {counts}; see the service logs")
            if {"ingested", "taxstore_all_stored", "issuer_all_submitted",
                    *(["issuer_all_confirmed"] if ctx.stack.reconciler else [])} <= marks.keys():
                break
            if now - t0 > timeout:
                raise BenchError(f"end to end: not done within {timeout:.0f}s: tax store stored {stored}/{n}, "
                                 f"issuer statuses {counts}")
            if now - last_report >= 5:
                say(f"  e2e {now - t0:5.1f}s: tax store {stored}/{n}, issuer {counts}")
                last_report = now
            await asyncio.sleep(0.25)
    finally:
        if not sender.done():
            sender.cancel()
            with contextlib.suppress(BaseException):
                await sender
    cpu = CpuSampler.delta(before, ctx.sampler.snapshot())
    return {
        "invoices": n, "issuer_batch_size": ISSUER_BATCH, "concurrent_requests": concurrency,
        "database": await db_writes(ctx.db, db0, n),
        "kafka_records_per_invoice": {t: round((m - kafka0.get(t, 0)) / n, 3)
                                      for t, m in (await kafka_records(ctx)).items() if m > kafka0.get(t, 0)},
        "milestones_s": {k: round(v, 2) for k, v in marks.items()},
        "issuer_ingest_per_s": round(n / marks["ingested"], 1),
        "stored_per_s": round(n / marks["taxstore_all_stored"], 1),
        "submitted_per_s": round(n / marks["issuer_all_submitted"], 1),
        **({"confirmed_per_s": round(n / marks["issuer_all_confirmed"], 1)} if "issuer_all_confirmed" in marks else {}),
        "poll_interval_s": {"taxstore_stats": 0.25, "issuer_db": 0.5}, "cpu": cpu,
    }


# --- (c) latency at a fixed offered rate ------------------------------------------------------------

async def phase_latency(ctx: Ctx, rate: float, duration: float, concurrency: int, timeout: float,
                        chart: str | None = None) -> dict[str, Any]:
    """Open loop: request i is due at start + i/rate whatever happened to the earlier ones; at most
    `concurrency` are in flight (a due request waits for a free slot: its lateness is recorded). Requests
    still waiting for a slot at start + 2 x duration are not sent, so an overloaded issuer cannot stretch
    the phase without bound."""
    tenant = await ctx.new_tenant("latency")
    count = max(1, int(rate * duration))
    bodies = [orjson.dumps(d) for d in make_docs(tenant["tax_id"], count)]
    http = ctx.load("issuer")
    sem = asyncio.Semaphore(concurrency)
    accepted: dict[str, datetime] = {}
    client_ms: list[float] = []
    late_ms: list[float] = []
    sent_at: list[float] = []
    not_sent = 0
    errors: list[str] = []
    stored0 = await ctx.stored()
    db0 = await db_counters(ctx.db)
    loop = asyncio.get_running_loop()

    async def one(body: bytes, scheduled: float) -> None:
        nonlocal not_sent
        async with sem:
            sent = loop.time()
            if sent > cutoff:
                not_sent += 1
                return
            sent_at.append(sent)
            late_ms.append((sent - scheduled) * 1000)
            try:
                status, data = await http.request("POST", "/v1/invoices", body, tenant["headers"], timeout=30)
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                return
            client_ms.append((loop.time() - sent) * 1000)
        if status != 201:
            errors.append(f"HTTP {status} {data[:200]!r}")
            return
        inv = orjson.loads(data)
        accepted[inv["number"]] = datetime.fromisoformat(inv["accepted_at"])

    before = ctx.sampler.snapshot()
    start = loop.time() + 0.1
    cutoff = start + 2 * duration
    tasks = []
    for i, body in enumerate(bodies):
        scheduled = start + i / rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(body, scheduled)))
    await asyncio.gather(*tasks)
    send_span = max(sent_at) - min(sent_at)
    if errors:
        say(f"  {len(errors)} of {count} POSTs failed; first: {errors[0]}")
    if not_sent:
        say(f"  {not_sent} of {count} not sent: no free slot before {2 * duration:g}s (the issuer is saturated)")
    ok = len(accepted)

    async def all_stored() -> Any:
        return (await ctx.stored() - stored0) >= ok or False

    await poll_until(all_stored, timeout=timeout, what=f"tax store holds the {ok} latency invoices")
    cpu = CpuSampler.delta(before, ctx.sampler.snapshot())
    listed = await ctx.listing(tenant["tax_id"])
    lat = sorted((datetime.fromisoformat(listed[num]["stored_at"]) - acc).total_seconds() * 1000
                 for num, acc in accepted.items() if num in listed)
    if chart:
        ctx.timings.setdefault(chart, []).extend(
            (acc.timestamp(), datetime.fromisoformat(listed[num]["stored_at"]).timestamp())
            for num, acc in accepted.items() if num in listed)

    async def all_submitted() -> Any:  # let the results flow back before the next phase
        return past_submit(await ctx.statuses(tenant["id"])) >= ok or False

    await poll_until(all_submitted, timeout=timeout, what="issuer shows the latency invoices submitted")
    database = await db_writes(ctx.db, db0, ok) if ok else None
    client_ms.sort()
    late_sorted = sorted(late_ms)
    return {
        "offered_rate_per_s": rate, "duration_s": duration, "scheduled": count, "max_concurrency": concurrency,
        "sent": len(sent_at), "not_sent_overload": not_sent, "accepted": ok, "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "measured": len(lat),
        "achieved_send_rate_per_s": round((count - 1) / send_span, 1) if send_span > 0 else None,
        "sent_late_over_10ms": sum(1 for x in late_ms if x > 10),
        "send_phase_s": round(send_span, 2),
        "send_lateness_ms": {"p50": round(percentile(late_sorted, 50), 1),
                             "max": round(late_sorted[-1], 1) if late_sorted else None},
        "latency_ms": {"p50": round(percentile(lat, 50), 1), "p95": round(percentile(lat, 95), 1),
                       "p99": round(percentile(lat, 99), 1), "max": round(lat[-1], 1) if lat else None,
                       "min": round(lat[0], 1) if lat else None},
        "issuer_post_ms": {"p50": round(percentile(client_ms, 50), 1), "p99": round(percentile(client_ms, 99), 1)},
        "definition": "taxstore stored_at (PostgreSQL now() of the storing transaction) minus issuer accepted_at "
                      "(the issuer process's clock when it handled the POST); one host, one clock",
        "cpu": cpu, "database": database,
    }


# --- (e) step load, (f) live traffic right after a batch -------------------------------------------------

async def phase_steps(ctx: Ctx, rates: list[float], step_s: float, concurrency: int, timeout: float,
                      limit_ms: float = STEP_P99_LIMIT_MS) -> dict[str, Any]:
    """(c) at each rate in turn, `step_s` seconds each, until the p99 passes `limit_ms` or the issuer cannot take
    the offered rate (fewer than 90 % sent on time); the highest rate that kept p99 within the limit."""
    steps: list[dict[str, Any]] = []
    best = None
    for rate in rates:
        say(f"(e) step load: {rate:g}/s for {step_s:g}s")
        r = await phase_latency(ctx, rate, step_s, concurrency, timeout, chart="(e) step load")
        p99 = r["latency_ms"]["p99"]
        kept_up = (r["achieved_send_rate_per_s"] or 0) >= 0.9 * rate and not r["not_sent_overload"]
        steps.append({"rate_per_s": rate, "p50_ms": r["latency_ms"]["p50"], "p99_ms": p99,
                      "sent_per_s": r["achieved_send_rate_per_s"], "measured": r["measured"], "kept_up": kept_up,
                      "accepted": r["accepted"], "cpu": r["cpu"]})
        say(f"    p50 {r['latency_ms']['p50']} ms, p99 {p99} ms, sent at {r['achieved_send_rate_per_s']}/s")
        if p99 > limit_ms or not kept_up:
            break
        best = rate
    return {"p99_limit_ms": limit_ms, "step_s": step_s, "steps": steps, "highest_rate_within_limit": best}


async def phase_after_batch(ctx: Ctx, n: int, rate: float, duration: float, concurrency: int,
                            timeout: float) -> dict[str, Any]:
    """A batch of `n` answered by the issuer, then at once single POSTs at `rate` for `duration` while the
    pipeline still works the batch off: how long live invoices wait behind a month-end run."""
    tenant = await ctx.new_tenant("after-batch")
    t0 = time.monotonic()
    await post_issuer_batches(ctx, tenant, make_docs(tenant["tax_id"], n), 2)
    answered = time.monotonic() - t0
    waiting = await ctx.statuses(tenant["id"])
    say(f"    batch of {n:,} answered in {answered:.1f}s; the singles start while the issuer shows {waiting}")
    r = await phase_latency(ctx, rate, duration, concurrency, timeout, chart="(f) after a batch")
    return {"batch": n, "batch_answered_s": round(answered, 2), "batch_statuses_at_start": waiting,
            "offered_rate_per_s": rate, "duration_s": duration, "latency_ms": r["latency_ms"],
            "measured": r["measured"], "accepted": r["accepted"], "sent_per_s": r["achieved_send_rate_per_s"],
            "cpu": r["cpu"], "cpu_note": "CPU while the singles ran; the batch's own work goes on meanwhile"}


# --- (g) a store outage under load, and the drain after it ---------------------------------------------

async def post_one(http: Any, body: bytes, headers: dict[str, str], errors: list[str]) -> dict[str, Any] | None:
    """One POST /v1/invoices over the bench's raw client: the invoice when it was accepted (201), else None with
    what went wrong added to `errors`."""
    try:
        status, data = await http.request("POST", "/v1/invoices", body, headers, timeout=30)
    except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
        return None
    if status != 201:
        errors.append(f"HTTP {status} {data[:200]!r}")
        return None
    invoice: dict[str, Any] = orjson.loads(data)
    return invoice


async def put_faults(ctx: Ctx, values: dict[str, Any]) -> None:
    """The tax store's simulated faults, changed over its admin API (any subset of the knobs)."""
    r = await ctx.http.put(f"{ctx.url('taxstore')}/admin/faults", headers=ctx.stack.admin, json=values, timeout=10)
    if r.status_code != 200:
        raise BenchError(f"taxstore PUT /admin/faults {values}: HTTP {r.status_code} {r.text[:200]}")


async def phase_outage_drain(ctx: Ctx, rate: float, outage_s: float, after_s: float, concurrency: int,
                             timeout: float) -> dict[str, Any]:
    """Single POSTs at `rate` for `outage_s + after_s` seconds (open loop); the tax store is down (its
    `outage` fault: every request refused) for the first `outage_s`. The store's stored counter is read every
    0.25 s: how long after the store's return the first invoice is stored, how fast the backlog drains (the
    best DRAIN_WINDOW_S window, and as a multiple of the offered rate), and when every accepted invoice is
    stored. The fault is always turned off again, whatever happens."""
    tenant = await ctx.new_tenant("outage")
    total = outage_s + after_s
    bodies = [orjson.dumps(d) for d in make_docs(tenant["tax_id"], max(1, int(rate * total)))]
    http = ctx.load("issuer")
    sem = asyncio.Semaphore(concurrency)
    loop = asyncio.get_running_loop()
    accepted = 0
    accepted_at: dict[str, datetime] = {}
    errors: list[str] = []
    series: list[tuple[float, int]] = []

    async def one(body: bytes) -> None:
        nonlocal accepted
        async with sem:
            inv = await post_one(http, body, tenant["headers"], errors)
        if inv is not None:
            accepted += 1
            accepted_at[inv["number"]] = datetime.fromisoformat(inv["accepted_at"])

    async def watch(stop: asyncio.Event) -> None:
        while not stop.is_set():
            series.append((loop.time(), await ctx.stored()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.25)

    stored0 = await ctx.stored()
    before = ctx.sampler.snapshot()
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch(stop))
    await put_faults(ctx, {"outage": True})
    try:
        start = loop.time() + 0.1
        recovered_at: float | None = None
        tasks = []
        for i, body in enumerate(bodies):
            due = start + i / rate
            if recovered_at is None and due >= start + outage_s:
                await asyncio.sleep(max(0.0, start + outage_s - loop.time()))
                await put_faults(ctx, {"outage": False})
                recovered_at = loop.time()
                say(f"    store back after {outage_s:g}s; {accepted:,} accepted so far")
            await asyncio.sleep(max(0.0, due - loop.time()))
            tasks.append(asyncio.create_task(one(body)))
        if recovered_at is None:
            await put_faults(ctx, {"outage": False})
            recovered_at = loop.time()
        await asyncio.gather(*tasks)

        async def all_stored() -> Any:
            return (await ctx.stored() - stored0) >= accepted or False

        await poll_until(all_stored, timeout=timeout, what=f"tax store holds the {accepted:,} outage invoices")
    finally:
        stop.set()
        await watcher
        with contextlib.suppress(Exception):
            await put_faults(ctx, {"outage": False})
    done_at = loop.time()
    cpu = CpuSampler.delta(before, ctx.sampler.snapshot())
    listed = await ctx.listing(tenant["tax_id"])
    ctx.timings["(g) store outage"] = [(acc.timestamp(), datetime.fromisoformat(listed[num]["stored_at"]).timestamp())
                                       for num, acc in accepted_at.items() if num in listed]
    during = [n for t, n in series if t <= recovered_at]
    at_recovery = during[-1] if during else stored0
    after = [(t - recovered_at, n) for t, n in series if t > recovered_at]
    first = next((t for t, n in after if n > at_recovery), None)
    best = 0.0
    for i, (t_i, n_i) in enumerate(after):  # the best window that starts at a sample and lasts DRAIN_WINDOW_S
        ends = [(t, n) for t, n in after[i:] if t - t_i <= DRAIN_WINDOW_S]
        if len(ends) > 1 and ends[-1][0] - t_i >= DRAIN_WINDOW_S * 0.8:
            best = max(best, (ends[-1][1] - n_i) / (ends[-1][0] - t_i))
    if errors:
        say(f"  {len(errors)} of {len(bodies)} POSTs failed; first: {errors[0]}")
    return {
        "offered_rate_per_s": rate, "outage_s": outage_s, "after_s": after_s, "sent": len(bodies),
        "accepted": accepted, "errors": len(errors), "first_error": errors[0] if errors else None,
        "stored_during_outage": at_recovery - stored0,
        "backlog_at_recovery": max(0, round(rate * outage_s) - (at_recovery - stored0)),
        "first_stored_after_recovery_s": round(first, 2) if first is not None else None,
        "best_drain_per_s": round(best, 1), "drain_vs_offered": round(best / rate, 2) if rate else None,
        "all_stored_after_recovery_s": round(done_at - recovered_at, 2), "sample_interval_s": 0.25,
        "definition": "the tax store's stored counter, read every 0.25 s; the drain is the best "
                      f"{DRAIN_WINDOW_S:g} s window after the store's return (offered load included)",
        "cpu": cpu,
    }


# --- (d) the tax store on its own -------------------------------------------------------------------

async def phase_taxstore(ctx: Ctx, n_batch: int, n_single: int, batch_size: int, in_flight: int,
                         single_concurrency: int) -> dict[str, Any]:
    from tests.factories import uscc

    http = ctx.load("taxstore")
    docs_b = canonical_docs(uscc(), n_batch)
    docs_s = canonical_docs(uscc(), n_single)
    bodies = [orjson.dumps({"submissions": [{"invoice": d} for d in docs_b[i:i + batch_size]]})
              for i in range(0, n_batch, batch_size)]
    singles = [orjson.dumps({"invoice": d}) for d in docs_s]
    headers = {"Content-Type": "application/json"}

    async def run(items: list[bytes], path: str, concurrency: int, check: Callable[[int, bytes], None]) -> float:
        sem = asyncio.Semaphore(concurrency)

        async def one(body: bytes) -> None:
            async with sem:
                status, data = await http.request("POST", path, body, headers, timeout=60)
            check(status, data)

        t0 = time.monotonic()
        await asyncio.gather(*(one(b) for b in items))
        return time.monotonic() - t0

    def check_batch(status: int, data: bytes) -> None:
        if status != 200:
            raise BenchError(f"taxstore batch: HTTP {status} {data[:300]!r}")
        statuses = {item["status"] for item in orjson.loads(data)["results"]}
        if statuses != {201}:
            raise BenchError(f"taxstore batch: item statuses {statuses}: {data[:300]!r}")

    def check_single(status: int, data: bytes) -> None:
        if status != 201:
            raise BenchError(f"taxstore single: HTTP {status} {data[:300]!r}")

    before = ctx.sampler.snapshot()
    t_batch = await run(bodies, "/v1/invoices/batch", in_flight, check_batch)
    mid = ctx.sampler.snapshot()
    t_single = await run(singles, "/v1/invoices", single_concurrency, check_single)
    after = ctx.sampler.snapshot()
    return {
        "batch": {"invoices": n_batch, "batch_size": batch_size, "in_flight": in_flight,
                  "elapsed_s": round(t_batch, 3), "invoices_per_s": round(n_batch / t_batch, 1),
                  "cpu": CpuSampler.delta(before, mid)},
        "single": {"invoices": n_single, "concurrency": single_concurrency, "elapsed_s": round(t_single, 3),
                   "invoices_per_s": round(n_single / t_single, 1), "cpu": CpuSampler.delta(mid, after)},
    }


# --- (j) raw PostgreSQL: asyncpg COPY of the issuer's rows -------------------------------------------------

COPY_TABLES = ("invoices", "invoice_timeline", "outbox")  # what the issuer inserts per accepted invoice


def issuer_rows(docs: list[dict[str, Any]], tenant_id: uuid.UUID, seller: str, topic: str, first_id: int
                ) -> list[tuple[tuple[Any, ...], tuple[Any, ...], tuple[Any, ...]]]:
    """Per invoice, the three rows the issuer writes when it accepts it (services/issuer/invoices/issuing.py:
    `_insert` and `_record_issued`): the invoice with its canonical document, the `accepted` timeline entry and
    the outbox row with the encoded `issued` envelope. Columns in COPY_COLUMNS order."""
    from services.issuer.rules import canonical
    from services.issuer.schemas import InvoiceCreate
    from shared.content import content_hash
    from shared.envelope import encode, new_envelope
    from shared.events import INVOICE_ISSUED, ISSUER_SOURCE, InvoiceIssued

    out = []
    now = datetime.now(UTC)
    for i, raw in enumerate(docs):
        inv = InvoiceCreate.model_validate(raw)
        doc = canonical(inv)
        digest = content_hash(doc)
        iid = uuid.uuid4()
        envelope = new_envelope(source=ISSUER_SOURCE, subject=str(iid), tenant=str(tenant_id), sequence=1,
                                event=InvoiceIssued(invoice_id=iid, tenant_id=tenant_id, seller_tax_id=seller,
                                                    number=inv.number, content_hash=digest, accepted_at=now,
                                                    invoice=doc))
        out.append((
            (iid, tenant_id, seller, inv.number, inv.kind, inv.issue_date, inv.buyer.tax_id or None, inv.buyer.name,
             Decimal(inv.total_amount), Decimal(inv.total_tax), Decimal(inv.total), inv.currency,
             orjson.dumps(doc).decode(), digest, "batch", "accepted", 1, now, now, now),
            (first_id + i, iid, now, "accepted", f"Accepted via batch; event {envelope.id} queued for {topic}",
             orjson.dumps({"event_id": envelope.id, "content_hash": digest}).decode()),
            (first_id + i, topic, str(iid), envelope.id, INVOICE_ISSUED, encode(envelope)),
        ))
    return out


COPY_COLUMNS = {
    "invoices": ("id", "tenant_id", "seller_tax_id", "number", "kind", "issue_date", "buyer_tax_id", "buyer_name",
                 "total_amount", "total_tax", "total", "currency", "content", "content_hash", "source", "status",
                 "event_seq", "accepted_at", "updated_at", "status_since"),
    "invoice_timeline": ("id", "invoice_id", "at", "kind", "message", "detail"),
    "outbox": ("id", "topic", "key", "event_id", "event_type", "payload"),
}


async def phase_raw_copy(ctx: Ctx, n: int, concurrency: int, chunk: int = ISSUER_BATCH) -> dict[str, Any]:
    """The issuer's rows for `n` invoices (built before the clock starts) COPYed with asyncpg
    `copy_records_to_table` into scratch tables made LIKE the issuer's (same columns, defaults and indexes; no
    foreign keys), `chunk` invoices per transaction, `concurrency` connections: what PostgreSQL alone takes,
    with fsync and synchronous_commit as the services run."""
    import asyncpg

    from tests.factories import uscc

    assert ctx.stack.pg is not None
    schema = f"bench_copy_{uuid.uuid4().hex[:6]}"
    await ctx.db.execute(f"create schema {schema}")
    for table in COPY_TABLES:
        await ctx.db.execute(f"create table {schema}.{table} (like issuer.{table} including defaults "
                             "including identity including indexes including constraints)")
    seller = uscc()
    rows = issuer_rows(make_docs(seller, n), uuid.uuid4(), seller, "invoice.events.v1", 1)
    chunks = [rows[i:i + chunk] for i in range(0, n, chunk)]
    conns = [await asyncpg.connect(ctx.stack.pg.url(driver="postgresql"), timeout=10) for _ in range(concurrency)]
    queue = list(reversed(chunks))

    async def writer(conn: Any) -> None:
        while queue:
            part = queue.pop()
            async with conn.transaction():
                for k, table in enumerate(COPY_TABLES):
                    await conn.copy_records_to_table(table, schema_name=schema, columns=COPY_COLUMNS[table],
                                                     records=[r[k] for r in part])

    try:
        before = ctx.sampler.snapshot()
        t0 = time.monotonic()
        await asyncio.gather(*(writer(c) for c in conns))
        elapsed = time.monotonic() - t0
        cpu = CpuSampler.delta(before, ctx.sampler.snapshot())
    finally:
        for c in conns:
            await c.close()
        await ctx.db.execute(f"drop schema {schema} cascade")
    written = n * len(COPY_TABLES)
    return {
        "invoices": n, "rows": written, "rows_per_invoice": len(COPY_TABLES), "tables": list(COPY_TABLES),
        "invoices_per_transaction": chunk, "connections": concurrency, "elapsed_s": round(elapsed, 3),
        "rows_per_s": round(written / elapsed, 1), "invoices_per_s": round(n / elapsed, 1),
        "definition": "asyncpg copy_records_to_table of the issuer's rows per accepted invoice (invoice with its "
                      "canonical JSONB, `accepted` timeline entry, outbox row with the encoded envelope) into "
                      "tables LIKE issuer.*; rows built before the clock starts",
        "cpu": cpu,
    }


# --- the reconciler joins late: from the ends of its topics ---------------------------------------------

async def reconciler_from_now(ctx: Ctx, timeout: float) -> dict[str, Any]:
    """Start the reconciler in a run without --reconciler, its consumer group first placed at the ends of its
    topics: the invoices of (a)-(g) are not its business, and catching up on all of them would run during (h)."""
    from aiokafka import TopicPartition

    from shared.consumers import RECONCILER_LEDGER
    from shared.kafka import OffsetReader, make_consumer

    stack = ctx.stack
    assert stack.kafka is not None
    topics = [t.qualified(stack.topic_prefix) for t in RECONCILER_LEDGER.topics]
    reader = OffsetReader(stack.kafka.bootstrap, timeout=10)
    try:
        positions = await reader.positions(topics, [])
    finally:
        await reader.close()
    ends = {TopicPartition(t, int(p)): int(end) for t, parts in positions["topics"].items() for p, end in parts.items()}
    if not ends:
        raise BenchError(f"no partitions known for {topics}")
    consumer = make_consumer(stack.kafka.bootstrap, group_id=RECONCILER_LEDGER.qualified(stack.topic_prefix),
                             enable_auto_commit=False)
    await asyncio.wait_for(consumer.start(), 30)
    try:
        consumer.assign(list(ends))
        await asyncio.wait_for(consumer.commit(ends), 30)
    finally:
        await asyncio.wait_for(consumer.stop(), 10)
    group = RECONCILER_LEDGER.qualified(stack.topic_prefix)
    reader = OffsetReader(stack.kafka.bootstrap, timeout=10)
    try:
        committed = (await reader.positions(topics, [group]))["groups"][group]
    finally:
        await reader.close()
    placed = {TopicPartition(t, int(p)): int(o) for t, parts in committed.items() for p, o in parts.items()}
    if any(placed.get(tp, -1) < end for tp, end in ends.items()):
        raise BenchError(f"the reconciler's group was not placed at the topics' ends: {placed} vs {ends}")
    t0 = time.monotonic()
    procs = stack.start_reconciler(timeout=timeout)
    for i, svc in enumerate(procs, start=1):
        if svc.pid is not None:
            ctx.sampler.pids["reconciler" if i == 1 else f"reconciler-{i}"] = svc.pid
    return {"started_after_s": round(time.monotonic() - t0, 2), "skipped_records": sum(ends.values()),
            "processes": len(procs)}


# --- (h) a flaky store under load: when is the last invoice confirmed ------------------------------------

FLAKY_FAULTS = {"drop_rate": 0.3, "timeout_rate": 0.2, "error_rate": 0.2, "timeout_hang_ms": 2000, "seed": 15}


async def phase_flaky(ctx: Ctx, rate: float, duration: float, settle: float, concurrency: int) -> dict[str, Any]:
    """Single POSTs at `rate` for `duration` seconds (open loop) with the tax store's faults on (FLAKY_FAULTS, as
    the store-flaky drill has them), and on after the load: how long after the last POST until every accepted
    invoice is confirmed (the issuer shows `confirmed`: the reconciler saw it at the store, identical), waited
    for at most `settle` seconds. The faults are turned off at the end, whatever happens."""
    tenant = await ctx.new_tenant("flaky")
    bodies = [orjson.dumps(d) for d in make_docs(tenant["tax_id"], max(1, int(rate * duration)))]
    http = ctx.load("issuer")
    sem = asyncio.Semaphore(concurrency)
    loop = asyncio.get_running_loop()
    accepted = 0
    errors: list[str] = []
    clear = {"drop_rate": 0, "timeout_rate": 0, "error_rate": 0}

    async def one(body: bytes) -> None:
        nonlocal accepted
        async with sem:
            if await post_one(http, body, tenant["headers"], errors) is not None:
                accepted += 1

    before = ctx.sampler.snapshot()
    await put_faults(ctx, FLAKY_FAULTS)
    counts: dict[str, int] = {}
    converged_after: float | None = None
    try:
        start = loop.time() + 0.1
        tasks = []
        for i, body in enumerate(bodies):
            await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
            tasks.append(asyncio.create_task(one(body)))
        await asyncio.gather(*tasks)
        load_end = loop.time()
        load_end_db = await ctx.db.fetchval("select now()")
        say(f"    load over: {accepted:,} accepted, {len(errors)} errors; faults stay on, waiting ≤{settle:g}s")
        next_say = load_end + 10
        while True:
            counts = await ctx.statuses(tenant["id"])
            if counts.get("confirmed", 0) >= accepted:
                converged_after = loop.time() - load_end
                break
            if loop.time() - load_end > settle:
                break
            if loop.time() >= next_say:
                say(f"    {loop.time() - load_end:4.0f}s after the load: issuer {counts}")
                next_say += 10
            await asyncio.sleep(0.5)
    finally:
        with contextlib.suppress(Exception):
            await put_faults(ctx, clear)
    cpu = CpuSampler.delta(before, ctx.sampler.snapshot())
    # The confirmation times themselves: the issuer's status_since of each confirmed invoice (PostgreSQL's clock).
    times = await ctx.db.fetch(
        "select extract(epoch from status_since - $2::timestamptz) as after_load, "
        "extract(epoch from status_since - accepted_at) as latency from issuer.invoices "
        "where tenant_id = $1 and status = 'confirmed'", uuid.UUID(tenant["id"]), load_end_db)
    latencies = sorted(float(r["latency"]) for r in times)
    last = max((float(r["after_load"]) for r in times), default=None)
    if errors:
        say(f"  {len(errors)} of {len(bodies)} POSTs failed; first: {errors[0]}")
    return {
        "offered_rate_per_s": rate, "duration_s": duration, "faults": FLAKY_FAULTS, "sent": len(bodies),
        "accepted": accepted, "errors": len(errors), "first_error": errors[0] if errors else None,
        "settle_limit_s": settle, "converged": converged_after is not None,
        "last_confirmed_after_load_s": round(converged_after, 1) if converged_after is not None else None,
        "last_confirmation_after_load_s": round(last, 2) if last is not None else None,
        "confirmed": counts.get("confirmed", 0), "statuses_at_end": counts,
        "accepted_to_confirmed_s": {"p50": round(percentile(latencies, 50), 2),
                                    "p99": round(percentile(latencies, 99), 2),
                                    "max": round(latencies[-1], 2) if latencies else None},
        "definition": "seconds from the last POST's answer until the issuer shows every accepted invoice "
                      "`confirmed` (polled every 0.5 s; the faults stay on); last_confirmation_after_load_s is "
                      "the latest status_since of a confirmed invoice, on PostgreSQL's clock",
        "cpu": cpu,
    }


# --- (i) the reconciler's check round beside a big ledger ---------------------------------------------------

async def round_metrics(ctx: Ctx) -> tuple[float, float]:
    """(sum of seconds, count) of fapiao_reconciler_check_round_duration_seconds over every reconciler process."""
    total, count = 0.0, 0.0
    for svc in ctx.stack.processes("reconciler"):
        r = await ctx.http.get(f"{svc.url}/metrics", headers=ctx.stack.admin)
        if r.status_code != 200:
            raise BenchError(f"reconciler /metrics: HTTP {r.status_code} {r.text[:200]}")
        for line in r.text.splitlines():
            if line.startswith("fapiao_reconciler_check_round_duration_seconds_sum"):
                total += float(line.split()[-1])
            elif line.startswith("fapiao_reconciler_check_round_duration_seconds_count"):
                count += float(line.split()[-1])
    return total, count


LEDGER_COLUMNS = ("invoice_id", "tenant_id", "seller_tax_id", "number", "issue_date", "buyer_tax_id", "buyer_name",
                  "total_amount", "total_tax", "total", "content_hash", "accepted_at", "state", "since", "acked_at",
                  "receipt_no", "confirmed_at", "checks", "sync_state", "next_check_at", "last_checked_at",
                  "sync_seq", "recon_seq")


def confirmed_ledger_rows(n: int, tenant_id: uuid.UUID, *, sellers: int = 1000, days: int = 30,
                          salt: int = 0) -> Any:
    """`n` confirmed ledger rows (LEDGER_COLUMNS), `sellers` sellers over `days` issue dates, as a generator:
    what a reconciler holds after months of work. Made-up sellers and numbers (COPY checks no format)."""
    now = datetime.now(UTC)
    today = now.date()
    amount, tax, total = Decimal("100.00"), Decimal("13.00"), Decimal("113.00")
    for i in range(n):
        at = now - timedelta(days=1 + i % days)
        yield (uuid.UUID(int=(salt << 64) | i), tenant_id, f"9{salt % 10}{i % sellers:016d}", f"{i:020d}",
               today - timedelta(days=1 + i % days), None, "Bench buyer", amount, tax, total, f"{i:064x}", at,
               "confirmed", at, at, f"R{i:019d}", at, 1, "submitted", None, at, 1, 1)


async def reconciler_pass(ctx: Ctx, unconfirmed: int, timeout: float) -> dict[str, Any]:
    """`unconfirmed` invoices the tax store holds (posted to it directly first) put into the ledger as
    acknowledged and due now (COPY), one check requested over the admin API to wake the checker; until each
    has been checked once: the rounds' own seconds (the check-round histogram) and the wall time."""
    import asyncpg

    from shared.content import content_hash
    from tests.factories import uscc

    assert ctx.stack.pg is not None
    per_seller = 1000
    docs = [d for _ in range(0, unconfirmed, per_seller)
            for d in canonical_docs(uscc(), min(per_seller, unconfirmed))][:unconfirmed]
    http = ctx.load("taxstore")
    for i in range(0, len(docs), 200):
        status, data = await http.request("POST", "/v1/invoices/batch",
                                          orjson.dumps({"submissions": [{"invoice": d} for d in docs[i:i + 200]]}),
                                          {"Content-Type": "application/json"}, timeout=60)
        if status != 200:
            raise BenchError(f"taxstore batch for (i): HTTP {status} {data[:300]!r}")
    tenant_id, now = uuid.uuid4(), datetime.now(UTC)
    ids = [uuid.uuid4() for _ in docs]
    rows = [(iid, tenant_id, d["seller"]["tax_id"], d["number"], date.fromisoformat(d["issue_date"]),
             (d.get("buyer") or {}).get("tax_id") or None, (d.get("buyer") or {}).get("name"),
             Decimal(d["total_amount"]), Decimal(d["total_tax"]), Decimal(d["total"]), content_hash(d), now,
             "awaiting", now, now, None, None, 0, "submitted", now, None, 1, 0)
            for iid, d in zip(ids, docs, strict=True)]
    windows = sorted({(r[2], r[4]) for r in rows})
    sum0, count0 = await round_metrics(ctx)
    conn = await asyncpg.connect(ctx.stack.pg.url(driver="postgresql"), timeout=10)
    try:
        async with conn.transaction():
            await conn.copy_records_to_table("ledger", schema_name="reconciler", columns=LEDGER_COLUMNS,
                                             records=rows)
            await conn.copy_records_to_table("sweep_windows", schema_name="reconciler",
                                             columns=("seller_tax_id", "issue_date", "tenant_id", "next_sweep_at"),
                                             records=[(s, d, tenant_id, now + timedelta(hours=1)) for s, d in windows])
    finally:
        await conn.close()
    before = ctx.sampler.snapshot()
    t0 = time.monotonic()
    r = await ctx.http.post(f"{ctx.stack.services['reconciler'].url}/admin/invoices/{ids[0]}/check",
                            headers=ctx.stack.admin)
    if r.status_code != 202:
        raise BenchError(f"reconciler POST /admin/invoices/…/check: HTTP {r.status_code} {r.text[:200]}")

    async def checked() -> Any:
        n = await ctx.db.fetchval("select count(*) from reconciler.ledger where invoice_id = any($1::uuid[]) "
                                  "and last_checked_at is not null", ids)
        return int(n) >= len(ids) or False

    await poll_until(checked, timeout=timeout, what=f"the reconciler checks {len(ids):,} due invoices",
                     interval=0.1)
    wall = time.monotonic() - t0
    cpu = CpuSampler.delta(before, ctx.sampler.snapshot())
    sum1, count1 = await round_metrics(ctx)
    states = {r["state"]: int(r["n"]) for r in await ctx.db.fetch(
        "select state, count(*) as n from reconciler.ledger where invoice_id = any($1::uuid[]) group by state", ids)}
    rounds = int(count1 - count0)
    return {"unconfirmed": len(ids), "rounds": rounds, "rounds_s": round(sum1 - sum0, 3),
            "mean_round_s": round((sum1 - sum0) / rounds, 4) if rounds else None, "wall_s": round(wall, 2),
            "states_after": states, "cpu": cpu}


async def phase_reconciler_scale(ctx: Ctx, scale: int, unconfirmed: int, timeout: float) -> dict[str, Any]:
    """The check round over `unconfirmed` due invoices, first beside the ledger as the run left it, then again
    (other invoices) after `scale` confirmed rows were COPYed into reconciler.ledger (with their sweep windows,
    none due) and ANALYZEd — setup, not measured. The figure: the second pass's round seconds over the first's.
    A pass of the same size before both warms the reconciler up (a fresh process: its pools, its first
    statements, its first connections to the store), so that the first measured pass is not the slower for it."""
    import asyncpg

    assert ctx.stack.pg is not None
    say(f"    warm-up pass: {unconfirmed:,} due")
    warm = await reconciler_pass(ctx, unconfirmed, timeout)
    say(f"      {warm['rounds']} rounds, {warm['rounds_s']} s of rounds, {warm['wall_s']} s wall (not counted)")
    ledger0 = int(await ctx.db.fetchval("select count(*) from reconciler.ledger"))
    say(f"    pass 1: {unconfirmed:,} due beside {ledger0:,} ledger rows")
    small = await reconciler_pass(ctx, unconfirmed, timeout)
    say(f"      {small['rounds']} rounds, {small['rounds_s']} s of rounds, {small['wall_s']} s wall")
    t0 = time.monotonic()
    tenant_id = uuid.uuid4()
    conn = await asyncpg.connect(ctx.stack.pg.url(driver="postgresql"), timeout=60)
    try:
        salt = secrets.randbelow(1 << 20)
        await conn.copy_records_to_table("ledger", schema_name="reconciler", columns=LEDGER_COLUMNS,
                                         records=confirmed_ledger_rows(scale, tenant_id, salt=salt))
        sellers = {f"9{salt % 10}{i:016d}" for i in range(min(scale, 1000))}
        today = datetime.now(UTC).date()
        later = datetime.now(UTC) + timedelta(hours=1)
        await conn.copy_records_to_table(
            "sweep_windows", schema_name="reconciler", columns=("seller_tax_id", "issue_date", "tenant_id",
                                                                "next_sweep_at"),
            records=[(s, today - timedelta(days=d), tenant_id, later) for s in sorted(sellers) for d in range(1, 31)])
        await conn.execute("analyze reconciler.ledger")
        await conn.execute("analyze reconciler.sweep_windows")
    finally:
        await conn.close()
    loaded = time.monotonic() - t0
    ledger1 = int(await ctx.db.fetchval("select count(*) from reconciler.ledger"))
    say(f"    {scale:,} confirmed rows loaded in {loaded:.1f}s; pass 2: {unconfirmed:,} due beside {ledger1:,}")
    big = await reconciler_pass(ctx, unconfirmed, timeout)
    say(f"      {big['rounds']} rounds, {big['rounds_s']} s of rounds, {big['wall_s']} s wall")
    return {"scale": scale, "unconfirmed": unconfirmed, "ledger_rows_before": ledger0, "ledger_rows_after": ledger1,
            "load_s": round(loaded, 1), "warm_up": {k: warm[k] for k in ("rounds", "rounds_s", "wall_s")},
            "without": small, "beside": big,
            "rounds_ratio": round(big["rounds_s"] / small["rounds_s"], 3) if small["rounds_s"] else None,
            "wall_ratio": round(big["wall_s"] / small["wall_s"], 3) if small["wall_s"] else None,
            "definition": "sum of fapiao_reconciler_check_round_duration_seconds (claim, store reads, apply) until "
                          "each due invoice was checked once; the wall time also counts the waits between rounds",
            "cpu": big["cpu"]}


# --- the run ---------------------------------------------------------------------------------------

def machine_info(stack: Stack) -> dict[str, Any]:
    import aiokafka

    cpu_model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        mem_gib = round(kb / 1024 / 1024, 1)
    pg_version = None
    if stack.pg is not None:
        with contextlib.suppress(Exception):
            pg_version = stack.pg.psql("show server_version")
    java = None
    with contextlib.suppress(Exception):
        r = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=20)
        java = (r.stderr or r.stdout).splitlines()[0]
    return {
        "cpu_model": cpu_model, "cores": os.cpu_count(), "ram_gib": mem_gib,
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "kernel": platform.release(), "python": platform.python_version(), "kafka": KAFKA_VERSION,
        "java": java, "postgresql": pg_version, "aiokafka": aiokafka.__version__,
    }


async def measure(stack: Stack, args: argparse.Namespace, result: dict[str, Any]) -> None:
    import asyncpg

    from services.sync.settings import SyncSettings
    from shared.settings import SharedSettings

    sync_defaults = SyncSettings.model_fields
    batch_size = int(sync_defaults["submit_batch_size"].default)
    in_flight = int(sync_defaults["max_in_flight"].default)
    max_poll = int(sync_defaults["max_poll_records"].default)
    partitions = int(SharedSettings.model_fields["kafka_partitions"].default)
    result["params"].update(sync_submit_batch_size=batch_size, sync_max_in_flight=in_flight,
                            kafka_partitions=partitions, sync_max_poll_records=max_poll)
    assert stack.pg is not None
    db = await asyncpg.connect(stack.pg.url(driver="postgresql"), timeout=10)
    limits = httpx.Limits(max_connections=20, max_keepalive_connections=20, keepalive_expiry=2)
    try:
        async with httpx.AsyncClient(timeout=30, limits=limits) as http:
            # the timings live in the result, so that a failed run still charts the phases that completed
            ctx = Ctx(stack, http, db, CpuSampler(stack.pids()), timings=result.setdefault("_timings", {}))
            say("warm-up: 20 invoices end to end")
            await warm_up(ctx, timeout=args.phase_timeout)

            say(f"(a) raw Kafka: {args.invoices} messages")
            result["results"]["a_raw_kafka"] = a = await phase_raw_kafka(ctx, args.invoices, partitions, max_poll,
                                                                         args.phase_timeout)
            say(f"    {a['messages_per_s']:.0f} msg/s ({a['payload_bytes']} B each)")

            say(f"(b) end to end: {args.invoices} invoices")
            result["results"]["b_end_to_end"] = b = await phase_end_to_end(ctx, args.invoices,
                                                                           args.ingest_concurrency,
                                                                           args.phase_timeout)
            say(f"    stored {b['stored_per_s']:.0f}/s, submitted {b['submitted_per_s']:.0f}/s")

            say(f"(c) latency: {args.rate:g}/s for {args.duration:g}s")
            result["results"]["c_latency"] = c = await phase_latency(ctx, args.rate, args.duration,
                                                                     args.latency_concurrency, args.phase_timeout,
                                                                     chart="(c) latency")
            say(f"    p50 {c['latency_ms']['p50']} ms, p99 {c['latency_ms']['p99']} ms ({c['measured']} measured)")

            n_single = args.direct_single or max(500, args.invoices // 10)
            say(f"(d) tax store alone: {args.invoices} in batches of {batch_size} x{in_flight}, "
                f"{n_single} single at x32")
            result["results"]["d_taxstore"] = d = await phase_taxstore(ctx, args.invoices, n_single, batch_size,
                                                                       in_flight, 32)
            say(f"    batch {d['batch']['invoices_per_s']:.0f}/s, single {d['single']['invoices_per_s']:.0f}/s")

            say(f"(j) raw PostgreSQL: the issuer's rows of {args.invoices} invoices by asyncpg COPY")
            result["results"]["j_raw_copy"] = j = await phase_raw_copy(ctx, args.invoices, args.ingest_concurrency)
            say(f"    {j['rows_per_s']:,.0f} rows/s, {j['invoices_per_s']:,.0f} invoices/s")

            if args.steps:
                result["results"]["e_steps"] = await phase_steps(ctx, args.steps, args.step_duration,
                                                                 args.latency_concurrency, args.phase_timeout)
            if args.after_batch:
                say(f"(f) {args.rate:g}/s for {args.duration:g}s right after a batch of {args.after_batch:,}")
                result["results"]["f_after_batch"] = f = await phase_after_batch(
                    ctx, args.after_batch, args.rate, args.duration, args.latency_concurrency, args.phase_timeout)
                say(f"    p50 {f['latency_ms']['p50']} ms, p99 {f['latency_ms']['p99']} ms")
            if args.outage:
                say(f"(g) {args.rate:g}/s with the tax store down for the first {args.outage:g}s of "
                    f"{args.outage + args.outage_after:g}s")
                result["results"]["g_outage_drain"] = g = await phase_outage_drain(
                    ctx, args.rate, args.outage, args.outage_after, args.latency_concurrency, args.phase_timeout)
                say(f"    first stored {g['first_stored_after_recovery_s']} s after the store's return; best drain "
                    f"{g['best_drain_per_s']:,.0f}/s ({g['drain_vs_offered']}× offered); all stored "
                    f"{g['all_stored_after_recovery_s']} s after")
            if (args.reconciler_scale or args.flaky) and not stack.reconciler:
                say("the reconciler joins for (i) and (h), from the ends of its topics")
                result["reconciler_late_start"] = await reconciler_from_now(ctx, args.startup_timeout)
            if args.reconciler_scale:
                say(f"(i) reconciler check rounds over {args.reconciler_unconfirmed:,} due invoices, without and "
                    f"beside {args.reconciler_scale:,} confirmed")
                result["results"]["i_reconciler_scale"] = i = await phase_reconciler_scale(
                    ctx, args.reconciler_scale, args.reconciler_unconfirmed, args.phase_timeout)
                say(f"    rounds {i['without']['rounds_s']} s → {i['beside']['rounds_s']} s ({i['rounds_ratio']}×)")
            if args.flaky:
                say(f"(h) flaky store: {args.flaky_rate:g}/s for {args.flaky:g}s with drops, timeouts and errors")
                result["results"]["h_flaky"] = h = await phase_flaky(
                    ctx, args.flaky_rate, args.flaky, args.flaky_settle, args.latency_concurrency)
                say("    " + (f"last invoice confirmed {h['last_confirmed_after_load_s']} s after the load"
                             if h["converged"] else f"not converged within {h['settle_limit_s']:g} s: "
                                                    f"{h['confirmed']:,} of {h['accepted']:,} confirmed"))
            for client in ctx.lean.values():
                client.close()
    finally:
        await db.close()
    result["cpu_ms_per_invoice"] = cpu_table(result["results"])
    a, b, d = result["results"]["a_raw_kafka"], result["results"]["b_end_to_end"], result["results"]["d_taxstore"]
    j = result["results"]["j_raw_copy"]
    result["ratios"] = {
        "e2e_stored_vs_raw_copy": round(b["stored_per_s"] / j["invoices_per_s"], 3),
        "e2e_submitted_vs_raw_copy": round(b["submitted_per_s"] / j["invoices_per_s"], 3),
        "e2e_stored_vs_raw_kafka": round(b["stored_per_s"] / a["messages_per_s"], 3),
        "e2e_submitted_vs_raw_kafka": round(b["submitted_per_s"] / a["messages_per_s"], 3),
        "e2e_stored_vs_taxstore_batch": round(b["stored_per_s"] / d["batch"]["invoices_per_s"], 3),
        "e2e_submitted_vs_taxstore_batch": round(b["submitted_per_s"] / d["batch"]["invoices_per_s"], 3),
    }
    c = result["results"]["c_latency"]
    ours = {k: v for k, v in b["cpu"]["cpu_s"].items()
            if k != "taxstore" and not k.startswith("bench") and not k.startswith("raw")}
    b["pipeline_cpu_ms_per_invoice"] = round(1000 * sum(ours.values()) / b["invoices"], 3)
    result["targets"] = {
        "e2e_invoices_per_s": TARGET_E2E_PER_S, "p50_ms_at_offered_rate": TARGET_P50_MS,
        "p99_ms_at_offered_rate": TARGET_P99_MS, "cpu_ms_per_invoice": TARGET_CPU_MS_PER_INVOICE,
        "e2e_stored_meets": b["stored_per_s"] >= TARGET_E2E_PER_S,
        "e2e_submitted_meets": b["submitted_per_s"] >= TARGET_E2E_PER_S,
        "p50_meets": c["latency_ms"]["p50"] <= TARGET_P50_MS,
        "p99_meets": c["latency_ms"]["p99"] <= TARGET_P99_MS,
        "cpu_meets": b["pipeline_cpu_ms_per_invoice"] <= TARGET_CPU_MS_PER_INVOICE,
    }
    if e := result["results"].get("e_steps"):
        result["targets"].update(step_rate_per_s=TARGET_STEP_RATE,
                                 step_rate_meets=(e["highest_rate_within_limit"] or 0) >= TARGET_STEP_RATE)
    if f := result["results"].get("f_after_batch"):
        result["targets"].update(after_batch_p99_ms=TARGET_AFTER_BATCH_P99_MS,
                                 after_batch_meets=f["latency_ms"]["p99"] <= TARGET_AFTER_BATCH_P99_MS)
    if g := result["results"].get("g_outage_drain"):
        first = g["first_stored_after_recovery_s"]
        result["targets"].update(
            drain_vs_offered=TARGET_DRAIN_FACTOR, first_after_outage_s=TARGET_FIRST_AFTER_OUTAGE_S,
            drain_meets=(g["drain_vs_offered"] or 0) >= TARGET_DRAIN_FACTOR,
            first_after_outage_meets=first is not None and first <= TARGET_FIRST_AFTER_OUTAGE_S)
    if (i := result["results"].get("i_reconciler_scale")) and i["rounds_ratio"] is not None:
        result["targets"].update(reconciler_scale_ratio=TARGET_RECONCILER_SCALE_RATIO,
                                 reconciler_scale_meets=i["rounds_ratio"] < TARGET_RECONCILER_SCALE_RATIO)


def report(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console() if sys.stdout.isatty() else Console(width=130)
    m = result["machine"]
    con.print(f"\n[bold]Machine[/]: {m['cpu_model']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, "
              f"load avg at start {m['load_avg_at_start']}\n  Python {m['python']}, Kafka {m['kafka']} "
              f"({m['java']}), PostgreSQL {m['postgresql']}, aiokafka {m['aiokafka']}")
    r = result["results"]
    a, b, c, d = r["a_raw_kafka"], r["b_end_to_end"], r["c_latency"], r["d_taxstore"]
    n = result["params"].get("replicas", 1)
    w = result["params"].get("issuer_api_workers", 1)
    t = Table(title="make bench" + (f", {n} replicas of the issuer and of sync" if n > 1 else "")
              + (f", the issuer as {w} API workers and a background process" if w > 1
                 else ", the issuer as one process"),
              show_lines=False)
    t.add_column("measure")
    t.add_column("result", justify="right")
    t.add_column("how")
    t.add_row("(a) raw Kafka produce→consume", f"{a['messages_per_s']:,.0f} msg/s",
              f"{a['messages']:,} × {a['payload_bytes']} B, {a['partitions']} partitions, {a['elapsed_s']} s")
    t.add_row("(b) end to end: stored at tax store", f"{b['stored_per_s']:,.0f} inv/s",
              f"{b['invoices']:,} invoices in {b['milestones_s']['taxstore_all_stored']} s")
    t.add_row("(b) end to end: issuer shows submitted", f"{b['submitted_per_s']:,.0f} inv/s",
              f"in {b['milestones_s']['issuer_all_submitted']} s")
    if "confirmed_per_s" in b:
        t.add_row("(b) end to end: issuer shows confirmed", f"{b['confirmed_per_s']:,.0f} inv/s",
                  f"in {b['milestones_s']['issuer_all_confirmed']} s (the reconciler saw each at the store)")
    t.add_row("    issuer ingest (batch API)", f"{b['issuer_ingest_per_s']:,.0f} inv/s",
              f"all POSTs answered after {b['milestones_s']['ingested']} s")
    lat = c["latency_ms"]
    t.add_row(f"(c) latency at {c['offered_rate_per_s']:g}/s for {c['duration_s']:g} s",
              f"p50 {lat['p50']} / p95 {lat['p95']} / p99 {lat['p99']} / max {lat['max']} ms",
              f"{c['measured']:,} of {c['scheduled']:,} measured; sent at {c['achieved_send_rate_per_s']}/s, "
              f"{c['sent_late_over_10ms']:,} sent >10 ms late")
    t.add_row("    issuer POST /v1/invoices (client)", f"p50 {c['issuer_post_ms']['p50']} / p99 "
              f"{c['issuer_post_ms']['p99']} ms", f"{c['errors']} errors")
    t.add_row("(d) tax store alone, batch", f"{d['batch']['invoices_per_s']:,.0f} inv/s",
              f"{d['batch']['invoices']:,} in batches of {d['batch']['batch_size']} × {d['batch']['in_flight']} "
              "in flight")
    t.add_row("(d) tax store alone, single", f"{d['single']['invoices_per_s']:,.0f} inv/s",
              f"{d['single']['invoices']:,} at concurrency {d['single']['concurrency']}")
    if j := r.get("j_raw_copy"):
        t.add_row("(j) raw PostgreSQL: asyncpg COPY", f"{j['invoices_per_s']:,.0f} inv/s",
                  f"{j['rows_per_s']:,.0f} rows/s: the issuer's {j['rows_per_invoice']} rows per invoice, "
                  f"{j['invoices_per_transaction']:,} per transaction × {j['connections']} connections")
    ratios = result["ratios"]
    if "e2e_stored_vs_raw_copy" in ratios:
        t.add_row("ratio (b)/(j)", f"{ratios['e2e_stored_vs_raw_copy']:.3f}",
                  f"submitted: {ratios['e2e_submitted_vs_raw_copy']:.3f}")
    t.add_row("ratio (b)/(a)", f"{ratios['e2e_stored_vs_raw_kafka']:.3f}",
              f"submitted: {ratios['e2e_submitted_vs_raw_kafka']:.3f}")
    t.add_row("ratio (b)/(d batch)", f"{ratios['e2e_stored_vs_taxstore_batch']:.3f}",
              f"submitted: {ratios['e2e_submitted_vs_taxstore_batch']:.3f}")
    tg = result["targets"]
    t.add_row(f"target ≥{TARGET_E2E_PER_S:,.0f} inv/s end to end", "met" if tg["e2e_stored_meets"] else "not met",
              "(stored at the tax store)")
    t.add_row(f"target p50 ≤{TARGET_P50_MS:g} / p99 ≤{TARGET_P99_MS:g} ms",
              " / ".join("met" if tg[k] else "not met" for k in ("p50_meets", "p99_meets")),
              f"at {c['offered_rate_per_s']:g}/s")
    if e := r.get("e_steps"):
        t.add_row(f"(e) step load, p99 ≤{e['p99_limit_ms']:g} ms", f"{e['highest_rate_within_limit'] or 0:g}/s",
                  " · ".join(f"{s['rate_per_s']:g}/s: p99 {s['p99_ms']:,.0f} ms" for s in e["steps"])
                  + f" (target ≥{TARGET_STEP_RATE:g}/s)")
    if f := r.get("f_after_batch"):
        lat = f["latency_ms"]
        t.add_row(f"(f) {f['offered_rate_per_s']:g}/s right after {f['batch']:,} in batches",
                  f"p50 {lat['p50']:,} / p99 {lat['p99']:,} ms",
                  f"{f['measured']:,} measured (target p99 ≤{TARGET_AFTER_BATCH_P99_MS:g} ms)")
    if g := r.get("g_outage_drain"):
        t.add_row(f"(g) {g['offered_rate_per_s']:g}/s, store down {g['outage_s']:g} s: drain",
                  f"{g['best_drain_per_s']:,.0f} inv/s ({g['drain_vs_offered']}×)",
                  f"best {DRAIN_WINDOW_S:g} s after the return; backlog {g['backlog_at_recovery']:,}; all stored "
                  f"{g['all_stored_after_recovery_s']} s after (target ≥{TARGET_DRAIN_FACTOR:g}×)")
        t.add_row("(g) first stored after the store's return", f"{g['first_stored_after_recovery_s']} s",
                  f"target ≤{TARGET_FIRST_AFTER_OUTAGE_S:g} s; {g['errors']} POST errors")
    if h := r.get("h_flaky"):
        acc = h["accepted_to_confirmed_s"]
        t.add_row(f"(h) flaky store, {h['offered_rate_per_s']:g}/s for {h['duration_s']:g} s: last confirmed",
                  f"{h['last_confirmed_after_load_s']} s after the load" if h["converged"]
                  else f"not converged within {h['settle_limit_s']:g} s",
                  f"{h['confirmed']:,} of {h['accepted']:,} confirmed (drop {h['faults']['drop_rate']}, timeouts "
                  f"{h['faults']['timeout_rate']}, errors {h['faults']['error_rate']}, on throughout); accepted → "
                  f"confirmed p50 {acc['p50']} / p99 {acc['p99']} s; {h['errors']} POST errors (target: report it)")
    if i := r.get("i_reconciler_scale"):
        w, bs = i["without"], i["beside"]
        t.add_row(f"(i) reconciler rounds over {i['unconfirmed']:,} due, beside {i['scale']:,} confirmed",
                  f"{bs['rounds_s']} s vs {w['rounds_s']} s ({i['rounds_ratio']}×)",
                  f"{bs['rounds']} / {w['rounds']} rounds, mean {bs['mean_round_s']} / {w['mean_round_s']} s; wall "
                  f"{bs['wall_s']} / {w['wall_s']} s (target <{TARGET_RECONCILER_SCALE_RATIO:g}×: "
                  + ("met" if result["targets"].get("reconciler_scale_meets") else "not met") + ")")
    t.add_row(f"target CPU ≤{TARGET_CPU_MS_PER_INVOICE:g} ms per invoice", f"{b['pipeline_cpu_ms_per_invoice']} ms",
              "during (b): every process but the tax store and the load generator")
    con.print(t)

    cpu = b["cpu"]
    ct = Table(title=f"CPU during (b), {cpu['wall_s']} s wall on {m['cores']} cores "
                     f"({cpu['machine_capacity_cpu_s']} CPU-s available)")
    ct.add_column("process")
    ct.add_column("CPU-s", justify="right")
    ct.add_column("avg cores", justify="right")
    ct.add_column("share of machine busy", justify="right")
    busy = cpu["machine_busy_cpu_s"] or 1.0
    rows = sorted(cpu["cpu_s"].items(), key=lambda kv: -kv[1])
    rows.append(("other processes on the machine", cpu["other_processes_cpu_s"]))
    for name, secs in rows:
        ct.add_row(name, f"{secs:.1f}", f"{secs / cpu['wall_s']:.2f}", f"{100 * secs / busy:.0f}%")
    ct.add_row("machine busy (all)", f"{cpu['machine_busy_cpu_s']:.1f}", f"{busy / cpu['wall_s']:.2f}", "")
    con.print(ct)
    per = result.get("cpu_ms_per_invoice") or {}
    comps = [k for k in ("issuer", "sync", "taxstore", "reconciler", "kafka", "postgres", "bench")
             if any(k in row["ms_per_invoice"] for row in per.values())]
    pt = Table(title="CPU ms per invoice by component in every phase (replicas summed; pipeline: all but the tax "
                     "store and the load)")
    for col in ("phase", "invoices", "wall s", *comps, "pipeline"):
        pt.add_column(col, justify="left" if col == "phase" else "right")
    for label, row in per.items():
        ms = row["ms_per_invoice"]
        pt.add_row(label, f"{row['invoices']:,}", f"{row['wall_s']:.1f}",
                   *(f"{ms[k]:.2f}" if k in ms else "" for k in (*comps, "pipeline")))
    con.print(pt)
    for label, dbw in (("(b)", b.get("database")), ("(c)", c.get("database"))):
        if dbw:
            con.print(f"{label} PostgreSQL per invoice: {dbw['rows_written_per_invoice']} rows written, "
                      f"{dbw['commits_per_invoice']} commits, {dbw['wal_bytes_per_invoice']:,} WAL bytes, "
                      f"{dbw.get('database_bytes_per_invoice', 0):,} bytes of tables and indexes; by schema "
                      + ", ".join(f"{k} {v['inserted_per_invoice']} ins / {v['updated_per_invoice']} upd "
                                  f"({v['hot_updated_per_invoice']} HOT) / {v['deleted_per_invoice']} del"
                                  for k, v in sorted(dbw["per_schema"].items())))
    if b.get("kafka_records_per_invoice"):
        con.print("(b) Kafka records per invoice: " + ", ".join(
            f"{t} {v}" for t, v in sorted(b["kafka_records_per_invoice"].items())))
    ms = b["milestones_s"]
    con.print(f"(b) timeline: batch POSTs answered {ms.get('ingested')} s · issuer outbox fully on Kafka "
              f"{ms.get('issuer_all_published')} s · tax store holds all {ms.get('taxstore_all_stored')} s · "
              f"issuer shows all submitted {ms.get('issuer_all_submitted')} s"
              + (f" · all confirmed {ms['issuer_all_confirmed']} s" if "issuer_all_confirmed" in ms else ""))


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m fapiao.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--invoices", type=int, default=20_000, help="invoices for (a), (b) and (d batch)")
    p.add_argument("--rate", type=float, default=200.0, help="offered rate of (c), invoices/s")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of (c)")
    p.add_argument("--out", type=Path, default=None, help="JSON result file (default bench-results/bench-<UTC>.json)")
    p.add_argument("--ingest-concurrency", type=int, default=2, help="concurrent batch POSTs in (b)")
    p.add_argument("--latency-concurrency", type=int, default=64, help="most requests in flight in (c)")
    p.add_argument("--direct-single", type=int, default=0,
                   help="invoices for (d single); default max(500, invoices/10)")
    p.add_argument("--phase-timeout", type=float, default=300.0, help="longest wait of any phase, seconds")
    p.add_argument("--startup-timeout", type=float, default=120.0, help="longest wait for each server to start")
    p.add_argument("--keep", action="store_true", help="keep the private data directory and logs")
    p.add_argument("--steps", type=_rates, default=[100.0, 200.0, 400.0, 800.0, 1600.0],
                   help="(e): single-POST rates to step through, comma-separated ('' skips the phase)")
    p.add_argument("--step-duration", type=float, default=10.0, help="seconds of each step of (e)")
    p.add_argument("--after-batch", type=int, default=None,
                   help="(f): invoices in the batch before the singles (default --invoices; 0 skips the phase)")
    p.add_argument("--outage", type=float, default=60.0,
                   help="(g): seconds the tax store is down while single POSTs arrive at --rate (0 skips the phase)")
    p.add_argument("--outage-after", type=float, default=30.0,
                   help="(g): seconds the load goes on after the store is back")
    p.add_argument("--flaky", type=float, default=60.0,
                   help="(h): seconds of single POSTs at --flaky-rate with the store's faults on (0 skips the phase)")
    p.add_argument("--flaky-rate", type=float, default=50.0, help="(h): offered rate, invoices/s")
    p.add_argument("--flaky-settle", type=float, default=None,
                   help="(h): longest wait after the load for every invoice to be confirmed (default --phase-timeout)")
    p.add_argument("--reconciler-scale", type=int, default=1_000_000,
                   help="(i): confirmed ledger rows beside the due ones in the second pass (0 skips the phase)")
    p.add_argument("--reconciler-unconfirmed", type=int, default=10_000,
                   help="(i): due (acknowledged, unconfirmed) invoices each pass checks")
    p.add_argument("--reconciler", action="store_true",
                   help="run the reconciler too: (b) also times every invoice to `confirmed`")
    p.add_argument("--issuer-workers", type=int, default=0,
                   help="FAPIAO_API_WORKERS of the issuer, as make up sets it: 0 is half the cores, at least 1; "
                        "above 1, that many API processes beside its background process")
    p.add_argument("--replicas", type=int, default=1,
                   help="processes of the issuer, sync and (with --reconciler) the reconciler, each sharing its schema "
                        "and consumer groups; the load is spread "
                        "over the issuer's in turn")
    args = p.parse_args(argv)
    if args.invoices < 1 or args.rate <= 0 or args.duration <= 0:
        p.error("--invoices, --rate and --duration must be positive")
    if not 1 <= args.replicas <= 4:
        p.error("--replicas must be 1 to 4")
    if args.after_batch is None:
        args.after_batch = args.invoices
    if args.outage < 0 or args.outage_after <= 0:
        p.error("--outage cannot be negative and --outage-after must be positive")
    if args.after_batch < 0 or args.step_duration <= 0:
        p.error("--after-batch cannot be negative and --step-duration must be positive")
    if args.flaky < 0 or args.flaky_rate <= 0 or args.reconciler_scale < 0 or args.reconciler_unconfirmed < 1:
        p.error("--flaky and --reconciler-scale cannot be negative; --flaky-rate and --reconciler-unconfirmed "
                "must be positive")
    if args.flaky_settle is None:
        args.flaky_settle = args.phase_timeout
    return args


def _rates(text: str) -> list[float]:
    try:
        rates = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: rates like 100,200,400") from None
    if any(r <= 0 for r in rates):
        raise argparse.ArgumentTypeError("rates must be positive")
    return rates


def _raw_consumer_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m fapiao.bench _raw-consumer")
    for name in ("bootstrap", "topic", "group", "out"):
        p.add_argument(f"--{name}", required=True)
    for name in ("count", "partitions", "max-poll"):
        p.add_argument(f"--{name}", type=int, required=True)
    p.add_argument("--timeout", type=float, required=True)
    return p.parse_args(argv)


def _on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str]) -> int:
    if argv[:1] == ["_raw-consumer"]:
        asyncio.run(raw_consumer_main(_raw_consumer_args(argv[1:])))
        return 0
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    started = datetime.now(UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    out = args.out or RESULTS / f"bench-{stamp}.json"
    ARTIFACTS.mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{stamp}-", dir=ARTIFACTS))
    stack = Stack(workdir, replicas=args.replicas, reconciler=args.reconciler, issuer_workers=args.issuer_workers)
    from services.issuer.settings import api_workers

    result: dict[str, Any] = {
        "started_at": started.isoformat(), "command": " ".join([sys.executable, "-m", "fapiao.bench", *argv]),
        "params": {"invoices": args.invoices, "rate_per_s": args.rate, "duration_s": args.duration,
                   "ingest_concurrency": args.ingest_concurrency, "latency_concurrency": args.latency_concurrency,
                   "issuer_batch_size": ISSUER_BATCH, "replicas": args.replicas,
                   "issuer_api_workers": api_workers(args.issuer_workers),
                   "outage_s": args.outage, "outage_after_s": args.outage_after,
                   "flaky_s": args.flaky, "flaky_rate_per_s": args.flaky_rate, "flaky_settle_s": args.flaky_settle,
                   "reconciler_scale": args.reconciler_scale, "reconciler_unconfirmed": args.reconciler_unconfirmed,
                   "reconciler": args.reconciler},
        "results": {}, "workdir": str(workdir),
    }
    t0 = time.monotonic()
    failed: str | None = None
    try:
        stack.start(timeout=args.startup_timeout)
        result["machine"] = machine_info(stack)
        asyncio.run(measure(stack, args, result))
    except KeyboardInterrupt:
        failed = "interrupted"
    except Exception as exc:  # noqa: BLE001 - report it, stop everything, keep the logs
        failed = f"{type(exc).__name__}: {exc}"
    finally:
        # No second Ctrl-C may cut the clean-up short (each stop is bounded by its own timeout).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        say("stopping the private stack")
        problems = stack.stop()
        if problems:
            say("could not stop cleanly: " + "; ".join(problems))
    result["runtime_s"] = round(time.monotonic() - t0, 1)
    result["finished_at"] = datetime.now(UTC).isoformat()
    if failed:
        result["error"] = failed
    out.parent.mkdir(parents=True, exist_ok=True)
    if timings := result.pop("_timings", None):
        result["series"] = {label: per_second(t) for label, t in timings.items()}
    if result.get("series"):  # the chart next to the JSON, same name
        chart = out.with_suffix(".html")
        chart.write_text(chart_html(f"make bench {stamp}: latency and throughput per second", result["series"]))
        result["chart"] = str(chart)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    if failed:
        say(f"FAILED: {failed}")
        say(f"partial results in {out}; logs kept in {workdir / 'logs'}")
        return 130 if failed == "interrupted" else 1
    report(result)
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
        result["workdir_removed"] = True
        out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"\nResults: {out}" + (f", chart {result['chart']}" if result.get("chart") else "")
          + f"  (run took {result['runtime_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
