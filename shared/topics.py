"""Every topic in one place: its name, who writes it, the event types it carries (their payload models, see
shared.events), and its dead-letter twin."""

from __future__ import annotations

from dataclasses import dataclass

from shared.events import (
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
    NotificationFailed,
    NotificationSent,
    OrphanAlertRaised,
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

__all__ = [
    "ALERTS", "ALL_TOPICS", "INVOICE_EVENTS", "MAIN_TOPICS", "NOTIFICATIONS", "RECONCILIATION", "RESYNC_REQUESTS",
    "SYNC_RESULTS", "Topic", "dlq_name", "topic_of",
]


@dataclass(frozen=True)
class Topic:
    name: str
    description: str
    partitioned: bool = True  # False: one partition (dead-letter topics, low volume)
    producer: str = ""  # the service that writes it (through its outbox)
    events: tuple[type[Event], ...] = ()  # the payload types it carries; a dead-letter topic: any (as they came)

    def qualified(self, prefix: str = "") -> str:
        return f"{prefix}{self.name}"

    @property
    def dlq(self) -> Topic:
        return Topic(dlq_name(self.name), f"dead letters of {self.name}", partitioned=False)

    @property
    def types(self) -> frozenset[str]:
        return frozenset(e.TYPE for e in self.events)


def dlq_name(topic: str) -> str:
    return f"{topic}.dlq"


INVOICE_EVENTS = Topic("invoice.events.v1",
                       "invoice facts from the issuer: issued, voided, red-letter forms asked for and decided",
                       producer="issuer",
                       events=(InvoiceIssued, InvoiceVoided, RedLetterRequested, RedLetterDecisionRequested))
SYNC_RESULTS = Topic("invoice.sync-results.v1", "what the sync service learned from the tax store, one per attempt",
                     producer="sync", events=(InvoiceSubmitted, InvoiceSubmissionFailed, InvoiceRejected,
                                              RedLetterFormUpdated))
RESYNC_REQUESTS = Topic("invoice.resync-requests.v1", "commands to submit an invoice again (from the reconciler)",
                        producer="reconciler", events=(ResyncRequested,))
RECONCILIATION = Topic("invoice.reconciliation.v1",
                       "what the reconciler found: visible and identical, gaps, resyncs, stuck, cases (for the issuer)",
                       producer="reconciler", events=(InvoiceConfirmed, InvoiceAwaitingVisibility, InvoiceGapFound,
                                                      InvoiceStuck, CaseUpdated, InvoiceReviewUpdated))
ALERTS = Topic("invoice.alerts.v1",
               "stuck, rejected, recovered and orphan invoices, resolved or closed cases, reviews (from the "
               "reconciler) and red-letter forms (from the issuer), for the notifier",
               producer="reconciler, issuer", events=(StuckAlertRaised, RecoveredAlertRaised, RejectedAlertRaised,
                                              OrphanAlertRaised, CaseResolvedAlertRaised, CaseClosedAlertRaised,
                                              ReviewOverdueAlertRaised, ReviewDeniedAlertRaised,
                                              FormAwaitingAlertRaised, FormEndedAlertRaised,
                                              FormExpiringAlertRaised, RedInvoiceMissingAlertRaised))
NOTIFICATIONS = Topic("invoice.notifications.v1",
                      "alerts the notifier delivered (or gave up on), per invoice, for the issuer's timeline",
                      producer="notifier", events=(NotificationSent, NotificationFailed))

MAIN_TOPICS: tuple[Topic, ...] = (INVOICE_EVENTS, SYNC_RESULTS, RESYNC_REQUESTS, RECONCILIATION, ALERTS, NOTIFICATIONS)
ALL_TOPICS: tuple[Topic, ...] = MAIN_TOPICS + tuple(t.dlq for t in MAIN_TOPICS)


def topic_of(event_type: str) -> Topic:
    """The topic that carries `event_type` (each type travels on exactly one)."""
    for topic in MAIN_TOPICS:
        if event_type in topic.types:
            return topic
    raise KeyError(event_type)
