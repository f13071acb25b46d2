"""The reconciler's own metrics (the shared ones live in shared.metrics). No invoice ids in labels."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = ["CHECKS", "CHECK_ROUND", "CONFIRMATION_LATENCY", "GAPS", "OLDEST_UNCONFIRMED", "ORPHANS", "RESTATEMENTS",
           "RESYNCS", "STUCK", "SWEEPS", "SYNC_RESULTS_TAKEN", "TRANSITIONS"]

GAPS = Gauge(
    "fapiao_reconciler_gaps",
    "Unconfirmed invoices by kind (unacknowledged, awaiting, missing, mismatch, stuck) and age bucket",
    ["kind", "age"],
)
STUCK = Gauge("fapiao_reconciler_stuck_invoices", "Invoices stuck past FAPIAO_STUCK_AFTER, with a case open")
OLDEST_UNCONFIRMED = Gauge("fapiao_reconciler_oldest_unconfirmed_age_seconds",
                           "Age of the oldest unconfirmed invoice (since issue, or since it was found missing again)")
RESYNCS = Counter("fapiao_reconciler_resyncs_total", "Resync requests sent to the sync service, by gap kind", ["kind"])
CHECKS = Counter("fapiao_reconciler_checks_total", "Invoice checks at the tax store, by what was seen",
                 ["result"])
TRANSITIONS = Counter("fapiao_reconciler_transitions_total",
                      "Confirmed, recovered, stuck and gap-found transitions", ["to"])
CHECK_ROUND = Histogram(
    "fapiao_reconciler_check_round_duration_seconds", "Duration of one check round (claim, store reads, apply)",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
SWEEPS = Counter("fapiao_reconciler_sweeps_total", "Swept (seller, issue date) windows, by outcome", ["outcome"])
ORPHANS = Counter("fapiao_reconciler_orphans_seen_total",
                  "Sightings, per sweep, of invoices at the store under a tenant's tax id never issued here")
SYNC_RESULTS_TAKEN = Counter(
    "fapiao_reconciler_sync_results_total",
    "Sync results taken into the ledger, by kind; 'duplicate': a resubmission the store already held",
    ["kind"],
)
CONFIRMATION_LATENCY = Histogram(
    "fapiao_reconciler_confirmation_latency_seconds",
    "End to end: from the issuer accepting an invoice to the reconciler seeing it visible and identical",
    buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
RESTATEMENTS = Counter(
    "fapiao_reconciler_restatements_total",
    "Findings sent to the issuer again because its status self-check found it disagreeing, by ledger state",
    ["state"],
)
