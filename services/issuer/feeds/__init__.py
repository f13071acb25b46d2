"""What the other services tell the issuer about its invoices, applied to their status and timeline: the sync
service's results, the reconciler's findings and the notifier's deliveries (consumer.py reads all three)."""
