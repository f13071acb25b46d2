"""One scenario run: a tenant with a webhook subscription, the open-loop workload recording every request and its
answer, the fault schedule, a bounded convergence wait, then the observation handed to the checker."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from fapiao.drill.checker import (
    CONTENT_FIELDS,
    FORM_FINAL,
    TERMINAL_OK,
    Alert,
    Answer,
    Form,
    IssuerInvoice,
    Observation,
    RedLetterAnswer,
    Sample,
    StoredInvoice,
    Verdict,
    check,
)
from fapiao.drill.scenario import Scenario, Step, consumed_topics
from fapiao.drill.stack import CLEAR_FAULTS, DrillStack
from fapiao.infra.kafka import REPO_ROOT

if str(REPO_ROOT) not in sys.path:  # tests.factories is not an installed package
    sys.path.insert(0, str(REPO_ROOT))

__all__ = ["ACTION_HANDLERS", "POISON_TOPICS", "Receiver", "ScenarioResult", "fault_windows", "run_scenario"]

RESTORE_REPORT_WAIT = 90.0  # seconds for the reconciler's sweep to report what a restore lost
# What a `poison` step without `topics` poisons: every topic some consumer group reads (shared.consumers).
POISON_TOPICS = consumed_topics()


class Receiver:
    """The tenant's webhook receiver: a tiny HTTP server in this event loop that keeps every request (webhook-id,
    type, invoice, case) and answers 503 while `down`."""

    def __init__(self, host: str = "127.0.0.1", advertise: str | None = None) -> None:
        self.host, self.advertise = host, advertise or host
        self.alerts: list[Alert] = []
        self.requests = 0
        self.down = False
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, self.host, 0)
        self.port = self.server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://{self.advertise}:{self.port}/hook"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A closed connection ends the loop; so does stop() cancelling a keep-alive connection that waits.
        with contextlib.suppress(Exception, asyncio.CancelledError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                headers = {}
                for line in head.decode("latin-1").split("\r\n")[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests += 1
                status = 503 if self.down else 200
                if not self.down:
                    self._record(headers.get("webhook-id", ""), body)
                writer.write(f"HTTP/1.1 {status} X\r\ncontent-length: 2\r\n\r\nok".encode())
                await writer.drain()
        writer.close()

    def _record(self, webhook_id: str, body: bytes) -> None:
        with contextlib.suppress(ValueError):
            doc = orjson.loads(body)
            items = doc["data"]["alerts"] if doc.get("type") == "invoice.alerts.digest" else [doc.get("data", {})]
            for item in items:
                self.alerts.append(Alert(webhook_id, item.get("type", doc.get("type", "")),
                                         item.get("invoice_id"), item.get("case_no"), item.get("number")))

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 3)


@dataclass
class ScenarioResult:
    scenario: Scenario
    verdict: Verdict
    started_at: float
    duration_s: float
    samples: list[Sample]
    faults: list[dict[str, Any]]                       # {at, label, ok, error}
    windows: list[tuple[float, float, str]]            # shaded fault windows
    offered_rate: float
    drain_rate: float | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    answers: list[Answer] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"scenario": self.scenario.name, "description": self.scenario.description,
                # a step that failed (a kill that found nothing to kill, a restore without a backup) proves nothing
                "passed": self.verdict.passed and self.error is None and all(f["ok"] for f in self.faults),
                "error": self.error,
                "duration_s": round(self.duration_s, 1), "offered_rate": self.offered_rate,
                "drain_rate": self.drain_rate, "verdict": self.verdict.as_dict(), "faults": self.faults,
                "windows": self.windows, "extra": self.extra,
                "samples": [{"at": round(s.at, 1), "statuses": s.statuses, "lag_s": round(s.oldest_unconfirmed_s, 1)}
                            for s in self.samples],
                # every request and its answer; write_reports moves them to drill-<time>-requests.jsonl
                "requests": [{"number": a.number, "client": a.client, "sent_at": round(a.sent_at, 3),
                              "answered_at": None if a.answered_at is None else round(a.answered_at, 3),
                              "status": a.status, "invoice_id": a.invoice_id, "error": a.error}
                             for a in self.answers]}


# The runner's action table: each action a scenario may name (fapiao.drill.scenario.ACTIONS) -> the Drill method
# that does it. tests/unit/test_drill_scenarios.py holds the two tables, and docs/drills.md's, to one another.
ACTION_HANDLERS: dict[str, str] = {
    "kill": "_process", "start": "_process", "restart": "_process",
    "pause": "_signal", "resume": "_signal",
    "store_faults": "_store_faults", "store_clear": "_store_faults", "store_lose": "_store_lose",
    "toxic": "_network", "toxics_clear": "_network", "proxy_down": "_network", "proxy_up": "_network",
    "db_cut": "_network", "db_restore": "_network",
    "poison": "_poison",
    "receiver_down": "_receiver", "receiver_up": "_receiver",
    "backup": "_backup", "restore": "_restore",
}


def fault_windows(scenario: Scenario) -> list[tuple[float, float, str]]:
    """Shaded spans for the chart: a kill/pause/fault step up to the step that undoes it."""
    undo = {"kill": "start", "pause": "resume", "store_faults": "store_clear", "toxic": "toxics_clear",
            "proxy_down": "proxy_up", "db_cut": "db_restore", "receiver_down": "receiver_up"}
    out = []
    for i, s in enumerate(scenario.steps):
        if s.action in undo:
            end = next((t.at for t in scenario.steps[i + 1:] if t.action == undo[s.action]
                        and t.target == s.target), scenario.load.duration)
            out.append((s.at, end, s.label()))
        elif s.action in ("restart", "store_lose", "poison", "backup", "restore"):
            out.append((s.at, s.at + 1, s.label()))
    return out


class Drill:
    def __init__(self, stack: DrillStack, scenario: Scenario, *, seed: int, rate: float | None,
                 duration: float | None, progress: Callable[[str], None]) -> None:
        self.stack, self.scenario, self.progress = stack, scenario, progress
        self.rate = rate or scenario.load.rate
        self.duration = duration or scenario.load.duration
        self.rng = random.Random(seed)
        self.answers: list[Answer] = []
        # In the compose drill container the notifier reaches the receiver by the container's name (compose.env).
        self.receiver = Receiver(os.environ.get("FAPIAO_DRILL_RECEIVER_HOST", "127.0.0.1"),
                                 os.environ.get("FAPIAO_DRILL_RECEIVER_ADVERTISE"))
        self.t0 = time.monotonic()
        self.http = httpx.AsyncClient(timeout=10)
        self.tenant: dict[str, Any] = {}
        self.acked_at: dict[str, float] = {}
        self.faults: list[dict[str, Any]] = []
        self.docs: dict[str, tuple[dict[str, Any], str | None]] = {}  # number -> (document, idempotency key)
        self.backup_at: float | None = None
        self.restored_at: float | None = None
        self.restore_missing: list[str] = []
        self.red_letters: list[RedLetterAnswer] = []

    def now(self) -> float:
        return time.monotonic() - self.t0

    # --- set-up ----------------------------------------------------------------------------------------------

    async def setup(self) -> None:
        from tests.factories import uscc

        await self.receiver.start()
        r = await self.http.post(f"{self.stack.url('issuer')}/admin/tenants", headers=self.stack.admin,
                                 json={"name": f"演练 Drill {self.scenario.name}", "tax_id": uscc()})
        r.raise_for_status()
        self.tenant = r.json()
        self.tenant["headers"] = {"Authorization": f"Bearer {self.tenant['api_key']}"}
        r = await self.http.post(f"{self.stack.url('issuer')}/v1/subscriptions", headers=self.tenant["headers"],
                                 json={"channel": "webhook", "url": self.receiver.url})
        if r.status_code != 201:
            raise RuntimeError(f"webhook subscription refused: HTTP {r.status_code} {r.text[:300]}")

    # --- workload --------------------------------------------------------------------------------------------

    async def _post(self, doc: dict[str, Any], key: str | None, client: int, deadline: float) -> None:
        """One client posting one invoice until it has an answer other than no-answer/5xx/429, or time is up."""
        headers = {**self.tenant["headers"], **({"Idempotency-Key": key} if key else {})}
        content = {f: doc[f] for f in CONTENT_FIELDS}
        delay = 0.2
        async with httpx.AsyncClient(timeout=8) as http:
            while True:
                sent = self.now()
                try:
                    r = await http.post(f"{self.stack.url('issuer')}/v1/invoices", headers=headers, json=doc)
                except httpx.HTTPError as exc:
                    self.answers.append(Answer(doc["number"], sent, content, None, error=type(exc).__name__,
                                               answered_at=self.now(), client=client))
                else:
                    body = r.json() if r.headers.get("content-type", "").endswith("json") else {}
                    inv_id = body.get("id") if r.status_code in (200, 201) else None
                    self.answers.append(Answer(doc["number"], sent, content, r.status_code, inv_id, self.now(),
                                               client=client))
                    if inv_id:
                        self.acked_at.setdefault(doc["number"], self.now())
                    if r.status_code < 500 and r.status_code != 429:
                        return
                if self.now() > deadline:
                    return
                await asyncio.sleep(delay * (0.5 + self.rng.random()))
                delay = min(delay * 2, 3.0)

    async def workload(self) -> None:
        from tests.factories import invoice

        tasks: list[asyncio.Task[None]] = []
        n = int(self.rate * self.duration)
        seller = self.tenant["tax_id"]
        for i in range(n):
            await asyncio.sleep(max(0.0, i / self.rate - self.now()))
            doc = invoice(seller)
            key = uuid.UUID(int=self.rng.getrandbits(128)).hex if self.scenario.load.idempotency_key else None
            self.docs[doc["number"]] = (doc, key)
            red_key = uuid.UUID(int=self.rng.getrandbits(128)).hex \
                if self.rng.random() < self.scenario.load.red_letters else None
            tasks.append(asyncio.create_task(self._invoice(doc, key, red_key, deadline=self.duration + 60)))
        await asyncio.gather(*tasks)

    async def _invoice(self, doc: dict[str, Any], key: str | None, red_key: str | None, deadline: float) -> None:
        """Each client posts the invoice; then, if it is one of the `red_letters` share, its full red letter."""
        await asyncio.gather(*(self._post(doc, key, c, deadline) for c in range(self.scenario.load.clients)))
        acked = next((a.invoice_id for a in self.answers if a.number == doc["number"] and a.invoice_id), None)
        if red_key is not None and acked is not None:
            await self._red_letter(doc["number"], acked, red_key, deadline)

    async def _red_letter(self, number: str, invoice_id: str, key: str, deadline: float) -> None:
        """Ask for a full red letter (reason 01) once the authority holds the invoice, with one Idempotency-Key,
        until an answer other than no-answer/5xx/429 or "not at the authority yet", or time is up."""
        headers = {**self.tenant["headers"], "Idempotency-Key": key}
        delay = 0.5
        async with httpx.AsyncClient(timeout=8) as http:
            while self.now() <= deadline:
                sent = self.now()
                try:
                    r = await http.post(f"{self.stack.url('issuer')}/v1/invoices/{invoice_id}/red-letter",
                                        headers=headers, json={"reason_code": "01"})
                except httpx.HTTPError:
                    self.red_letters.append(RedLetterAnswer(number, invoice_id, sent, None))
                else:
                    body = r.json() if r.headers.get("content-type", "").endswith("json") else {}
                    ok = r.status_code in (200, 202)
                    code = None if ok else body.get("code")
                    self.red_letters.append(RedLetterAnswer(number, invoice_id, sent, r.status_code,
                                                            body.get("id") if ok else None, code))
                    if r.status_code < 500 and r.status_code != 429 and code != "not_at_authority":
                        return
                await asyncio.sleep(delay * (0.5 + self.rng.random()))
                delay = min(delay * 2, 3.0)

    # --- faults ----------------------------------------------------------------------------------------------

    async def schedule(self) -> None:
        for step in self.scenario.steps:
            await asyncio.sleep(max(0.0, step.at - self.now()))
            entry: dict[str, Any] = {"at": round(self.now(), 1), "label": step.label(), "ok": True}
            self.progress(f"  {self.now():6.1f}s  {step.label()}")
            try:
                if note := await self.apply(step):  # e.g. which replica owned the relay, and who took it over
                    entry["note"] = note
                    self.progress(f"          {note}")
            except Exception as exc:  # noqa: BLE001 - a failed step is reported, the drill goes on
                entry.update(ok=False, error=f"{type(exc).__name__}: {exc}")
                self.progress(f"          step failed: {entry['error']}")
            self.faults.append(entry)

    async def in_spawner(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a start in the run's one spawner thread (see DrillInfra.spawner)."""
        return await asyncio.get_running_loop().run_in_executor(self.stack.spawner, fn, *args)

    async def apply(self, step: Step) -> str | None:
        """Do one step; returns what it found out worth reporting (a kill of `<service>:relay`: whose, who next)."""
        handler = ACTION_HANDLERS.get(step.action)
        if handler is None:  # the loader refuses unknown actions; this is the one place that would miss a new one
            raise RuntimeError(f"action {step.action} is not implemented")
        result: str | None = await getattr(self, handler)(step)
        return result

    async def _process(self, step: Step) -> str | None:  # kill, start, restart; the loader makes sure of a target
        note = None
        if step.action != "start":
            note = await self.in_spawner(self.stack.kill, step.target)
        if step.action != "kill":
            await self.in_spawner(self.stack.start, step.target)
        return note

    async def _signal(self, step: Step) -> None:  # pause, resume
        (self.stack.pause if step.action == "pause" else self.stack.resume)(step.target)  # type: ignore[arg-type]

    async def _store_faults(self, step: Step) -> None:  # store_faults, store_clear
        st = self.stack
        body = step.params if step.action == "store_faults" else CLEAR_FAULTS
        r = await self.http.put(f"{st.url('taxstore')}/admin/faults", headers=st.admin, json=body)
        r.raise_for_status()

    async def _store_lose(self, step: Step) -> None:
        st = self.stack
        r = await self.http.post(f"{st.url('taxstore')}/admin/lose", headers=st.admin,
                                 json={"count": step.params["count"], "seller_tax_id": self.tenant["tax_id"]})
        r.raise_for_status()
        self.faults.append({"at": round(self.now(), 1), "label": f"store lost {len(r.json()['lost'])}", "ok": True})

    async def _network(self, step: Step) -> None:  # toxic, toxics_clear, proxy_down/up, db_cut/restore
        st, act, p = self.stack, step.action, step.params
        toxi = st.toxi
        if toxi is None:
            raise RuntimeError("no Toxiproxy in this run (set network = true in the scenario)")
        key = "taxstore" if act in ("toxic", "toxics_clear", "proxy_down", "proxy_up") else f"postgres-{step.target}"
        proxy = st.proxies.get(key)
        if proxy is None:  # e.g. compose, whose drills env routes only some services through Toxiproxy
            raise RuntimeError(f"this stack has no Toxiproxy proxy {key!r} (it has: "
                               f"{', '.join(sorted(st.proxies)) or 'none'})")
        if act == "toxic":
            await asyncio.to_thread(toxi.add_toxic, proxy, p["type"], attributes=p.get("attributes"),
                                    stream=p.get("stream", "downstream"), toxicity=p.get("toxicity", 1.0),
                                    name=p.get("name"))
        elif act == "toxics_clear":
            await asyncio.to_thread(toxi.clear_toxics, proxy)
        else:
            await asyncio.to_thread(toxi.set_enabled, proxy, act in ("proxy_up", "db_restore"))

    async def _poison(self, step: Step) -> None:
        await self.poison(step.params.get("topics", list(POISON_TOPICS)), int(step.params.get("count", 3)))

    async def _receiver(self, step: Step) -> None:  # receiver_down, receiver_up
        self.receiver.down = step.action == "receiver_down"

    async def _backup(self, step: Step) -> str:
        self.backup_at = self.now()  # anything acknowledged before the dump began is in it
        note: str = await self.in_spawner(self.stack.backup)
        return note

    async def _restore(self, step: Step) -> str:
        note = await self.in_spawner(self.stack.restore)
        self.restored_at = self.now()
        return f"{note}; {await self.after_restore()}"

    async def after_restore(self) -> str:
        """What the runbook asks after a restore, with its proof. The reconciler must report each invoice the
        authority holds that the restored system lost (an orphan alert, within RESTORE_REPORT_WAIT); then the ERP
        re-sends every invoice it was told was accepted after the backup (the authority keeps their receipts)."""
        assert self.backup_at is not None and self.restored_at is not None
        # (until the restore is done: a replica still answers while the others are being killed)
        lost = sorted(n for n, at in self.acked_at.items() if self.backup_at <= at < self.restored_at)
        known = {i.number for i in await self.issuer_invoices()}
        held = {s.number for s in await self.stored()}
        self.restore_missing = [n for n in lost if n in held and n not in known]
        missing = set(self.restore_missing)

        def reported() -> set[str | None]:
            return {a.number for a in self.receiver.alerts if a.type == "invoice.orphan"} & missing

        t0 = self.now()
        while self.now() - t0 < RESTORE_REPORT_WAIT:
            if reported() == missing:
                break
            await asyncio.sleep(0.5)
        waited, told = self.now() - t0, reported()
        resend = [n for n in lost if n not in known]
        await asyncio.gather(*(self._post(*self.docs[n], client=0, deadline=self.now() + 60) for n in resend))
        return (f"{len(lost)} acknowledged after the backup began: {len(lost) - len(resend)} in the backup, "
                f"{len(self.restore_missing)} lost by the restore and held by the authority ({len(told)} "
                f"reported as orphans within {waited:.0f}s), {len(resend) - len(self.restore_missing)} "
                f"lost and never at the authority; {len(resend)} re-sent by the ERP")

    async def poison(self, topics: list[str], count: int) -> None:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(bootstrap_servers=self.stack.kafka_bootstrap)
        await producer.start()
        try:
            for topic in topics:
                for i in range(count):
                    value = [b"\xff\xfenot json", b'{"specversion":"1.0","type":"invoice.issued","data":{}}',
                             b'{"type":"made.up"}'][i % 3]
                    await producer.send_and_wait(f"{self.stack.prefix}{topic}", value, key=b"poison")
        finally:
            await producer.stop()

    # --- observing -------------------------------------------------------------------------------------------

    async def _pages(self, url: str, params: dict[str, Any],
                     headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """Every item of a listing, following `next_cursor` from page to page."""
        out: list[dict[str, Any]] = []
        cursor = None
        while True:
            r = await self.http.get(url, headers=headers, params={**params, **({"cursor": cursor} if cursor else {})})
            r.raise_for_status()
            body = r.json()
            out += body["items"]
            cursor = body.get("next_cursor")
            if not cursor:
                return out

    async def issuer_invoices(self) -> list[IssuerInvoice]:
        items = await self._pages(f"{self.stack.url('issuer')}/v1/invoices", {"limit": 200}, self.tenant["headers"])
        return [IssuerInvoice(i["id"], i["number"], i["status"], i.get("reason"), i.get("next_action"),
                              i.get("case_no")) for i in items]

    async def stored(self) -> list[StoredInvoice]:
        items = await self._pages(f"{self.stack.url('taxstore')}/v1/invoices", {
            "seller_tax_id": self.tenant["tax_id"], "limit": 1000, "include_content": "true"})
        out = []
        for item in items:
            content = item.get("content") or {}
            out.append(StoredInvoice(item["number"], {"total": item.get("total"),
                                                      **{f: content.get(f) for f in CONTENT_FIELDS
                                                         if content.get(f) is not None}}))
        return out

    async def forms(self) -> list[Form]:
        items = await self._pages(f"{self.stack.url('issuer')}/v1/red-letter-forms", {"limit": 200},
                                  self.tenant["headers"])
        return [Form(f["id"], f["number"], f["status"], f.get("reason"), f.get("red_invoice_id"),
                     f.get("red_invoice_number")) for f in items]

    async def forms_settled(self) -> bool:
        """Every acknowledged red-letter form is final, and a confirmed one's red invoice confirmed."""
        wanted = {a.form_id for a in self.red_letters if a.form_id}
        if not wanted:
            return True
        try:
            forms, invoices = await self.forms(), await self.issuer_invoices()
        except (httpx.HTTPError, KeyError, ValueError):
            return False
        status = {i.id: i.status for i in invoices}
        mine = [f for f in forms if f.id in wanted]
        return len(mine) == len(wanted) and all(
            f.status in FORM_FINAL and (f.status != "confirmed" or status.get(f.red_invoice_id or "") == "confirmed")
            for f in mine)

    async def cases(self) -> list[dict[str, Any]]:
        r = await self.http.get(f"{self.stack.url('reconciler')}/admin/cases", headers=self.stack.admin,
                                params={"tenant_id": self.tenant["id"], "limit": 1000})
        r.raise_for_status()
        return [{**c, "invoice_id": str(c["invoice_id"])} for c in r.json()["items"]]

    async def sample(self) -> Sample | None:
        acked = dict(self.acked_at)  # before the listing: an invoice acknowledged during it is counted next time
        try:
            invoices = await self.issuer_invoices()
        except (httpx.HTTPError, KeyError, ValueError):
            return None
        now = self.now()
        by_number = {i.number: i for i in invoices}
        statuses: dict[str, int] = {}
        oldest = 0.0
        for number, at in acked.items():
            inv = by_number.get(number)
            status = inv.status if inv else "unknown"
            statuses[status] = statuses.get(status, 0) + 1
            if status not in TERMINAL_OK:
                oldest = max(oldest, now - at)
        return Sample(now, statuses, oldest)


async def run_scenario(stack: DrillStack, scenario: Scenario, *, seed: int = 1, rate: float | None = None,
                       duration: float | None = None, settle: float | None = None,
                       progress: Callable[[str], None] = print) -> ScenarioResult:
    d = Drill(stack, scenario, seed=seed, rate=rate, duration=duration, progress=progress)
    started = time.time()
    await d.setup()
    d.t0 = time.monotonic()
    samples: list[Sample] = []
    stuck_ok = bool(scenario.expect.get("stuck_allowed"))
    done = asyncio.Event()

    async def sampler() -> None:
        while not done.is_set():
            s = await d.sample()
            if s is not None:
                samples.append(s)
                acked = len(d.acked_at)
                settled = sum(n for k, n in s.statuses.items() if k in TERMINAL_OK
                              or (stuck_ok and k == "stuck"))
                counts = " ".join(f"{k}={v}" for k, v in sorted(s.statuses.items()))
                progress(f"  {s.at:6.1f}s  acknowledged {acked:5d}  settled {settled:5d}  {counts}  "
                         f"lag {s.oldest_unconfirmed_s:.0f}s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 2.0)

    sampling = asyncio.create_task(sampler())
    error = None
    try:
        await asyncio.gather(d.workload(), d.schedule())
        load_end = d.now()
        wait = settle if settle is not None else scenario.settle
        deadline = d.now() + wait
        while d.now() < deadline:
            s = samples[-1] if samples else None
            if s is not None and s.at > load_end and d.acked_at and sum(
                    n for k, n in s.statuses.items()
                    if k in TERMINAL_OK or (stuck_ok and k == "stuck")) >= len(d.acked_at) \
                    and await d.forms_settled():
                break
            await asyncio.sleep(1)
        if stuck_ok:  # a stuck invoice's alert may still be on its way while the receiver was down
            await asyncio.sleep(5)
    except Exception as exc:  # noqa: BLE001 - reported with the verdict on what was recorded
        error = f"{type(exc).__name__}: {exc}"
        load_end = d.now()
    finally:
        done.set()
        await sampling
    obs = Observation(d.answers, [], [], [], d.receiver.alerts, samples, faults_end=scenario.faults_end,
                      load_end=load_end, stuck_allowed=stuck_ok, restored_at=d.restored_at,
                      restore_missing=list(d.restore_missing), red_letters=list(d.red_letters))
    try:
        obs.stored, obs.issuer, obs.cases = await d.stored(), await d.issuer_invoices(), await d.cases()
        obs.forms = await d.forms() if d.red_letters else []
    except (httpx.HTTPError, KeyError) as exc:
        error = error or f"collecting the outcome failed: {type(exc).__name__}: {exc}"
    obs.alerts = list(d.receiver.alerts)
    verdict = check(obs)
    await d.receiver.stop()
    await d.http.aclose()
    return ScenarioResult(scenario, verdict, started, d.now(), samples, d.faults, fault_windows(scenario),
                          offered_rate=d.rate, drain_rate=_drain_rate(samples, scenario), error=error,
                          extra={"alerts_received": len(d.receiver.alerts), "webhook_requests": d.receiver.requests},
                          answers=list(d.answers))


def _drain_rate(samples: list[Sample], scenario: Scenario) -> float | None:
    """Invoices confirmed per second in the 20 s after the last fault step: how fast a backlog drains."""
    if not scenario.steps:
        return None
    t = scenario.faults_end
    inside = [s for s in samples if t <= s.at <= t + 20]
    if len(inside) < 2:
        return None
    first, last = inside[0], inside[-1]
    span = last.at - first.at
    return round((last.statuses.get("confirmed", 0) - first.statuses.get("confirmed", 0)) / span, 1) if span else None
