"""What an alert event must carry to be delivered. What tenants send to manage their subscriptions is the
issuer's and the notifier's shared contract: shared/contracts/notifier.py."""

from __future__ import annotations

from shared.events import AlertRaised

__all__ = ["AlertData"]


AlertData = AlertRaised
"""The payload of an invoice.alerts.v1 event (shared.events.AlertRaised), and the notifier's own reminders."""
