"""Every topic in one place: its name, what travels on it, and its dead-letter twin."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ALERTS", "ALL_TOPICS", "INVOICE_EVENTS", "NOTIFICATIONS", "RECONCILIATION", "RESYNC_REQUESTS", "SYNC_RESULTS",
    "Topic", "dlq_name",
]


@dataclass(frozen=True)
class Topic:
    name: str
    description: str
    partitioned: bool = True  # False: one partition (dead-letter topics, low volume)

    def qualified(self, prefix: str = "") -> str:
        return f"{prefix}{self.name}"

    @property
    def dlq(self) -> Topic:
        return Topic(dlq_name(self.name), f"dead letters of {self.name}", partitioned=False)


def dlq_name(topic: str) -> str:
    return f"{topic}.dlq"


INVOICE_EVENTS = Topic("invoice.events.v1", "invoice facts from the issuer: issued, voided, red-lettered")
SYNC_RESULTS = Topic("invoice.sync-results.v1", "what the sync service learned from the tax store, one per attempt")
RESYNC_REQUESTS = Topic("invoice.resync-requests.v1", "commands to submit an invoice again (from the reconciler)")
RECONCILIATION = Topic("invoice.reconciliation.v1",
                       "what the reconciler found: visible and identical, gaps, resyncs, stuck, cases (for the issuer)")
ALERTS = Topic("invoice.alerts.v1",
               "stuck, rejected, recovered and orphan invoices and resolved or closed cases, for the notifier")
NOTIFICATIONS = Topic("invoice.notifications.v1",
                      "alerts the notifier delivered (or gave up on), per invoice, for the issuer's timeline")

_MAIN = (INVOICE_EVENTS, SYNC_RESULTS, RESYNC_REQUESTS, RECONCILIATION, ALERTS, NOTIFICATIONS)
ALL_TOPICS: tuple[Topic, ...] = _MAIN + tuple(t.dlq for t in _MAIN)
