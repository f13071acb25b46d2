"""The event contracts: every event type round-trips through its model and its envelope, the registries agree
(each type on one topic, every group's topics declared), the docs' catalogue is the registry's, a handler table
hands each handler its events, and the one backoff helper keeps its promises."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared import catalogue
from shared.backoff import backoff
from shared.consumers import ALL_GROUPS
from shared.envelope import Received, UnknownEventType, decode, decode_event, encode, new_envelope
from shared.events import (
    EVENT_TYPES,
    AlertRaised,
    CaseClosedAlertRaised,
    CaseResolvedAlertRaised,
    CaseUpdated,
    Event,
    FormAwaitingAlertRaised,
    FormEndedAlertRaised,
    FormExpiringAlertRaised,
    InvoiceAwaitingVisibility,
    InvoiceConfirmed,
    InvoiceGapFound,
    InvoiceIssued,
    InvoiceRejected,
    InvoiceReviewUpdated,
    InvoiceStuck,
    InvoiceSubmissionFailed,
    InvoiceSubmitted,
    InvoiceVoided,
    Issued,
    NotificationFailed,
    NotificationSent,
    OrphanAlertRaised,
    PayloadError,
    RecoveredAlertRaised,
    RedInvoiceMissingAlertRaised,
    RedLetterDecisionRequested,
    RedLetterFormUpdated,
    RedLetterRequested,
    RejectedAlertRaised,
    ResyncRequested,
    ReviewDeniedAlertRaised,
    ReviewOverdueAlertRaised,
    StuckAlertRaised,
)
from shared.kafka import HandlerTable
from shared.topics import ALL_TOPICS, MAIN_TOPICS, topic_of

NOW = datetime(2026, 12, 2, 8, 30, 15, 123456, tzinfo=UTC)
IID, TID, FID = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
SELLER, NUMBER = "91440300708461136T", "26440000000000000042"
_IDS = {"invoice_id": IID, "seller_tax_id": SELLER, "number": NUMBER}
_RESULT = {**_IDS, "attempt": 2, "latency_ms": 31, "at": NOW}
_FINDING = {**_IDS, "ledger_state": "gap", "sync_seq": 3, "restated": True, "case_no": "CASE-20261202-000001",
            "next_check_at": NOW + timedelta(seconds=30)}
_ALERT = {"alert_id": str(uuid.uuid4()), "kind": "stuck", "tenant_id": TID, "seller_tax_id": SELLER,
          "invoice_id": IID, "number": NUMBER, "issue_date": "2026-12-01", "total": "1130.00",
          "buyer_name": "深圳市腾讯计算机系统有限公司", "buyer_tax_id": "91440300708461136T", "receipt_no": "R-1",
          "reason": "Not confirmed at the tax authority.", "next_action": "Follow the case.",
          "case_no": "CASE-20261202-000001", "form_id": None, "role": None, "at": NOW}
_NOTICE = {"invoice_id": IID, "delivery_id": uuid.uuid4(), "channel": "webhook", "alert_kind": "stuck",
           "alert_id": str(uuid.uuid4()), "case_no": None, "digest": True, "alert_count": 3, "attempts": 2, "at": NOW,
           "target": "erp.example.com", "error": None}

# One payload per event type, every field set (so the round trip covers every field).
SAMPLES: dict[type[Event], dict[str, Any]] = {
    InvoiceIssued: {"invoice_id": IID, "tenant_id": TID, "seller_tax_id": SELLER, "number": NUMBER,
                    "content_hash": "c" * 64, "accepted_at": NOW, "invoice": {"number": NUMBER, "total": "1130.00"},
                    "red_letter_of": "26440000000000000041"},
    InvoiceVoided: {**_IDS, "tenant_id": TID, "reason": "issued twice", "voided_at": NOW},
    InvoiceSubmitted: {**_RESULT, "receipt_no": "R-1", "how": "read_back"},
    InvoiceSubmissionFailed: {**_RESULT, "error": "HTTP 503", "ambiguous": True, "http_status": 503,
                              "attempted": True, "gave_up": False, "next_attempt_at": NOW + timedelta(seconds=4)},
    InvoiceRejected: {**_RESULT, "reason_code": "TOTAL_MISMATCH", "reason": "totals differ",
                      "reasons": [{"code": "TOTAL_MISMATCH", "path": "total", "message": "differs"}]},
    ResyncRequested: {**_IDS, "reason": "missing: not found", "requested_by": "reconciler", "resync": 2},
    InvoiceConfirmed: {**_FINDING, "receipt_no": "R-1", "acked_at": NOW, "confirmed_at": NOW,
                       "visible_after_seconds": 1.5, "how": "sweep", "recovered": True, "reopened": False,
                       "case_status": "resolved"},
    InvoiceAwaitingVisibility: {**_FINDING, "receipt_no": "R-1", "acked_at": NOW, "sla_seconds": 30.0,
                                "deadline": NOW, "checks": 1},
    InvoiceGapFound: {**_FINDING, "kind": "mismatch", "detail": "total differs", "reopened": True, "acked_at": NOW,
                      "sla_seconds": 30.0, "resync": 1, "max_resyncs": 5, "resync_at": NOW,
                      "stuck_after_seconds": 600.0, "since": NOW, "held": False},
    InvoiceStuck: {**_FINDING, "reason": "still missing", "accepted_at": NOW, "since": NOW, "stuck_at": NOW,
                   "stuck_after_seconds": 600.0, "resyncs": 5, "max_resyncs": 5, "last_error": "HTTP 503",
                   "gap_kind": "missing", "alert_id": str(uuid.uuid4())},
    CaseUpdated: {**_FINDING, "status": "closed", "opened_by": "tenant", "at": NOW, "resolution": "voided"},
    StuckAlertRaised: _ALERT,
    RecoveredAlertRaised: {**_ALERT, "kind": "recovered"},
    RejectedAlertRaised: {**_ALERT, "kind": "rejected"},
    OrphanAlertRaised: {**_ALERT, "kind": "orphan", "invoice_id": None, "buyer_name": None, "buyer_tax_id": None},
    CaseResolvedAlertRaised: {**_ALERT, "kind": "resolved"},
    CaseClosedAlertRaised: {**_ALERT, "kind": "closed"},
    NotificationSent: _NOTICE,
    NotificationFailed: {**_NOTICE, "error": "HTTP 500"},
    InvoiceReviewUpdated: {**_FINDING, "ledger_state": "review", "review_status": "under_review",
                           "review_due_at": NOW + timedelta(days=1), "review_since": NOW,
                           "review_sla_seconds": 172800.0, "review_note": "交易不真实", "receipt_no": "R-1"},
    ReviewOverdueAlertRaised: {**_ALERT, "kind": "review_overdue"},
    ReviewDeniedAlertRaised: {**_ALERT, "kind": "review_denied"},
    FormAwaitingAlertRaised: {**_ALERT, "kind": "form_awaiting"},
    FormEndedAlertRaised: {**_ALERT, "kind": "form_voided"},
    FormExpiringAlertRaised: {**_ALERT, "kind": "form_expiring", "form_id": uuid.uuid4(), "role": "buyer"},
    RedInvoiceMissingAlertRaised: {**_ALERT, "kind": "red_missing", "form_id": uuid.uuid4(), "role": "seller"},
    RedLetterRequested: {"form_id": FID, "invoice_id": IID, "tenant_id": TID, "seller_tax_id": SELLER,
                         "number": NUMBER, "requested_by": SELLER, "reason_code": "02",
                         "lines": [{"line": 0, "amount": "-100.00", "quantity": "-1"}], "note": "退货"},
    RedLetterDecisionRequested: {"decision_id": uuid.uuid4(), "form_id": FID, "form_no": "HZ202612020000000001",
                                 "invoice_id": IID, "by": SELLER, "confirm": True, "note": "同意"},
    RedLetterFormUpdated: {"form_id": FID, "invoice_id": IID, "tenant_id": TID, "status": "confirmed",
                           "form_no": "HZ202612020000000001", "form": {"status": "confirmed", "total": "-113.00"},
                           "error": "none", "error_code": "none", "http_status": 200, "at": NOW},
}


def test_every_event_type_has_a_sample() -> None:
    assert set(SAMPLES) == set(EVENT_TYPES.values())
    for model, data in SAMPLES.items():
        assert set(data) == set(model.model_fields), f"{model.__name__}: the sample sets every field"


@pytest.mark.parametrize("model", list(SAMPLES), ids=lambda m: m.__name__)
def test_every_event_type_round_trips_through_its_model_and_envelope(model: type[Event]) -> None:
    event = model(**SAMPLES[model])
    envelope = new_envelope(source="fapiao/test", event=event, subject=str(IID), tenant=str(TID), sequence=4)
    assert envelope.type == model.TYPE
    wire = encode(envelope)
    back = decode_event(decode(wire))
    assert type(back) is model
    assert back == event
    assert Received.of(decode(wire)).event == event


def test_the_issued_model_keeps_its_old_name() -> None:
    assert Issued is InvoiceIssued


def test_a_payload_missing_a_required_field_is_refused_with_the_field_named() -> None:
    data = InvoiceIssued(**SAMPLES[InvoiceIssued]).model_dump(mode="json")
    del data["content_hash"]
    env = new_envelope(source="s", type=InvoiceIssued.TYPE, subject=str(IID), tenant=str(TID), sequence=1, data=data)
    with pytest.raises(PayloadError, match=r"issued\.v1 payload: data\.content_hash: Field required"):
        decode_event(env)


def test_a_payload_that_contradicts_its_envelope_is_refused() -> None:
    issued = InvoiceIssued(**SAMPLES[InvoiceIssued])
    env = new_envelope(source="fapiao/test", event=issued, subject=str(uuid.uuid4()), tenant=str(TID), sequence=1)
    with pytest.raises(PayloadError, match="subject"):
        decode_event(env)
    alert = StuckAlertRaised(**SAMPLES[StuckAlertRaised])
    env = new_envelope(source="fapiao/test", event=alert, subject=str(IID), tenant=str(uuid.uuid4()), sequence=1)
    with pytest.raises(PayloadError, match="tenant"):
        decode_event(env)


def test_stored_text_is_held_to_what_the_consumers_can_keep() -> None:
    with pytest.raises(PayloadError, match="data.detail"):
        env = new_envelope(source="s", type=InvoiceGapFound.TYPE, subject=str(IID), tenant=str(TID), sequence=1,
                           data={"invoice_id": str(IID), "kind": "missing", "detail": "nul \x00 here"})
        decode_event(env)
    with pytest.raises(PayloadError, match="data.kind"):
        env = new_envelope(source="s", type=InvoiceGapFound.TYPE, subject=str(IID), tenant=str(TID), sequence=1,
                           data={"invoice_id": str(IID), "kind": "vanished"})
        decode_event(env)


def test_an_unknown_type_is_refused() -> None:
    env = new_envelope(source="s", type="cn.fapiao.invoice.red-lettered.v1", subject=str(IID), tenant=str(TID),
                       sequence=1, data={})
    with pytest.raises(UnknownEventType):
        decode_event(env)


def test_fields_a_producer_left_out_stay_off_the_wire() -> None:
    event = InvoiceSubmitted(invoice_id=IID, attempt=1, receipt_no="R-1")
    env = new_envelope(source="s", event=event, subject=str(IID), tenant=str(TID), sequence=1)
    assert env.data == {"invoice_id": str(IID), "attempt": 1, "receipt_no": "R-1"}


def test_each_type_travels_on_one_topic_and_every_group_reads_declared_topics() -> None:
    carried = [t for topic in MAIN_TOPICS for t in topic.types]
    assert sorted(carried) == sorted(EVENT_TYPES), "every type on exactly one topic"
    for event_type in EVENT_TYPES:
        assert event_type in topic_of(event_type).types
    names = {g.name for g in ALL_GROUPS}
    assert len(names) == len(ALL_GROUPS)
    for g in ALL_GROUPS:
        assert g.name.startswith(f"{g.service}."), "groups are named <service>.<purpose>"
        assert set(g.topics) <= set(ALL_TOPICS)
    read = {t for g in ALL_GROUPS for t in g.topics}
    assert read == set(MAIN_TOPICS), "every topic has a consumer, and nobody reads a dead-letter topic"


def test_the_catalogue_in_the_architecture_document_is_the_registrys() -> None:
    text = catalogue.DOC.read_text(encoding="utf-8")
    assert catalogue.replace_in(text) == text, "run `python -m shared.catalogue --write`"


# --- the handler table ----------------------------------------------------------------------------

async def test_a_handler_table_hands_each_handler_its_events_in_table_order() -> None:
    calls: list[tuple[str, str, list[str]]] = []

    async def results(ctx: str, items: list[Received[Any]]) -> int:
        calls.append(("results", ctx, [type(i.event).__name__ for i in items]))
        return len(items)

    async def issued(ctx: str, items: list[Received[Any]]) -> None:
        calls.append(("issued", ctx, [type(i.event).__name__ for i in items]))

    table: HandlerTable[str] = HandlerTable({InvoiceIssued: issued, InvoiceSubmitted: results,
                                             InvoiceRejected: results}, ignore=[InvoiceVoided])
    items = [_received(m) for m in (InvoiceRejected, InvoiceIssued, InvoiceSubmitted)]
    done = await table.dispatch("tx", items)
    assert calls == [("issued", "tx", ["InvoiceIssued"]), ("results", "tx", ["InvoiceRejected", "InvoiceSubmitted"])]
    assert done == {issued: None, results: 2}
    assert table.types == {InvoiceIssued.TYPE, InvoiceSubmitted.TYPE, InvoiceRejected.TYPE, InvoiceVoided.TYPE}
    table.check_covers({InvoiceIssued.TYPE, InvoiceVoided.TYPE}, group="g")
    with pytest.raises(ValueError, match="no handler for cn.fapiao.invoice.submission-failed.v1"):
        table.check_covers({InvoiceSubmissionFailed.TYPE}, group="g")


def _received(model: type[Event]) -> Received[Any]:
    event = model(**SAMPLES[model])
    return Received(event, new_envelope(source="s", event=event, subject=str(IID), tenant=str(TID), sequence=1))


def test_alert_data_is_the_alert_model() -> None:
    from services.notifier.schemas import AlertData

    assert AlertData is AlertRaised


# --- the one backoff helper -------------------------------------------------------------------------

def test_full_jitter_spreads_over_the_whole_step_up_to_the_cap() -> None:
    rng = random.Random(7)
    for attempt in range(12):
        step = min(30.0, 0.5 * 2 ** attempt)
        waits = [backoff(attempt, base=0.5, cap=30.0, rng=rng) for _ in range(200)]
        assert all(0 <= w <= step for w in waits)
        assert min(waits) < step / 4, "full jitter reaches well below half the step"
    assert backoff(10_000, base=0.5, cap=30.0) <= 30.0


def test_equal_jitter_never_waits_less_than_half_the_step() -> None:
    rng = random.Random(7)
    for attempt in range(12):
        step = min(60.0, 1.0 * 2 ** attempt)
        assert all(step / 2 <= backoff(attempt, base=1.0, cap=60.0, jitter="equal", rng=rng) <= step
                   for _ in range(100))


def test_a_retry_after_is_waited_for_up_to_its_cap() -> None:
    rng = random.Random(7)
    assert backoff(0, base=0.5, cap=30.0, retry_after=12.0, rng=rng) == 12.0
    assert backoff(0, base=0.5, cap=30.0, retry_after=500.0, retry_after_cap=120.0, rng=rng) == 120.0
    assert backoff(0, base=0.5, cap=30.0, retry_after=500.0, rng=rng) == 30.0
    assert backoff(0, base=0.5, cap=30.0, retry_after=-3, rng=rng) <= 0.5
