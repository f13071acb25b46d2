"""`fapiao import` against the real issuer over real HTTP, through a TCP proxy that loses connections: one
Idempotency-Key per chunk, derived from the file, reused on every retry, so a lost answer or a rerun of the same
file issues nothing twice; bad files and refusals are one line, never a traceback."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from fapiao.infra import free_port
from services.issuer.csv_import import COLUMNS
from tests import factories
from tests.harness import REPO, RunningIssuer, issuer_settings, process_env, running_issuer, serve_app


@dataclass
class FlakyProxy:
    """Forwards HTTP/1.1 requests to `upstream` unchanged. Per request, as scripted: "pass"; "503" (answered
    here with Retry-After: 1, the upstream is not asked); "drop" (the upstream carries it out, then the
    connection is closed before its answer reaches the client)."""

    upstream: str
    port: int = field(default_factory=free_port)
    script: list[str] = field(default_factory=list)
    seen: list[dict] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                method, target, _ = head[0].split(" ", 2)
                headers = dict((k.strip().lower(), v.strip()) for k, v in (h.split(":", 1) for h in head[1:] if h))
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                action = self.script.pop(0) if self.script else "pass"
                self.seen.append({"method": method, "path": target, "key": headers.get("idempotency-key"),
                                  "action": action})
                if action == "503":
                    problem = b'{"status": 503, "detail": "proxy: try again"}'
                    writer.write(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: "
                                 b"application/problem+json\r\nContent-Length: %d\r\n\r\n%s" % (len(problem), problem))
                    await writer.drain()
                    continue
                forward = {k: v for k, v in headers.items() if k not in ("host", "content-length", "connection")}
                async with httpx.AsyncClient(base_url=self.upstream, timeout=60) as client:
                    resp = await client.request(method, target, content=body, headers=forward)
                if action == "drop":
                    return  # done upstream; the answer is lost
                out = resp.content
                kept = "".join(f"{k}: {v}\r\n" for k, v in resp.headers.items()
                               if k.lower() not in ("content-length", "transfer-encoding", "connection",
                                                    "content-encoding"))
                writer.write(f"HTTP/1.1 {resp.status_code} -\r\n{kept}Content-Length: {len(out)}\r\n\r\n"
                             .encode("latin-1") + out)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture(scope="module")
async def issuer(infra) -> AsyncIterator[RunningIssuer]:  # type: ignore[no-untyped-def]
    """This module's own issuer, gone when the module is: two issuers in one test process share the
    process-wide metrics (each sampler clears and sets the same gauges), which the dashboard tests read."""
    async with running_issuer(issuer_settings(infra)) as own:
        yield own


@pytest.fixture(scope="module")
async def issuer_http(issuer) -> AsyncIterator[str]:  # type: ignore[no-untyped-def]
    port = free_port()
    server, task = await serve_app(issuer.app, port)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True  # type: ignore[attr-defined]
    await asyncio.wait_for(task, 10)


@pytest.fixture
async def proxy(issuer_http: str) -> AsyncIterator[FlakyProxy]:
    p = FlakyProxy(issuer_http)
    await p.start()
    yield p
    p.server.close()


async def fapiao(infra, *args: str, **env: str) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    """The CLI as a user runs it, in its own process (this loop keeps serving the issuer and the proxy)."""
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "fapiao.cli", *args], env=process_env(infra, **env), cwd=REPO,
        capture_output=True, text=True, timeout=120)


def write_csv(path: Path, docs: list[dict]) -> Path:
    rows = [",".join(COLUMNS)]
    for d in docs:
        for ln in d["lines"]:
            rows.append(",".join([d["number"], d["kind"], d["issue_date"], d["buyer"]["tax_id"] or "",
                                  d["buyer"]["name"], ln["description"], ln["tax_code"], ln["quantity"],
                                  ln["unit_price"], ln["amount"], ln["tax_rate"], ln["tax_amount"], ""]))
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


async def stored(issuer, tenant, docs: list[dict]) -> dict[str, int]:  # type: ignore[no-untyped-def]
    counts = {}
    for d in docs:
        r = await issuer.client.get("/v1/invoices", params={"number": d["number"]}, headers=tenant.headers)
        counts[d["number"]] = len(r.json()["items"])
    return counts


def no_traceback(done: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert lines, "the failure is said"
    return lines[-1]


async def test_lost_answers_and_503s_are_retried_with_one_key_per_chunk_and_a_rerun_issues_nothing(
        infra, issuer, tenant, proxy, tmp_path):  # type: ignore[no-untyped-def]
    docs = [factories.invoice(tenant.tax_id, lines=[factories.line(), factories.line(quantity="3")])
            for _ in range(6)]
    csv_file = write_csv(tmp_path / "history.csv", docs)
    key = tenant.headers["Authorization"][7:]
    # Chunk 1: carried out but its answer lost, then a 503 with Retry-After, then through.
    proxy.script = ["drop", "503"]
    done = await fapiao(infra, "import", str(csv_file), "--api-key", key, "--url", proxy.url, "--chunk", "2",
                        "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["invoices"], summary["created"], summary["existing"], summary["rows"]) == (6, 6, 0, 12)
    assert summary["replayed_chunks"] == 1, "the lost answer came back from the first attempt"
    assert await stored(issuer, tenant, docs) == {d["number"]: 1 for d in docs}
    assert [s["action"] for s in proxy.seen] == ["drop", "503", "pass", "pass", "pass"]
    keys = [s["key"] for s in proxy.seen]
    assert keys[0] == keys[1] == keys[2], "every retry of a chunk carries its key"
    assert len(set(keys[2:])) == 3 and all(k.startswith("fapiao-import-") for k in keys)
    assert "retrying" in done.stderr

    # The same file again: the same keys, every chunk answered from the first run, nothing issued.
    first_keys = keys[2:]
    proxy.seen.clear()
    again = await fapiao(infra, "import", str(csv_file), "--api-key", key, "--url", proxy.url, "--chunk", "2",
                         "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["replayed_chunks"] == 3
    assert [s["key"] for s in proxy.seen] == first_keys
    assert await stored(issuer, tenant, docs) == {d["number"]: 1 for d in docs}
    table = await fapiao(infra, "import", str(csv_file), "--api-key", key, "--url", proxy.url, "--chunk", "2")
    assert table.returncode == 0 and "answered before" in table.stdout, table.stdout


async def test_bad_files_and_refusals_are_one_line_never_a_traceback(infra, tenant, proxy, tmp_path):  # type: ignore[no-untyped-def]
    key = tenant.headers["Authorization"][7:]
    good = write_csv(tmp_path / "good.csv", [factories.invoice(tenant.tax_id)])
    lines = good.read_text().splitlines()
    cases = {
        "unclosed quote": (lines[0] + "\n" + lines[1].replace(",深圳", ',"深圳', 1) + "\n").encode(),
        "huge cell": (lines[0] + "\n" + lines[1] + "x" * 200_000 + "\n").encode(),
        "extra cell": (lines[0] + "\n" + lines[1] + ",extra\n").encode(),
        "not UTF-8": good.read_bytes().replace("深".encode(), b"\xff"),
        "no number column": b"kind,remarks\nspecial,x\n",
    }
    for name, content in cases.items():
        path = tmp_path / f"{uuid.uuid4().hex}.csv"
        path.write_bytes(content)
        done = await fapiao(infra, "import", str(path), "--api-key", key, "--url", proxy.url)
        assert done.returncode == 2, (name, done.stderr)
        line = no_traceback(done)
        assert "cannot import" in line, (name, line)
        if name in ("unclosed quote", "huge cell", "extra cell"):
            assert "row 2" in line, (name, line)
    assert proxy.seen == [], "a file that cannot be read sends nothing"

    wrong_key = await fapiao(infra, "import", str(good), "--api-key", "fsk_" + "x" * 43, "--url", proxy.url)
    assert wrong_key.returncode == 2 and "401" in no_traceback(wrong_key)

    proxy.script = ["503", "503"]
    busy = await fapiao(infra, "import", str(good), "--api-key", key, "--url", proxy.url, "--retries", "1")
    assert busy.returncode == 2
    assert "503" in (line := no_traceback(busy)) and "rerun" in line, line
    assert [s["action"] for s in proxy.seen[-2:]] == ["503", "503"]

    nowhere = await fapiao(infra, "import", str(good), "--api-key", key, "--url", f"http://127.0.0.1:{free_port()}",
                           "--retries", "1")
    assert nowhere.returncode == 2 and "cannot reach" in no_traceback(nowhere)


async def test_resync_sends_one_idempotency_key_and_reuses_it_on_retry(infra, proxy):  # type: ignore[no-untyped-def]
    """What the CLI sends, seen on the wire (behind the proxy is the issuer, which has no such route: 404)."""
    proxy.script = ["503"]
    done = await fapiao(infra, "resync", str(uuid.uuid4()), FAPIAO_RECONCILER_URL=proxy.url)
    assert done.returncode == 2 and "404" in no_traceback(done)
    assert [s["method"] for s in proxy.seen] == ["POST", "POST"]
    first, retry = (s["key"] for s in proxy.seen)
    assert first and first == retry and first.startswith("fapiao-resync-")
