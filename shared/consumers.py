"""Every consumer group in the system, declared once: its name (`<service>.<purpose>`, behind the topic prefix),
the service that runs it and the topics it reads. The workers subscribe with these, the dashboard reads lag and
dead letters per group with these, and docs/architecture.md's event catalogue is checked against them."""

from __future__ import annotations

from dataclasses import dataclass

from shared.topics import ALERTS, INVOICE_EVENTS, NOTIFICATIONS, RECONCILIATION, RESYNC_REQUESTS, SYNC_RESULTS, Topic

__all__ = ["ALL_GROUPS", "ISSUER_STATUS_FEED", "NOTIFIER_ALERTS", "RECONCILER_LEDGER", "SYNC_SUBMIT", "ConsumerGroup",
           "consumers_of"]


@dataclass(frozen=True)
class ConsumerGroup:
    name: str
    service: str
    topics: tuple[Topic, ...]
    purpose: str

    def qualified(self, prefix: str = "") -> str:
        return f"{prefix}{self.name}"

    def topic_names(self, prefix: str = "") -> list[str]:
        return [t.qualified(prefix) for t in self.topics]

    @property
    def types(self) -> frozenset[str]:
        """Every event type this group can be handed (the union of its topics' types)."""
        return frozenset().union(*(t.types for t in self.topics))


SYNC_SUBMIT = ConsumerGroup("sync.submit", "sync", (INVOICE_EVENTS, RESYNC_REQUESTS),
                            "submit issued invoices to the tax store, stop voided ones, resubmit on request")
RECONCILER_LEDGER = ConsumerGroup("reconciler.ledger", "reconciler", (INVOICE_EVENTS, SYNC_RESULTS),
                                  "what was issued and what the store acknowledged, into the ledger")
NOTIFIER_ALERTS = ConsumerGroup("notifier.alerts", "notifier", (ALERTS,), "alerts in, to be delivered")
ISSUER_STATUS_FEED = ConsumerGroup("issuer.status-feed", "issuer", (SYNC_RESULTS, RECONCILIATION, NOTIFICATIONS),
                                   "the invoice's status and timeline")

ALL_GROUPS: tuple[ConsumerGroup, ...] = (SYNC_SUBMIT, RECONCILER_LEDGER, NOTIFIER_ALERTS, ISSUER_STATUS_FEED)


def consumers_of(topic: Topic) -> list[ConsumerGroup]:
    return [g for g in ALL_GROUPS if topic in g.topics]
