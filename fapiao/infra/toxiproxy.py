"""Toxiproxy (github.com/Shopify/toxiproxy/v2), a real TCP proxy for network faults, driven over its HTTP API.

The server is built on first use with `go install github.com/Shopify/toxiproxy/v2/cmd/server@v2.12.0` into the
git-ignored .cache/toxiproxy/bin (like the Kafka jars); FAPIAO_TOXIPROXY_SERVER names a binary of your own instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx

from fapiao.infra.procs import free_port

__all__ = ["TOXIPROXY_MODULE", "TOXIPROXY_VERSION", "Toxiproxy", "ToxiproxyError", "ensure_toxiproxy"]

TOXIPROXY_VERSION = "v2.12.0"
TOXIPROXY_MODULE = "github.com/Shopify/toxiproxy/v2/cmd/server"
CACHE = Path(__file__).resolve().parents[2] / ".cache" / "toxiproxy"


class ToxiproxyError(RuntimeError):
    pass


def ensure_toxiproxy() -> Path:
    """The server binary, built with `go install` into .cache/toxiproxy/bin on first use."""
    own = os.environ.get("FAPIAO_TOXIPROXY_SERVER")
    if own:
        return Path(own)
    binary = CACHE / "bin" / "server"
    if binary.exists():
        return binary
    go = shutil.which("go")
    if go is None:
        raise ToxiproxyError("Toxiproxy is needed for network faults and `go` is not on PATH to build it; install Go "
                             "or set FAPIAO_TOXIPROXY_SERVER to a toxiproxy-server binary")
    env = {**os.environ, "GOBIN": str(binary.parent), "GOFLAGS": "-buildvcs=false",
           "GOPATH": os.environ.get("GOPATH", str(CACHE / "gopath"))}
    r = subprocess.run([go, "install", f"{TOXIPROXY_MODULE}@{TOXIPROXY_VERSION}"], env=env, capture_output=True,
                       text=True, timeout=900)
    if r.returncode != 0 or not binary.exists():
        raise ToxiproxyError(f"building Toxiproxy failed:\n{r.stdout}\n{r.stderr}")
    return binary


class Toxiproxy:
    """The HTTP API of a running server: proxies, toxics, enable/disable."""

    def __init__(self, api_url: str) -> None:
        self.api_url = api_url.rstrip("/")
        self.http = httpx.Client(base_url=self.api_url, timeout=10)

    def _call(self, method: str, path: str, json: Any = None) -> Any:
        r = self.http.request(method, path, json=json)
        if r.status_code >= 300:
            raise ToxiproxyError(f"Toxiproxy {method} {path}: HTTP {r.status_code} {r.text[:300]}")
        return r.json() if r.content else None

    def version(self) -> str:
        return str(self.http.get("/version").text).strip()

    def create(self, name: str, upstream: str, listen_port: int | None = None) -> int:
        """A proxy listening on 127.0.0.1:<port> to upstream ("127.0.0.1:8100"); returns the port."""
        port = listen_port or free_port()
        self._call("POST", "/proxies", {"name": name, "listen": f"127.0.0.1:{port}", "upstream": upstream,
                                        "enabled": True})
        return port

    def add_toxic(self, proxy: str, type_: str, *, attributes: dict[str, Any] | None = None,
                  stream: str = "downstream", toxicity: float = 1.0, name: str | None = None) -> dict[str, Any]:
        return self._call("POST", f"/proxies/{proxy}/toxics", {
            "name": name or f"{type_}_{stream}", "type": type_, "stream": stream, "toxicity": toxicity,
            "attributes": attributes or {}})

    def clear_toxics(self, proxy: str) -> None:
        for toxic in self._call("GET", f"/proxies/{proxy}/toxics") or []:
            self._call("DELETE", f"/proxies/{proxy}/toxics/{toxic['name']}")

    def set_enabled(self, proxy: str, enabled: bool) -> None:
        """Disabled: the listener is closed and open connections are dropped (a cut cable)."""
        self._call("POST", f"/proxies/{proxy}", {"enabled": enabled})

    def reset(self) -> None:
        self._call("POST", "/reset")

    def close(self) -> None:
        self.http.close()
