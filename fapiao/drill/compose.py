"""Drills against a docker compose stack, from the `drill` container of the `drills` profile (docker-compose.yml).

Process faults go through the Docker Engine API on the mounted socket: `kill` is POST /containers/{id}/kill
(SIGKILL; a container killed through the API is not restarted by its `restart: unless-stopped` policy, so it stays
down until the drill's start step), `start` POST /containers/{id}/start (204, or 304 when it already runs), `pause`
and `resume` POST …/pause and …/unpause (the cgroup freezer: the compose form of SIGSTOP). Containers are found by
compose's labels (`com.docker.compose.project`, `com.docker.compose.service`). Network faults use the profile's
Toxiproxy, whose proxies are created from drills/compose-toxiproxy.json at its start; the services reach the store
and PostgreSQL through them only when started with drills/compose.env (docs/drills.md says how).

Where everything is comes from the container's environment: FAPIAO_ISSUER_URL, FAPIAO_TAXSTORE_URL,
FAPIAO_RECONCILER_URL, FAPIAO_ADMIN_TOKEN, FAPIAO_KAFKA_BOOTSTRAP, FAPIAO_TOPIC_PREFIX, FAPIAO_TOXIPROXY_URL,
FAPIAO_DOCKER_SOCKET (default /var/run/docker.sock), FAPIAO_COMPOSE_PROJECT (default: the drill container's own
project label).

Not run on this project's machines (no Docker engine there): tests/unit/test_drill_compose.py checks the requests
this driver makes against a recording server on a unix socket, not against a Docker daemon.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx

from fapiao.drill.scenario import DB_PROXIED
from fapiao.drill.stack import PRIVATE_ONLY, put_back
from fapiao.infra.toxiproxy import Toxiproxy

__all__ = ["ComposeStack", "DockerAPI", "DockerError"]

# Fault target -> the Toxiproxy proxy in drills/compose-toxiproxy.json.
PROXIES = {"taxstore": "taxstore", **{f"postgres-{s}": f"postgres-{s}" for s in DB_PROXIED}}


class DockerError(RuntimeError):
    pass


class DockerAPI:
    """The few Docker Engine API calls a drill needs, over the unix socket."""

    def __init__(self, socket_path: str = "/var/run/docker.sock", *, timeout: float = 30.0) -> None:
        self.socket_path = socket_path
        self.http = httpx.Client(transport=httpx.HTTPTransport(uds=socket_path), base_url="http://docker",
                                 timeout=timeout)

    def _call(self, method: str, path: str, *, ok: tuple[int, ...] = (200, 204), **kw: Any) -> httpx.Response:
        try:
            r = self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise DockerError(f"Docker API at {self.socket_path}: {type(exc).__name__}: {exc} (is the socket "
                              "mounted into the drill container?)") from None
        if r.status_code not in ok:
            try:
                message = r.json().get("message", r.text)
            except ValueError:
                message = r.text
            raise DockerError(f"Docker API {method} {path}: HTTP {r.status_code} {message}")
        return r

    def containers(self, project: str, target: str) -> list[str]:
        """The ids of the containers (running or not) a drill's `target` names in compose project `project`: every
        replica of the service `target`; for `sync-2`, replica 2 of sync (compose's container number) unless a
        service has that name (kafka-2); for `kafka`, every node of the cluster (the services kafka-1, kafka-2, …)."""
        filters = {"label": [f"com.docker.compose.project={project}"]}
        listed = [(str(c["Id"]), (c.get("Labels") or {}).get("com.docker.compose.service", ""),
                   (c.get("Labels") or {}).get("com.docker.compose.container-number", "1"))
                  for c in self._call("GET", "/containers/json",
                                      params={"all": "true", "filters": json.dumps(filters)}).json()]
        found = [cid for cid, service, _ in listed if service == target]
        replica = re.fullmatch(r"(.+)-(\d+)", target)
        if not found and replica:
            found = [cid for cid, service, number in listed if service == replica[1] and number == replica[2]]
        elif not found:
            found = [cid for cid, service, _ in listed if re.fullmatch(rf"{re.escape(target)}-\d+", service)]
        if not found:
            raise DockerError(f"expected a container of service {target!r} in compose project {project!r}, found 0")
        return found

    def container(self, project: str, service: str) -> str:
        """The id of the one container `service` names (see containers)."""
        found = self.containers(project, service)
        if len(found) != 1:
            raise DockerError(f"expected one container of service {service!r} in compose project {project!r}, "
                              f"found {len(found)}")
        return found[0]

    def labels(self, container: str) -> dict[str, str]:
        return dict(self._call("GET", f"/containers/{container}/json").json()["Config"].get("Labels") or {})

    def running(self, container: str) -> bool:
        return bool(self._call("GET", f"/containers/{container}/json").json()["State"]["Running"])

    def kill(self, container: str) -> None:
        self._call("POST", f"/containers/{container}/kill", params={"signal": "SIGKILL"}, ok=(204, 409))

    def start(self, container: str) -> None:
        self._call("POST", f"/containers/{container}/start", ok=(204, 304))

    def pause(self, container: str) -> None:
        self._call("POST", f"/containers/{container}/pause", ok=(204,))

    def unpause(self, container: str) -> None:
        self._call("POST", f"/containers/{container}/unpause", ok=(204,))

    def close(self) -> None:
        self.http.close()


def _env(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, default)
    if not value:
        raise RuntimeError(f"{name} is not set: the drill container of the compose `drills` profile sets it "
                           "(docs/drills.md)")
    return value


@dataclass
class ComposeStack:
    """A compose stack as a drill's stack (see fapiao.drill.stack.DrillStack)."""

    name: str
    docker: DockerAPI | None = None
    project: str = ""
    proxies: dict[str, str] = field(default_factory=lambda: dict(PROXIES))
    spawner: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="spawner"))
    toxi: Toxiproxy | None = None
    killed: set[str] = field(default_factory=set)
    paused: set[str] = field(default_factory=set)
    ready_timeout: float = 120.0

    def __post_init__(self) -> None:
        self.urls = {"issuer": _env("FAPIAO_ISSUER_URL"), "taxstore": _env("FAPIAO_TAXSTORE_URL"),
                     "reconciler": _env("FAPIAO_RECONCILER_URL")}
        self.admin_token = _env("FAPIAO_ADMIN_TOKEN")
        self._bootstrap = _env("FAPIAO_KAFKA_BOOTSTRAP")
        self.prefix = os.environ.get("FAPIAO_TOPIC_PREFIX", "")
        if self.docker is None:
            self.docker = DockerAPI(os.environ.get("FAPIAO_DOCKER_SOCKET", "/var/run/docker.sock"))
        if not self.project:
            self.project = os.environ.get("FAPIAO_COMPOSE_PROJECT") or self.docker.labels(socket.gethostname()).get(
                "com.docker.compose.project", "")
        if not self.project:
            raise RuntimeError("cannot tell the compose project: set FAPIAO_COMPOSE_PROJECT")
        toxi_url = os.environ.get("FAPIAO_TOXIPROXY_URL")
        if toxi_url and self.toxi is None:
            self.toxi = Toxiproxy(toxi_url)

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    @property
    def kafka_bootstrap(self) -> str:
        return self._bootstrap

    def url(self, service: str) -> str:
        return self.urls[service]

    def _ids(self, target: str) -> list[str]:
        """`sync`: every replica; `sync-2`: one; `kafka`: every node; `kafka-2`: one."""
        assert self.docker is not None
        return self.docker.containers(self.project, target)

    def kill(self, target: str) -> None:
        assert self.docker is not None
        for cid in self._ids(target):
            self.docker.kill(cid)
        self.killed.add(target)

    def start(self, target: str) -> None:
        """Start the containers again and wait until the component answers (HTTP /readyz, or its port)."""
        assert self.docker is not None
        cids = self._ids(target)
        for cid in cids:
            self.docker.start(cid)
        self.killed.discard(target)
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if all(self.docker.running(cid) for cid in cids) and self._answers(target):
                return
            time.sleep(0.5)
        raise TimeoutError(f"{target} did not become ready within {self.ready_timeout:g}s after its start")

    def _answers(self, target: str) -> bool:
        if target in self.urls:
            try:
                return httpx.get(f"{self.urls[target]}/readyz", timeout=3).status_code == 200
            except httpx.HTTPError:
                return False
        host, port = {"kafka": ("kafka-1", 9092), "postgres": ("postgres", 5432)}.get(target, (target, 0))
        if re.fullmatch(r"kafka-\d+", target):
            port = 9092
        if not port:
            return True  # a service without a URL here (sync, notifier): its container runs
        try:
            with socket.create_connection((host, port), timeout=3):
                return True
        except OSError:
            return False

    def pause(self, target: str) -> None:
        assert self.docker is not None
        for cid in self._ids(target):
            self.docker.pause(cid)
        self.paused.add(target)

    def resume(self, target: str) -> None:
        assert self.docker is not None
        for cid in self._ids(target):
            self.docker.unpause(cid)
        self.paused.discard(target)

    def backup(self) -> str:
        raise RuntimeError(PRIVATE_ONLY)

    def restore(self) -> str:
        raise RuntimeError(PRIVATE_ONLY)

    def stop(self) -> list[str]:
        """Put back what a drill left: paused containers resumed, killed ones started, store faults cleared."""
        return put_back(self)
