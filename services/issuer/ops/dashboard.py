"""The operators' view of the whole pipeline, served by the issuer: a live dashboard page at /ops and the JSON
it reads at /ops/api (admin token).

A sampler takes a reading every FAPIAO_OPS_SAMPLE_INTERVAL seconds and keeps the last FAPIAO_OPS_HISTORY
seconds of them in table `issuer.ops_samples`, so that the page's charts (invoices waiting, consumer lag,
end-to-end latency, unconfirmed and stuck invoices) have a history as soon as the page opens, after a restart too:
consumer-group lag and dead-letter counts from the broker, gaps, stuck invoices and confirmation latency from the
reconciler, counts and the invoices waiting by stage from the issuer's own ledger. Issuer replicas share the table:
a replica skips its reading when another one has just taken one, so there is one history.

Dead letters are counted per original record, not per copy: every consumer group that gives up on a record
writes its own copy (20 bad events on invoice.events.v1 are 40 copies, one per group), so the figure is the
records set aside, with the groups that set each aside alongside (shared.kafka.DeadLetterCount).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
import zlib
from collections import deque
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Final

import httpx
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse
from prometheus_client import Gauge
from sqlalchemy import delete, func, literal, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.issuer import models as m
from services.issuer.ops.figures import ops_figures
from services.issuer.ops.waiting import waiting
from services.issuer.settings import IssuerSettings
from shared.audit import ON_BEHALF
from shared.consumers import ALL_GROUPS
from shared.contracts.taxstore import FaultsUpdate
from shared.db import database_unavailable, transaction
from shared.http import require_admin
from shared.kafka import DeadLetterCount, OffsetReader
from shared.loops import run_rounds
from shared.topics import ALL_TOPICS

__all__ = ["OpsSampler", "page_router", "router"]

log = logging.getLogger(__name__)

# With several API workers (services/issuer/workers.py) the worker answering /metrics has just published its
# sampler's reading: the most recent one is the truth.
LATEST: Final = "livemostrecent"
DLQ_RECORDS = Gauge("fapiao_dlq_records", "Original records a dead-letter topic holds, each counted once however "
                    "many consumer groups set it aside", ["topic"],
                    multiprocess_mode=LATEST)
DLQ_GROUP_RECORDS = Gauge("fapiao_dlq_group_records", "Original records a consumer group set aside on a dead-letter "
                          "topic", ["topic", "group"], multiprocess_mode=LATEST)
INVOICES = Gauge("fapiao_issuer_invoices", "Invoices in the issuer's ledger, by status", ["status"],
                 multiprocess_mode=LATEST)
GROUP_LAG = Gauge("fapiao_consumer_group_lag_records",
                  "Records a consumer group has not committed yet, as the broker sees it", ["group"],
                  multiprocess_mode=LATEST)
WAITING = Gauge("fapiao_pipeline_waiting_invoices",
                "Invoices not yet confirmed at the authority, by the stage they wait in (ops/waiting.py)", ["stage"],
                multiprocess_mode=LATEST)
OLDEST_WAITING = Gauge("fapiao_pipeline_oldest_waiting_seconds",
                       "Seconds since the oldest invoice now in a stage was accepted (0 when the stage is empty)",
                       ["stage"], multiprocess_mode=LATEST)

PAGE = Path(__file__).parents[1] / "static" / "ops.html"
_SAMPLES_LOCK = zlib.crc32(b"issuer.ops_samples")

# The gauges above belong to the process. A service process runs one sampler; in a process that runs several
# issuers (the test suite's, each on topics of its own) each issuer's /metrics first publishes its own sampler's
# last reading (app.state.before_metrics), so a scrape always shows the issuer it asked.


def consumer_groups(prefix: str) -> dict[str, tuple[str, list[str]]]:
    """name shown (the owning service) -> (consumer group, its topics), for every consumer in the system."""
    return {g.service: (g.qualified(prefix), g.topic_names(prefix)) for g in ALL_GROUPS}


class OpsSampler:
    def __init__(self, *, settings: IssuerSettings, sessions: async_sessionmaker[AsyncSession],
                 reconciler_http: httpx.AsyncClient) -> None:
        self.settings = settings
        self.sessions = sessions
        self.reconciler_http = reconciler_http
        self.offsets = OffsetReader(settings.kafka_bootstrap)
        self.groups = consumer_groups(settings.topic_prefix)
        self.dlq_topics = [t.qualified(settings.topic_prefix) for t in ALL_TOPICS if t.name.endswith(".dlq")]
        size = max(2, int(settings.ops_history / settings.ops_sample_interval))
        self.series: deque[dict[str, Any]] = deque(maxlen=size)
        self.latest: dict[str, Any] = {}
        self.stopping = asyncio.Event()
        self._abandoned: asyncio.Future[None] | None = None
        self._last: tuple[Any, dict[str, int], dict[str, DeadLetterCount] | None, dict[str, int | None] | None] \
            | None = None
        self._sampling: asyncio.Future[bool] | None = None

    async def run(self) -> None:
        try:
            await run_rounds("ops-sample", self.sample, stopping=self.stopping,
                             idle=lambda: self.settings.ops_sample_interval)
        finally:
            await self.offsets.close()

    def stop(self) -> None:
        self.stopping.set()

    async def fresh(self) -> None:
        """A reading now unless the last is less than an interval old: how an API worker of several samples (it
        runs no loop; the background process does, and keeps the shared history and the gauges). Concurrent
        callers share one reading; a failed one leaves the last (its age shows on the page)."""
        taken = (self.latest.get("point") or {}).get("t")
        if taken is not None and time.time() - taken < self.settings.ops_sample_interval:
            return
        if self._sampling is None or self._sampling.done():
            self._sampling = asyncio.ensure_future(self.sample())
        try:
            await asyncio.shield(self._sampling)
        except Exception as exc:  # noqa: BLE001 - the overview shows what it has, and says how old it is
            log.warning("ops reading failed (%s: %s)", type(exc).__name__, str(exc)[:200])

    async def _kafka(self) -> tuple[dict[str, int | None] | None, dict[str, DeadLetterCount] | None, str | None]:
        # A hard bound over the reader's own timeouts: an aiokafka call that ignores its cancellation must not
        # stop the readings (the dashboard would show a stale picture as if it were now).
        reading = asyncio.ensure_future(self._read_kafka())
        done, _ = await asyncio.wait({reading}, timeout=3 * self.offsets.timeout + 1)
        if done and reading.cancelled():  # a client's inner future cancelled under it: a failed reading
            return None, None, "CancelledError: the Kafka client dropped the request"
        if done:
            return reading.result()
        reading.cancel()
        stuck = self.offsets
        self.offsets = OffsetReader(self.settings.kafka_bootstrap, timeout=stuck.timeout)
        self._abandoned = asyncio.ensure_future(stuck.close())  # in the background, never awaited here
        log.warning("reading consumer lag and dead letters took longer than %.0f s; starting over",
                    3 * stuck.timeout + 1)
        return None, None, "TimeoutError: Kafka could not be read in time"

    async def _read_kafka(self) -> tuple[dict[str, int | None] | None, dict[str, DeadLetterCount] | None, str | None]:
        try:
            lags = await self.offsets.lags({group: topics for group, topics in self.groups.values()})
            dlq = await self.offsets.dead_letters(self.dlq_topics)
        except Exception as exc:  # noqa: BLE001 - the dashboard says Kafka cannot be read; it does not fail
            return None, None, f"{type(exc).__name__}: {exc}"[:200]
        by_name = {name: lags[group] for name, (group, _) in self.groups.items()}
        return by_name, dlq, None

    def _group_name(self, group: str) -> str:
        """A consumer group as the dashboard names it (sync, reconciler, ...); another group by its id."""
        return next((name for name, (g, _) in self.groups.items() if g == group), group)

    async def _reconciler(self) -> tuple[dict[str, Any] | None, str | None]:
        try:
            r = await self.reconciler_http.get("/admin/status", timeout=self.settings.reconciler_timeout)
            r.raise_for_status()
            return r.json(), None
        except (httpx.HTTPError, ValueError) as exc:
            return None, f"{type(exc).__name__}"

    def publish(self) -> None:
        """The gauges from this sampler's last reading (the issuer's /metrics calls it before rendering)."""
        if self._last is not None:
            self._set_gauges(*self._last)

    def _set_gauges(self, queue: Any, counts: dict[str, int], dlq: dict[str, DeadLetterCount] | None,
                    lags: dict[str, int | None] | None) -> None:
        for stage in queue.stages:
            WAITING.labels(stage.stage).set(stage.count)
            OLDEST_WAITING.labels(stage.stage).set(stage.oldest_seconds or 0)
        # Whole snapshots: a status that dropped to no invoices, or a lag that cannot be read, must not linger.
        INVOICES.clear()
        for status, n in counts.items():
            INVOICES.labels(status).set(n)
        if dlq is not None:
            DLQ_RECORDS.clear()
            DLQ_GROUP_RECORDS.clear()
            for topic, count in dlq.items():
                label = topic.removeprefix(self.settings.topic_prefix)
                DLQ_RECORDS.labels(label).set(count.records)
                for group, n in count.groups.items():
                    DLQ_GROUP_RECORDS.labels(label, group).set(n)
        GROUP_LAG.clear()
        for name, lag in (lags or {}).items():
            if lag is not None:
                GROUP_LAG.labels(self.groups[name][0]).set(lag)

    async def sample(self) -> bool:
        """One reading: lag, dead letters, reconciler figures, counts; appended to the series."""
        (lags, dlq, kafka_error), (recon, recon_error) = await asyncio.gather(self._kafka(), self._reconciler())
        async with transaction(self.sessions) as session:
            figures = await ops_figures(session=session, tenant_id=None, stuck_limit=0, with_tenants=False)
            queue = await waiting(session=session)
        self._last = (queue, figures.counts, dlq, lags)
        self._set_gauges(*self._last)
        latency = (recon or {}).get("confirmation_latency") or {}
        point = {
            "t": round(time.time(), 3), "lag": lags, "counts": figures.counts,
            "waiting": queue.total, "oldest_waiting_seconds": queue.oldest_seconds,
            "waiting_stages": {s.stage: s.count for s in queue.stages},
            # per topic: original records; and for each consumer group, the records it set aside
            "dlq": None if dlq is None else {t: c.records for t, c in dlq.items()},
            "dlq_groups": None if dlq is None else {
                t: {self._group_name(g): n for g, n in c.groups.items()} for t, c in dlq.items()},
            "unconfirmed": (recon or {}).get("unconfirmed"), "stuck": (recon or {}).get("stuck"),
            "oldest_unconfirmed_seconds": (recon or {}).get("oldest_unconfirmed_seconds"),
            "e2e_p50": latency.get("p50"), "e2e_p95": latency.get("p95"), "confirmed_recently": latency.get("count"),
        }
        self.series.append(point)
        self.latest = {"point": point, "reconciler": recon, "errors": {"kafka": kafka_error,
                                                                       "reconciler": recon_error}}
        await self._keep(point)
        return False

    async def _keep(self, point: dict[str, Any]) -> None:
        """Into the shared history, unless another replica took a reading within half an interval; old ones out."""
        s = m.ops_samples
        half = timedelta(seconds=self.settings.ops_sample_interval / 2)
        now = datetime.fromtimestamp(point["t"], UTC)
        async with transaction(self.sessions) as session:
            # One writer at a time, so two replicas sampling at the same moment cannot both see no recent reading.
            await session.execute(select(func.pg_advisory_xact_lock(_SAMPLES_LOCK)))
            recent = select(s.c.t).where(s.c.t > now - half, s.c.t < now + half).exists()
            await session.execute(pg_insert(s).from_select(
                ["t", "point"], select(literal(now), literal(point, JSONB)).where(~recent)).on_conflict_do_nothing())
            await session.execute(delete(s).where(s.c.t < now - timedelta(seconds=self.settings.ops_history)))

    async def history(self) -> list[dict[str, Any]]:
        """The shared history, oldest first; this replica's own readings when the database cannot be read."""
        s = m.ops_samples
        since = datetime.now(UTC) - timedelta(seconds=self.settings.ops_history)
        try:
            async with transaction(self.sessions) as session:
                newest = (await session.execute(select(s.c.point).where(s.c.t >= since).order_by(s.c.t.desc())
                                                .limit(self.series.maxlen or 10_000))).scalars()
                return list(reversed(list(newest)))
        except Exception as exc:
            if database_unavailable(exc) is None:
                raise
            return list(self.series)


def reading_errors(latest: dict[str, Any], *, now: float, interval: float) -> dict[str, str | None]:
    """The last reading's errors, and one more when that reading is too old to stand for now: a sampler that
    stopped must not leave its last picture on the page as if it were current."""
    errors: dict[str, str | None] = dict(latest.get("errors") or {})
    taken = (latest.get("point") or {}).get("t")
    if taken is not None and now - taken > 3 * interval + 20:
        errors["sampler"] = f"the last reading is {now - taken:.0f} s old: lag and counts below are from then"
    return errors


# --- HTTP --------------------------------------------------------------------------------------------------

page_router = APIRouter(tags=["operations"])
router = APIRouter(prefix="/ops/api", tags=["operations"], dependencies=[Depends(require_admin)])


@page_router.get("/ops", response_class=HTMLResponse, include_in_schema=False)
async def page() -> HTMLResponse:
    """The dashboard. The page holds no data and no secret: it asks for the admin token and reads /ops/api."""
    return HTMLResponse(PAGE.read_text(encoding="utf-8"), headers={"Cache-Control": "no-store"})


async def _health(client: httpx.AsyncClient, name: str, url: str) -> dict[str, Any]:
    try:
        r = await client.get(f"{url}/readyz", timeout=2)
        body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
        return {"name": name, "url": url, "ready": r.status_code == 200, "checks": body.get("checks")}
    except (httpx.HTTPError, ValueError) as exc:
        return {"name": name, "url": url, "ready": False, "checks": {"http": type(exc).__name__}}


async def _admin_get(client: httpx.AsyncClient, url: str, **params: Any) -> Any:
    try:
        r = await client.get(url, params={k: v for k, v in params.items() if v is not None}, timeout=5)
        return r.json() if r.status_code == 200 else {"error": f"HTTP {r.status_code}"}
    except (httpx.HTTPError, ValueError) as exc:
        return {"error": type(exc).__name__}


@router.get("/overview")
async def overview(request: Request, tenant_id: uuid.UUID | None = None,
                   stuck_limit: Annotated[int, Query(ge=0, le=500)] = 50) -> dict[str, Any]:
    """Everything the dashboard shows, in one answer: services, counts (per tenant if asked), the sampled
    series, gaps, stuck invoices with reason and case, recent alerts, the tax store's faults."""
    st = request.app.state
    s: IssuerSettings = st.settings
    sampler: OpsSampler | None = st.ops_sampler
    token = s.admin_token.get_secret_value()
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as client:
        services = [("issuer", s.public_url), ("taxstore", s.taxstore_url), ("sync", s.sync_url),
                    ("reconciler", s.reconciler_url), ("notifier", s.notifier_url)]
        health, alerts, faults = await asyncio.gather(
            asyncio.gather(*(_health(client, n, u) for n, u in services if n != "issuer")),
            _admin_get(client, f"{s.notifier_url}/admin/alerts", limit=20, tenant_id=tenant_id),
            _admin_get(client, f"{s.taxstore_url}/admin/faults"))
    async with transaction(st.sessions) as session:
        figures = await ops_figures(session=session, tenant_id=tenant_id, stuck_limit=stuck_limit)
        queue = await waiting(session=session, tenant_id=tenant_id)
    if sampler is not None and s.process_role == "api":
        await sampler.fresh()
    latest = sampler.latest if sampler else {}
    recon = latest.get("reconciler") or {}
    return {
        "generated_at": time.time(), "tenant_id": str(tenant_id) if tenant_id else None,
        "services": [{"name": "issuer", "url": s.public_url, "ready": True, "checks": None}, *health],
        "counts": figures.counts, "total": figures.total, "stuck_total": figures.stuck_total,
        "waiting": queue.as_dict(),
        "stuck": [{**asdict(x), "id": str(x.id)} for x in figures.stuck],
        "tenants": [{"id": str(t.id), "name": t.name, "tax_id": t.tax_id} for t in figures.tenants],
        "pipeline": latest.get("point"),
        "errors": reading_errors(latest, now=time.time(), interval=s.ops_sample_interval) if latest else None,
        "series": await sampler.history() if sampler else [],
        "sample_interval_seconds": s.ops_sample_interval,
        "gaps": recon.get("gaps", []), "reconciler": {k: recon.get(k) for k in (
            "unconfirmed", "stuck", "oldest_unconfirmed_seconds", "confirmation_latency", "policy", "last_round")},
        "alerts": alerts.get("items", []) if isinstance(alerts, dict) else [],
        "alerts_error": alerts.get("error") if isinstance(alerts, dict) else None,
        "faults": faults,
    }


@router.get("/faults")
async def get_faults(request: Request) -> JSONResponse:
    return await _faults(request, "GET", None)


@router.put("/faults")
async def put_faults(request: Request, body: FaultsUpdate) -> JSONResponse:
    """Change the simulated tax store's faults (a drill); any subset of the knobs, the rest keep their values."""
    return await _faults(request, "PUT", body.model_dump(exclude_unset=True))


async def _faults(request: Request, method: str, body: dict[str, Any] | None) -> JSONResponse:
    s: IssuerSettings = request.app.state.settings
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            r = await client.request(method, f"{s.taxstore_url}/admin/faults", json=body, headers={
                "Authorization": f"Bearer {s.admin_token.get_secret_value()}",
                ON_BEHALF: f"operator:{getattr(request.state, 'operator', 'admin')}"})  # the store's audit log
        status = r.status_code if r.status_code < 500 else 503
        return JSONResponse(r.json(), status_code=status,
                            media_type="application/problem+json" if status >= 400 else "application/json")
    except (httpx.HTTPError, ValueError):
        return JSONResponse({"status": 503, "title": "Service unavailable", "code": "dependency_unavailable",
                             "detail": "the tax store is not reachable right now"}, status_code=503,
                            headers={"Retry-After": "5"}, media_type="application/problem+json")
