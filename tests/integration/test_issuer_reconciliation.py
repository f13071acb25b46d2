"""The reconciler's findings reach the issuer's status view over real Kafka (invoice.reconciliation.v1).

The reconciler itself is not running here: each test publishes the envelopes it would publish, keyed by
invoice id, and watches what the issuer's API shows. Sync results are published the same way where a test
needs the invoice acknowledged first.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from services.issuer import tenants
from services.issuer.invoices.cases import record_case
from shared.db import transaction
from shared.envelope import Envelope, encode, new_envelope
from shared.events import (
    CASE_UPDATED,
    INVOICE_AWAITING_VISIBILITY,
    INVOICE_CONFIRMED,
    INVOICE_GAP_FOUND,
    INVOICE_STUCK,
    INVOICE_SUBMITTED,
    RECONCILER_SOURCE,
    SYNC_SOURCE,
)
from shared.topics import RECONCILIATION, SYNC_RESULTS, dlq_name
from tests import factories
from tests.harness import Infra, RunningIssuer, Tenant, eventually, issuer_settings, read_topic, running_issuer


@pytest.fixture(scope="module")
async def issuer(infra: Infra) -> AsyncIterator[RunningIssuer]:
    """This module's own issuer, on topics no sync service reads: the tests publish what sync and the
    reconciler would, and a real sync service (the pipeline tests') must not answer for them."""
    async with running_issuer(issuer_settings(infra)) as own:
        yield own


@pytest.fixture
async def producer(issuer: RunningIssuer) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(bootstrap_servers=issuer.settings.kafka_bootstrap, acks="all",  # type: ignore[attr-defined]
                         enable_idempotence=True)
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


class Feed:
    """Publishes what the reconciler and the sync service would, for one invoice."""

    def __init__(self, issuer: RunningIssuer, producer: AIOKafkaProducer, tenant: Tenant, invoice_id: str) -> None:
        prefix = issuer.settings.topic_prefix  # type: ignore[attr-defined]
        self.recon_topic = RECONCILIATION.qualified(prefix)
        self.sync_topic = SYNC_RESULTS.qualified(prefix)
        self.producer, self.tenant, self.invoice_id = producer, tenant, invoice_id
        self.recon_seq = self.sync_seq = 0

    async def finding(self, type: str, **data: Any) -> Envelope:
        """As the reconciler sends it: with its ledger state (by type unless given) and the sync results seen."""
        self.recon_seq += 1
        stamp = {"ledger_state": _LEDGER_STATE.get(type), "sync_seq": self.sync_seq}
        env = new_envelope(source=RECONCILER_SOURCE, type=type, subject=self.invoice_id, tenant=self.tenant.id,
                           sequence=self.recon_seq, data={"invoice_id": self.invoice_id, **stamp, **data})
        await self.send(self.recon_topic, env)
        return env

    async def acknowledged(self, receipt_no: str) -> None:
        self.sync_seq += 1
        await self.send(self.sync_topic, new_envelope(
            source=SYNC_SOURCE, type=INVOICE_SUBMITTED, subject=self.invoice_id, tenant=self.tenant.id,
            sequence=self.sync_seq, data={"invoice_id": self.invoice_id, "attempt": self.sync_seq,
                                          "receipt_no": receipt_no, "how": "created", "latency_ms": 12,
                                          "at": _iso(0)}))

    async def send(self, topic: str, env: Envelope) -> None:
        await self.producer.send_and_wait(topic, encode(env), key=self.invoice_id.encode())


_LEDGER_STATE = {INVOICE_CONFIRMED: "confirmed", INVOICE_STUCK: "stuck", INVOICE_GAP_FOUND: "gap",
                 INVOICE_AWAITING_VISIBILITY: "awaiting"}


def _iso(delta_seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=delta_seconds)).isoformat()


async def _issue(issuer: RunningIssuer, tenant: Tenant) -> str:
    r = await issuer.client.post("/v1/invoices", json=factories.invoice(tenant.tax_id), headers=tenant.headers)
    assert r.status_code == 201, r.text
    iid = r.json()["id"]
    await _until(issuer, tenant, iid, lambda v: v["status"] == "published")
    return iid


async def _view(issuer: RunningIssuer, tenant: Tenant, iid: str) -> dict[str, Any]:
    r = await issuer.client.get(f"/v1/invoices/{iid}", headers=tenant.headers)
    assert r.status_code == 200, r.text
    return r.json()


async def _until(issuer: RunningIssuer, tenant: Tenant, iid: str, check: Any) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        view = await _view(issuer, tenant, iid)
        return view if check(view) else None

    return await eventually(probe, timeout=20)


def _kinds(view: dict[str, Any]) -> list[str]:
    return [t["kind"] for t in view["timeline"]]


def _confirmed(receipt: str, *, how: str = "check", recovered: bool = False, case_no: str | None = None,
               case_status: str | None = None) -> dict[str, Any]:
    return {"receipt_no": receipt, "acked_at": _iso(-1.4), "confirmed_at": _iso(0), "visible_after_seconds": 1.4,
            "how": how, "recovered": recovered, "case_no": case_no, "case_status": case_status}


def _gap(n: int, *, reopened: bool = False, case_no: str | None = None) -> dict[str, Any]:
    return {"kind": "missing", "detail": "not found at the authority", "reopened": reopened, "acked_at": _iso(-2),
            "sla_seconds": 2, "resync": n, "max_resyncs": 5, "resync_at": _iso(0), "next_check_at": _iso(30),
            "case_no": case_no}


def _case_no() -> str:
    return f"CASE-{datetime.now(UTC):%Y%m%d}-{uuid.uuid4().int % 1_000_000:06d}"


async def test_acknowledged_then_visible_becomes_confirmed_once(issuer, tenant, producer):
    iid = await _issue(issuer, tenant)
    feed = Feed(issuer, producer, tenant, iid)
    await feed.acknowledged("R-1001")
    await _until(issuer, tenant, iid, lambda v: v["status"] == "submitted")

    next_check = _iso(30)
    await feed.finding(INVOICE_AWAITING_VISIBILITY, receipt_no="R-1001", acked_at=_iso(-1), sla_seconds=2,
                       deadline=_iso(1), next_check_at=next_check, checks=1)
    view = await _until(issuer, tenant, iid, lambda v: "awaiting_visibility" in _kinds(v))
    assert view["status"] == "submitted", "awaiting visibility explains, it does not move"
    assert "(receipt R-1001) but not visible there yet; visibility SLA 2 s" in view["reason"]
    assert view["next_action"].startswith("Check visibility at ") and view["next_action"].endswith("(automatic).")
    assert datetime.fromisoformat(view["next_action_at"]) == datetime.fromisoformat(next_check)

    confirmed = await feed.finding(INVOICE_CONFIRMED, **_confirmed("R-1001"))
    view = await _until(issuer, tenant, iid, lambda v: v["status"] == "confirmed")
    assert view["receipt_no"] == "R-1001"
    assert view["reason"].startswith("Visible at the tax authority with identical content since ")
    assert view["reason"].endswith("(receipt R-1001).")
    assert view["next_action"] is None and view["next_action_at"] is None
    entry = view["timeline"][-1]
    assert entry["kind"] == "confirmed"
    assert entry["message"] == ("Visible at the tax authority with identical content, 1.4 s after acknowledgement "
                                "(receipt R-1001)")
    assert entry["detail"]["event_id"] == confirmed.id and entry["detail"]["how"] == "check"

    # Kafka redelivers the same event (same sequence); then the sweep confirms it again (next sequence).
    await feed.send(feed.recon_topic, confirmed)
    await feed.finding(INVOICE_CONFIRMED, **_confirmed("R-1001", how="sweep"))
    view = await _until(issuer, tenant, iid, lambda v: any("sweep" in t["message"] for t in v["timeline"]))
    assert _kinds(view).count("confirmed") == 2, "the redelivered event added nothing; the sweep added one"
    assert [t["detail"]["event_id"] for t in view["timeline"] if t["kind"] == "confirmed"].count(confirmed.id) == 1


async def test_awaiting_visibility_applied_before_the_acknowledgement_still_explains_it(issuer, tenant, producer):
    # The two topics are not ordered with each other: the reconciler's finding can overtake the sync result.
    iid = await _issue(issuer, tenant)
    feed = Feed(issuer, producer, tenant, iid)
    # The reconciler saw sync result 1 (the acknowledgement) before the issuer did.
    await feed.finding(INVOICE_AWAITING_VISIBILITY, receipt_no="R-1500", acked_at=_iso(-1), sla_seconds=2,
                       deadline=_iso(1), next_check_at=_iso(30), checks=0, sync_seq=1)
    view = await _until(issuer, tenant, iid, lambda v: "awaiting_visibility" in _kinds(v))
    assert view["status"] == "submitted" and view["receipt_no"] == "R-1500"
    assert "(receipt R-1500) but not visible there yet; visibility SLA 2 s" in view["reason"]
    await feed.acknowledged("R-1500")
    view = await _until(issuer, tenant, iid, lambda v: "submitted" in _kinds(v))
    assert view["status"] == "submitted"
    assert "(receipt R-1500) but not visible there yet; visibility SLA 2 s" in view["reason"]
    assert view["next_action"].startswith("Check visibility at ")
    assert view["timeline"][-1]["message"].endswith("already took this result into account)")


async def test_vanished_then_stuck_stays_stuck_on_sync_results_until_it_recovers(issuer, tenant, producer):
    iid = await _issue(issuer, tenant)
    feed = Feed(issuer, producer, tenant, iid)
    await feed.acknowledged("R-2002")
    await _until(issuer, tenant, iid, lambda v: v["status"] == "submitted")
    await feed.finding(INVOICE_CONFIRMED, **_confirmed("R-2002", how="check"))
    await _until(issuer, tenant, iid, lambda v: v["status"] == "confirmed")

    # The periodic sweep no longer finds it: a reopened gap, the first resync.
    await feed.finding(INVOICE_GAP_FOUND, **_gap(1, reopened=True))
    view = await _until(issuer, tenant, iid, lambda v: v["status"] == "retrying")
    assert "resync 1 of 5 requested at " in view["reason"]
    assert view["reason"].endswith("It was visible and confirmed before, then vanished.")
    assert view["next_action"].startswith("Check again at ")
    assert view["next_action"].endswith("; a case opens after 5 resyncs.")
    assert view["timeline"][-1]["message"] == ("Gap found: no longer visible at the tax authority "
                                               "(it had been confirmed); resync 1 of 5 requested")

    case_no = _case_no()
    await feed.finding(INVOICE_STUCK, case_no=case_no, reason="resyncs exhausted", accepted_at=_iso(-3600),
                       stuck_at=_iso(0), stuck_after_seconds=600, resyncs=5, max_resyncs=5,
                       last_error="not found at the authority", next_check_at=_iso(300), alert_id="alert-1")
    view = await _until(issuer, tenant, iid, lambda v: v["status"] == "stuck")
    assert view["case_no"] == case_no
    assert f"(limit 10 min): resyncs exhausted; case {case_no}; 5 resyncs so far. Last error: not found at the " \
        "authority." in view["reason"]
    assert view["reason"].startswith("Not confirmed at the tax authority 01:00:0")
    assert view["next_action"].startswith(f"Follow case {case_no} (GET /v1/cases/{case_no}); the system keeps "
                                          "checking, next at ")
    assert view["timeline"][-1]["kind"] == "stuck"
    assert view["timeline"][-1]["message"].startswith(f"Stuck: case {case_no} opened; alert raised")
    stuck_reason = view["reason"]

    # A later resync is acknowledged by the authority: a fact for the timeline, no proof of visibility.
    await feed.acknowledged("R-2002")
    view = await _until(issuer, tenant, iid, lambda v: _kinds(v).count("submitted") == 2)
    assert view["status"] == "stuck" and view["case_no"] == case_no
    assert view["reason"][:60] == stuck_reason[:60], "the reconciler still explains it"

    # Another gap while stuck: recorded, still stuck, and the count moves on.
    await feed.finding(INVOICE_GAP_FOUND, **_gap(6, case_no=case_no), ledger_state="stuck")
    view = await _until(issuer, tenant, iid, lambda v: _kinds(v).count("gap_found") == 2)
    assert view["status"] == "stuck" and "; 6 resyncs so far." in view["reason"]

    # It appears after all: recovered, and the case resolved (it stays on the invoice as history).
    await feed.finding(INVOICE_CONFIRMED, **_confirmed("R-2002", how="case", recovered=True, case_no=case_no,
                                                       case_status="resolved"))
    view = await _until(issuer, tenant, iid, lambda v: v["status"] == "confirmed")
    assert view["timeline"][-1]["kind"] == "recovered"
    assert view["timeline"][-1]["message"] == f"Recovered: now visible; case {case_no} resolved (receipt R-2002)"
    assert view["reason"].endswith(f"It had been stuck and recovered; case {case_no} resolved.")
    await feed.finding(CASE_UPDATED, case_no=case_no, status="resolved", opened_by="system", at=_iso(0),
                       resolution="visible at the authority again")
    view = await _until(issuer, tenant, iid, lambda v: "case_resolved" in _kinds(v))
    assert view["status"] == "confirmed" and view["case_no"] == case_no
    assert view["timeline"][-1]["message"] == f"Case {case_no} resolved: visible at the authority again"
    assert _kinds(view) == ["accepted", "published", "submitted", "confirmed", "gap_found", "stuck", "submitted",
                            "gap_found", "recovered", "case_resolved"]


async def test_a_voided_invoice_keeps_its_status(issuer, tenant, producer):
    iid = await _issue(issuer, tenant)
    feed = Feed(issuer, producer, tenant, iid)
    case_no = _case_no()
    await feed.finding(INVOICE_STUCK, case_no=case_no, reason="time", accepted_at=_iso(-700), stuck_at=_iso(0),
                       stuck_after_seconds=600, resyncs=2, max_resyncs=5, last_error=None, next_check_at=None,
                       alert_id="alert-2")
    await _until(issuer, tenant, iid, lambda v: v["status"] == "stuck")
    r = await issuer.client.post(f"/v1/invoices/{iid}/void", json={"reason": "issued twice"}, headers=tenant.headers)
    assert r.status_code == 200 and r.json()["status"] == "voided", r.text

    await feed.finding(INVOICE_CONFIRMED, **_confirmed("R-3003", recovered=True, case_no=case_no))
    view = await _until(issuer, tenant, iid, lambda v: "recovered" in _kinds(v))
    assert view["status"] == "voided"
    assert view["reason"] == "Voided by the seller: issued twice" and view["next_action"] is None


async def test_a_case_opening_is_on_the_timeline_once_whichever_door_comes_first(issuer, tenant, producer):
    sessions = issuer.app.state.sessions  # type: ignore[attr-defined]
    me = tenants.Tenant(uuid.UUID(tenant.id), "t", tenant.tax_id)

    # The reconciler's announcement first, then the HTTP request's bookkeeping.
    first = await _issue(issuer, tenant)
    feed = Feed(issuer, producer, tenant, first)
    case_a = _case_no()
    await feed.finding(CASE_UPDATED, case_no=case_a, status="open", opened_by="tenant", at=_iso(0), resolution=None)
    view = await _until(issuer, tenant, first, lambda v: "case_opened" in _kinds(v))
    assert view["case_no"] == case_a and view["status"] == "published", "a case alone moves nothing"
    async with transaction(sessions) as session:
        shown = await record_case(session=session, tenant=me, invoice_id=first, case_no=case_a, opened=True)
    assert shown.case_no == case_a
    assert _kinds(await _view(issuer, tenant, first)).count("case_opened") == 1

    # The HTTP request first, then the announcement (and something after it, to know it was applied).
    second = await _issue(issuer, tenant)
    feed = Feed(issuer, producer, tenant, second)
    case_b = _case_no()
    async with transaction(sessions) as session:
        await record_case(session=session, tenant=me, invoice_id=second, case_no=case_b, opened=True,
                          note="buyer cannot see it")
    await feed.finding(CASE_UPDATED, case_no=case_b, status="open", opened_by="tenant", at=_iso(0), resolution=None)
    await feed.finding(CASE_UPDATED, case_no=case_b, status="closed", opened_by="tenant", at=_iso(0),
                       resolution="closed by the seller")
    view = await _until(issuer, tenant, second, lambda v: "case_closed" in _kinds(v))
    assert _kinds(view).count("case_opened") == 1
    opened = next(t for t in view["timeline"] if t["kind"] == "case_opened")
    assert opened["message"] == f"Case {case_b} opened at the seller's request; the authority is being checked now"
    assert opened["detail"]["note"] == "buyer cannot see it"
    assert view["case_no"] == case_b, "a closed case stays visible on the invoice"


async def test_unusable_records_are_dead_lettered_and_the_next_event_still_applies(issuer, tenant, producer):
    iid = await _issue(issuer, tenant)
    feed = Feed(issuer, producer, tenant, iid)
    await producer.send_and_wait(feed.recon_topic, b"{not an envelope", key=iid.encode())
    # A valid envelope whose data the issuer cannot show (a case number longer than any case number).
    bad = await feed.finding(INVOICE_STUCK, case_no="CASE-" + "9" * 40, accepted_at=_iso(-10))
    await feed.finding(INVOICE_GAP_FOUND, **_gap(1))

    view = await _until(issuer, tenant, iid, lambda v: v["status"] == "retrying")
    assert "resync 1 of 5 requested" in view["reason"] and view["case_no"] is None
    assert "stuck" not in _kinds(view)

    dlq = dlq_name(feed.recon_topic)
    records = await read_topic(issuer.settings.kafka_bootstrap, dlq,  # type: ignore[attr-defined]
                               until=lambda rs: sum(r.key == iid.encode() for r in rs) >= 2)
    mine = [r for r in records if r.key == iid.encode()]
    assert [r.value for r in mine][0] == b"{not an envelope"
    assert encode(bad) == mine[1].value
    headers = dict(mine[1].headers)
    prefix = issuer.settings.topic_prefix  # type: ignore[attr-defined]
    assert headers["dlq.origin.topic"] == feed.recon_topic.encode()
    assert headers["dlq.consumer.group"] == f"{prefix}issuer.status-feed".encode()
    assert b"case_no" in headers["dlq.error"]
