"""`make lint`'s dependency audit: pip-audit over requirements.lock, the versions every install of the project
uses (the Makefile and the Dockerfile install with it as constraints); over the virtualenv's packages when
there is no lock.

pip-audit asks a vulnerability service about every installed (name, version). When the service cannot be
reached, or answers "not found" for a package (a mirror that serves the index but not the per-release
JSON does that for every package), pip-audit itself still ends with "No known vulnerabilities found" and
exit code 0. This wrapper reads its JSON report instead and says in so many words how many packages were
really audited, so a lint run never reads as a clean audit when nothing was checked.

Exit codes: 1 when a vulnerability is known for an installed version; 0 otherwise, also when the audit could
not be done (it says so), unless FAPIAO_AUDIT_STRICT=1, which makes "could not audit" fail as well. The whole
run is bounded (FAPIAO_AUDIT_TIMEOUT seconds, default 120) so lint never hangs on a dead network.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["AuditOutcome", "main", "read_report"]

LOCK = Path(__file__).resolve().parents[1] / "requirements.lock"


@dataclass
class AuditOutcome:
    audited: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # package -> why pip-audit could not audit it
    vulnerable: dict[str, list[str]] = field(default_factory=dict)  # "name version" -> advisory ids (and fixes)


def read_report(report: dict) -> AuditOutcome:
    """Sort pip-audit's JSON report into audited, not audited, and vulnerable packages."""
    outcome = AuditOutcome()
    for dep in report.get("dependencies", []):
        name = dep.get("name", "?")
        if "skip_reason" in dep:
            outcome.skipped[name] = str(dep["skip_reason"])
            continue
        outcome.audited.append(name)
        vulns = dep.get("vulns") or []
        if vulns:
            outcome.vulnerable[f"{name} {dep.get('version', '?')}"] = [
                v.get("id", "?") + (f" (fixed in {', '.join(v['fix_versions'])})" if v.get("fix_versions") else "")
                for v in vulns]
    return outcome


def _not_audited(reason: str, strict: bool) -> int:
    print(f"pip-audit: NOT AUDITED - {reason}", file=sys.stderr)
    print("pip-audit: the dependencies were not checked for known vulnerabilities; run `make lint` where the "
          "vulnerability service is reachable (FAPIAO_AUDIT_STRICT=1 makes this an error)", file=sys.stderr)
    return 1 if strict else 0


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    strict = os.environ.get("FAPIAO_AUDIT_STRICT", "") not in ("", "0", "false")
    budget = float(os.environ.get("FAPIAO_AUDIT_TIMEOUT", "120"))
    pip_audit = Path(sys.executable).with_name("pip-audit")
    if not pip_audit.exists():
        return _not_audited(f"{pip_audit} is not installed (pip install -e '.[dev]')", strict)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "report.json"
        # The lock holds exact pins, so nothing needs resolving (--no-deps --disable-pip: no pip, no install).
        # Without it: --local, this virtualenv's packages only; --skip-editable, the project is not on PyPI.
        what = ["-r", str(LOCK), "--no-deps", "--disable-pip"] if LOCK.exists() else ["--local", "--skip-editable"]
        cmd = [str(pip_audit), *what, "--progress-spinner", "off", "--timeout", "10",
               "--format", "json", "--output", str(out), *args]
        try:
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=budget)
        except subprocess.TimeoutExpired:
            return _not_audited(f"the audit took longer than {budget:.0f} s (the vulnerability service is slow or "
                                "unreachable)", strict)
        report = json.loads(out.read_text()) if out.exists() and out.stat().st_size else None
    if report is None:
        last = (run.stderr.strip().splitlines() or ["no output"])[-1]
        return _not_audited(f"pip-audit could not reach its vulnerability service: {last[:300]}", strict)
    outcome = read_report(report)
    for package, advisories in sorted(outcome.vulnerable.items()):
        print(f"pip-audit: {package}: {', '.join(advisories)}", file=sys.stderr)
    if outcome.vulnerable:
        print(f"pip-audit: {len(outcome.vulnerable)} installed package(s) with known vulnerabilities", file=sys.stderr)
        return 1
    total = len(outcome.audited) + len(outcome.skipped)
    if not outcome.audited:
        sample = next(iter(outcome.skipped.values()), "no packages found")
        return _not_audited(f"none of {total} packages could be audited (the vulnerability service has no answer "
                            f"for them, e.g. {sample!r})", strict)
    print(f"pip-audit: {len(outcome.audited)} of {total} packages audited, no known vulnerabilities")
    if outcome.skipped:
        print(f"pip-audit: not audited: {', '.join(sorted(outcome.skipped))}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
