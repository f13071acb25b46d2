"""mypy is clean on shared/, services/ and fapiao/ ([tool.mypy] in pyproject.toml), so `make test` fails on a type
error as `make lint` does. The incremental cache (.cache/mypy, git-ignored) keeps a rerun to a few seconds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_is_clean_on_shared_services_and_fapiao() -> None:
    proc = subprocess.run(  # the settings (files, cache, strictness) come from pyproject.toml
        [sys.executable, "-m", "mypy", "--no-color-output", "shared", "services", "fapiao"],
        cwd=ROOT, capture_output=True, text=True, timeout=240, check=False,
    )
    assert proc.returncode == 0, f"mypy found problems:\n{proc.stdout}{proc.stderr}"
