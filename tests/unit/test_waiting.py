"""The stage an invoice waits in, and the headline operators read."""

from __future__ import annotations

import pytest

from services.issuer.lifecycle import Status
from services.issuer.ops.waiting import STAGES, StageFigure, Waiting, stage_of


@pytest.mark.parametrize(("status", "source", "stage"), [
    ("accepted", None, "outbox"), ("published", None, "kafka"), ("retrying", "sync", "sync_retries"),
    ("retrying", "reconciler", "resync"), ("submitted", "sync", "awaiting_visibility"),
    ("stuck", "reconciler", "stuck"), ("rejected", "sync", "rejected"), ("confirmed", "reconciler", None),
    ("voided", None, None),
    ("red_lettered", None, None),
])
def test_every_status_has_its_stage_or_none(status: str, source: str | None, stage: str | None) -> None:
    assert stage_of(status, source) == stage


def test_every_status_but_the_settled_ones_waits_somewhere() -> None:
    waiting = {s for s in Status if stage_of(s, "sync") is not None}
    # Held for cross-region review (or denied there) is at the authority: the reconciler's review SLA watches it.
    assert waiting == set(Status) - {Status.CONFIRMED, Status.VOIDED, Status.RED_LETTERED, Status.UNDER_REVIEW,
                                     Status.REVIEW_DENIED}
    assert {stage_of(s, src) for s in Status for src in ("sync", "reconciler")} - {None} == {s.name for s in STAGES}


def _w(**counts: tuple[int, float]) -> Waiting:
    return Waiting([StageFigure(s.name, s.label, *counts.get(s.name, (0, None))) for s in STAGES])  # type: ignore[arg-type]


def test_the_headline_names_count_oldest_and_where_most_wait() -> None:
    w = _w(kafka=(120, 30.0), sync_retries=(13_383, 252.4), stuck=(2, 900.0))
    assert w.total == 13_505 and w.oldest_seconds == 900.0 and w.most_in and w.most_in.stage == "sync_retries"
    assert w.headline() == "13505 invoices not yet at the authority, oldest 15 min 0 s, most in: sync retries"
    d = w.as_dict()
    assert d["total"] == 13_505 and d["most_in"] == "sync_retries" and len(d["stages"]) == len(STAGES)  # type: ignore[arg-type]


def test_nothing_waiting_says_so_and_one_invoice_is_singular() -> None:
    assert _w().headline().startswith("0 invoices waiting") and _w().oldest_seconds is None
    one = _w(outbox=(1, 4.2)).headline()
    assert one == "1 invoice not yet at the authority, oldest 4.2 s, most in: issuer outbox, not yet on Kafka"
