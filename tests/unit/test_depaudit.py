"""`make lint`'s dependency audit never reads as clean when nothing was audited (fapiao/depaudit.py)."""

from __future__ import annotations

import pytest

from fapiao import depaudit

# The shape of `pip-audit --format json`: audited packages carry "vulns", unaudited ones a "skip_reason".
REPORT = {
    "dependencies": [
        {"name": "httpx", "version": "0.28.1", "vulns": []},
        {"name": "jinja2", "version": "3.1.2", "vulns": [
            {"id": "GHSA-h5c8-rqwp-cp95", "fix_versions": ["3.1.3"], "aliases": ["CVE-2024-22195"]},
            {"id": "PYSEC-0000-1", "fix_versions": []}]},
        {"name": "aiokafka", "skip_reason": "Dependency not found on PyPI and could not be audited: aiokafka (0.14.0)"},
    ],
    "fixes": [],
}


def test_the_report_is_sorted_into_audited_skipped_and_vulnerable() -> None:
    outcome = depaudit.read_report(REPORT)
    assert outcome.audited == ["httpx", "jinja2"]
    assert set(outcome.skipped) == {"aiokafka"}
    assert outcome.vulnerable == {"jinja2 3.1.2": ["GHSA-h5c8-rqwp-cp95 (fixed in 3.1.3)", "PYSEC-0000-1"]}


def test_an_unreachable_vulnerability_service_is_said_plainly_and_fails_only_when_strict(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # A real pip-audit run against an OSV address where nothing listens (port 9, discard): what a machine
    # without the vulnerability database sees. pip-audit alone would fail without saying why lint should care.
    unreachable = ["--vulnerability-service", "osv", "--osv-url", "http://127.0.0.1:9/v1/query"]
    monkeypatch.setenv("FAPIAO_AUDIT_TIMEOUT", "60")
    monkeypatch.delenv("FAPIAO_AUDIT_STRICT", raising=False)
    assert depaudit.main(unreachable) == 0
    err = capsys.readouterr().err
    assert "NOT AUDITED" in err and "could not reach" in err
    monkeypatch.setenv("FAPIAO_AUDIT_STRICT", "1")
    assert depaudit.main(unreachable) == 1
    assert "NOT AUDITED" in capsys.readouterr().err
