"""The compose drill driver's Docker Engine API calls. No Docker engine runs on this project's machines, so this
checks the requests against a server on a unix socket that answers as the Engine API documents (204 / 304 / 409,
the compose labels), and the store's fault reset over real HTTP. What it cannot show: that a real daemon does the
same; docs/drills.md says so."""

from __future__ import annotations

import json
import socket
import socketserver
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from fapiao.drill.compose import ComposeStack, DockerAPI, DockerError


class Engine:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        me = socket.gethostname()
        self.containers = {
            f"{name}-id": {"service": name, "running": True, "project": "drillproj"}
            for name in ("sync", "notifier", "issuer")
        }
        # A second replica of sync (compose numbers replicas 1, 2, …) and one node of a Kafka cluster.
        self.containers["sync-2-id"] = {"service": "sync", "running": True, "project": "drillproj", "number": "2"}
        self.containers["kafka-2-id"] = {"service": "kafka-2", "running": True, "project": "drillproj"}
        self.containers[me] = {"service": "drill", "running": True, "project": "drillproj"}


def _labels(c: dict[str, Any]) -> dict[str, str]:
    return {"com.docker.compose.project": c["project"], "com.docker.compose.service": c["service"],
            "com.docker.compose.container-number": c.get("number", "1")}


def _engine_handler(engine: Engine) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def address_string(self) -> str:  # a unix socket has no (host, port)
            return "unix"

        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, body: Any = None) -> None:
            data = b"" if body is None else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            engine.calls.append(("GET", url.path))
            if url.path == "/containers/json":
                labels = json.loads(parse_qs(url.query)["filters"][0])["label"]
                want = dict(label.split("=", 1) for label in labels)
                found = [{"Id": cid, "Labels": _labels(c)} for cid, c in engine.containers.items()
                         if want.items() <= _labels(c).items()]
                return self._send(200, found)
            cid = url.path.split("/")[2]
            c = engine.containers.get(cid)
            if c is None:
                return self._send(404, {"message": f"No such container: {cid}"})
            return self._send(200, {"Config": {"Labels": _labels(c)},
                                    "State": {"Running": c["running"]}})

        def do_POST(self) -> None:
            url = urlsplit(self.path)
            engine.calls.append(("POST", self.path))
            _, _, cid, verb = url.path.split("/")
            c = engine.containers[cid]
            if verb == "kill":
                if not c["running"]:
                    return self._send(409, {"message": f"Container {cid} is not running"})
                c["running"] = False
            elif verb == "start":
                if c["running"]:
                    return self._send(304)
                c["running"] = True
            return self._send(204)

    return Handler


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[tuple[Engine, str]]:
    engine = Engine()
    path = str(tmp_path / "docker.sock")
    server = _UnixHTTPServer(path, _engine_handler(engine))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield engine, path
    server.shutdown()
    server.server_close()


@pytest.fixture
def store() -> Iterator[tuple[str, list[tuple[str, str, Any]]]]:
    """A store stand-in over real HTTP: /readyz and PUT /admin/faults, recording what it was sent."""
    seen: list[tuple[str, str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _ok(self) -> None:
            self.send_response(200)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def do_GET(self) -> None:
            seen.append(("GET", self.path, None))
            self._ok()

        def do_PUT(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            seen.append(("PUT", self.path, (self.headers.get("authorization"), body)))
            self._ok()

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", seen
    server.shutdown()
    server.server_close()


def _stack(monkeypatch: pytest.MonkeyPatch, sock: str, url: str) -> ComposeStack:
    for var, value in {"FAPIAO_ISSUER_URL": url, "FAPIAO_TAXSTORE_URL": url, "FAPIAO_RECONCILER_URL": url,
                       "FAPIAO_ADMIN_TOKEN": "compose-admin-token", "FAPIAO_KAFKA_BOOTSTRAP": "kafka:9092",
                       "FAPIAO_DOCKER_SOCKET": sock}.items():
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("FAPIAO_COMPOSE_PROJECT", raising=False)
    monkeypatch.delenv("FAPIAO_TOXIPROXY_URL", raising=False)
    return ComposeStack("kill-sync", ready_timeout=5)


def test_kill_start_pause_resume_go_to_the_services_container_and_stop_puts_everything_back(
        engine: tuple[Engine, str], store: tuple[str, list[Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    eng, sock = engine
    url, seen = store
    st = _stack(monkeypatch, sock, url)
    assert st.project == "drillproj", "the project comes from the drill container's own labels"
    assert st.admin == {"Authorization": "Bearer compose-admin-token"} and st.kafka_bootstrap == "kafka:9092"

    st.kill("sync")
    assert not eng.containers["sync-id"]["running"]
    assert ("POST", "/containers/sync-id/kill?signal=SIGKILL") in eng.calls
    st.kill("sync")  # killing a stopped container is 409 from the engine: not an error for a drill
    st.start("sync")
    assert eng.containers["sync-id"]["running"] and "sync" not in st.killed
    st.start("issuer")  # already running: 304, then its /readyz answers
    assert ("GET", "/readyz", None) in seen

    # With replicas: `sync` is every one of them, `sync-2` the second; `kafka-2` one node of the cluster.
    st.kill("sync-2")
    assert not eng.containers["sync-2-id"]["running"] and eng.containers["sync-id"]["running"]
    st.start("sync-2")
    st.kill("sync")
    assert not eng.containers["sync-id"]["running"] and not eng.containers["sync-2-id"]["running"]
    st.start("sync")
    assert eng.containers["sync-id"]["running"] and eng.containers["sync-2-id"]["running"]
    assert st._ids("kafka-2") == ["kafka-2-id"] and st._ids("kafka") == ["kafka-2-id"], "kafka: every node"

    st.pause("notifier")
    st.kill("issuer")
    problems = st.stop()
    assert problems == []
    assert ("POST", "/containers/notifier-id/unpause") in eng.calls
    assert eng.containers["issuer-id"]["running"], "stop() starts what the drill left killed"
    (put,) = [s for s in seen if s[0] == "PUT"]
    assert put[1] == "/admin/faults" and put[2][0] == "Bearer compose-admin-token"
    assert put[2][1]["outage"] is False and put[2][1]["error_rate"] == 0


def test_an_unknown_service_and_a_missing_socket_are_named(engine: tuple[Engine, str], store: tuple[str, list[Any]],
                                                           monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _, sock = engine
    st = _stack(monkeypatch, sock, store[0])
    with pytest.raises(DockerError, match="service 'postgres' in compose project 'drillproj', found 0"):
        st.kill("postgres")
    with pytest.raises(DockerError, match="is the socket mounted"):
        DockerAPI(str(tmp_path / "absent.sock")).container("p", "sync")
    monkeypatch.delenv("FAPIAO_ISSUER_URL")
    with pytest.raises(RuntimeError, match="FAPIAO_ISSUER_URL is not set"):
        ComposeStack("x")
