"""Reports of a drill run: a terminal table, a JSON file and one HTML page (inline SVG, no CDN) with a timeline per
scenario: invoices by status and pipeline lag over time, fault windows shaded."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

__all__ = ["html_report", "table", "write_reports"]

COLUMNS = ("scenario", "result", "acked", "lost", "mismatch", "dup", "unexpl", "stuck!", "converge", "worst lag",
           "drain/s")
COLOURS = {"confirmed": "#2e7d32", "submitted": "#1565c0", "accepted": "#90caf9", "pending": "#90caf9",
           "stuck": "#c62828", "voided": "#757575", "unknown": "#ffb300"}


def _row(r: dict[str, Any]) -> list[str]:
    v = r["verdict"]
    conv = v["time_to_converge_s"]
    return [r["scenario"], "PASS" if r["passed"] else "FAIL", str(v["acknowledged"]), str(len(v["lost"])),
            str(len(v["content_mismatch"])), str(len(v["duplicate_effects"])), str(len(v["unexplained"])),
            str(len(v["stuck_unhandled"])), "-" if conv is None else f"{conv:.0f}s", f"{v['worst_lag_s']:.0f}s",
            "-" if r.get("drain_rate") is None else f"{r['drain_rate']} of {r['offered_rate']:g}"]


def table(results: list[dict[str, Any]], *, markdown: bool = False) -> str:
    rows = [list(COLUMNS)] + [_row(r) for r in results]
    if markdown:
        lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(COLUMNS)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows[1:]])
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    out = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def violations_text(results: list[dict[str, Any]]) -> str:
    lines = []
    for r in results:
        v = r["verdict"]
        if r.get("error"):
            lines.append(f"{r['scenario']}: ERROR {r['error']}")
        for f in r.get("faults", []):
            if not f.get("ok", True):
                lines.append(f"{r['scenario']}: step failed at {f['at']}s: {f['label']}: {f.get('error')}")
        for key, label in (("lost", "lost"), ("content_mismatch", "content mismatch"),
                           ("duplicate_effects", "duplicate effect"), ("unexplained", "unexplained"),
                           ("stuck_unhandled", "stuck without one case and one alert"),
                           ("not_converged", "not converged"),
                           ("unreported_after_restore", "missing after the restore, never reported")):
            for item in v.get(key, [])[:20]:
                lines.append(f"{r['scenario']}: {label}: {item}")
            if len(v.get(key, [])) > 20:
                lines.append(f"{r['scenario']}: {label}: … and {len(v[key]) - 20} more (see the JSON report)")
    return "\n".join(lines)


def _svg(r: dict[str, Any]) -> str:
    samples = r["samples"]
    w, h, pad = 760, 220, 40
    t_max = max([s["at"] for s in samples] + [r["duration_s"], 1])
    n_max = max([sum(s["statuses"].values()) for s in samples] + [1])
    lag_max = max([s["lag_s"] for s in samples] + [1])

    def x(t: float) -> float:
        return pad + (w - 2 * pad) * t / t_max

    def y(v: float, top: float) -> float:
        return h - pad - (h - 2 * pad) * v / top

    parts = [f'<svg viewBox="0 0 {w} {h}" width="{w}" height="{h}" xmlns="http://www.w3.org/2000/svg" '
             'font-family="sans-serif" font-size="10">']
    for start, end, label in r["windows"]:
        parts.append(f'<rect class="fault-window" data-from="{start:g}" data-to="{end:g}" x="{x(start):.1f}" '
                     f'y="{pad - 10}" width="{max(2.0, x(end) - x(start)):.1f}" '
                     f'height="{h - 2 * pad + 10}" fill="#ffcdd2" opacity="0.5">'
                     f'<title>{html.escape(label)}</title></rect>'
                     f'<text x="{x(start) + 2:.1f}" y="{pad - 12}" fill="#b71c1c">{html.escape(label[:40])}</text>')
    parts.append(f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="#333"/>'
                 f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="#333"/>'
                 f'<text x="{w - pad}" y="{h - pad + 14}" text-anchor="end">{t_max:.0f} s</text>'
                 f'<text x="{pad - 4}" y="{pad}" text-anchor="end">{n_max}</text>'
                 f'<text x="{w - pad + 4}" y="{pad}" fill="#6a1b9a">lag {lag_max:.0f}s</text>')
    statuses = sorted({k for s in samples for k in s["statuses"]})
    for status in statuses:
        pts = " ".join(f"{x(s['at']):.1f},{y(s['statuses'].get(status, 0), n_max):.1f}" for s in samples)
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{COLOURS.get(status, "#000")}" '
                     f'stroke-width="1.8"><title>{status}</title></polyline>')
    pts = " ".join(f"{x(s['at']):.1f},{y(s['lag_s'], lag_max):.1f}" for s in samples)
    parts.append(f'<polyline points="{pts}" fill="none" stroke="#6a1b9a" stroke-dasharray="4 3"><title>lag</title>'
                 '</polyline>')
    legend = statuses + ["lag (oldest unconfirmed, dashed)"]
    for i, status in enumerate(legend):
        parts.append(f'<text x="{pad + 8 + i * 120}" y="{h - 8}" fill="{COLOURS.get(status, "#6a1b9a")}">'
                     f'■ {html.escape(status)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def html_report(run: dict[str, Any]) -> str:
    results = run["results"]
    rows = "".join("<tr>" + "".join(f"<td class='{'fail' if c == 'FAIL' else ''}'>{html.escape(c)}</td>"
                                    for c in _row(r)) + "</tr>" for r in results)
    head = "".join(f"<th>{c}</th>" for c in COLUMNS)
    sections = []
    for r in results:
        bad = violations_text([r])
        faults = "".join(
            f"<li>{f['at']:.1f}s {html.escape(f['label'])}"
            f"{' — ' + html.escape(f['note']) if f.get('note') else ''}"
            f"{'' if f['ok'] else ' — FAILED: ' + html.escape(f.get('error', ''))}</li>" for f in r["faults"])
        sections.append(f"<section><h2>{html.escape(r['scenario'])} — {'PASS' if r['passed'] else 'FAIL'}</h2>"
                        f"<p>{html.escape(r['description'])}</p>{_svg(r)}<ul>{faults}</ul>"
                        + (f"<pre class='fail'>{html.escape(bad)}</pre>" if bad else "") + "</section>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Fapiao drills {html.escape(run['started'])}"
            "</title><style>body{font-family:sans-serif;margin:2em;max-width:60em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}td:first-child{text-align:left}"
            ".fail{color:#b71c1c;font-weight:bold}section{margin-top:2em}</style></head><body>"
            f"<h1>Fapiao Sync fault drills</h1><p>Run {html.escape(run['started'])}, seed {run['seed']}, "
            f"{html.escape(run['where'])}. {sum(r['passed'] for r in results)} of {len(results)} passed.</p>"
            f"<table><tr>{head}</tr>{rows}</table>{''.join(sections)}</body></html>")


def write_reports(run: dict[str, Any], directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    stamp = run["started"].replace(":", "").replace("-", "")
    js, page = directory / f"drill-{stamp}.json", directory / f"drill-{stamp}.html"
    requests = directory / f"drill-{stamp}-requests.jsonl"
    with requests.open("w", encoding="utf-8") as out:  # one line per request of the workload, with its answer
        for r in run["results"]:
            for req in r.pop("requests", []):
                out.write(json.dumps({"scenario": r["scenario"], **req}, ensure_ascii=False) + "\n")
    run["requests_file"] = str(requests)
    js.write_text(json.dumps(run, indent=1, ensure_ascii=False, default=str))
    page.write_text(html_report(run), encoding="utf-8")
    (directory / "latest.json").write_text(js.read_text())
    (directory / "latest.html").write_text(page.read_text(encoding="utf-8"), encoding="utf-8")
    return js, page
