"""The HTTP contracts between services, declared once: what a caller sends and what it gets back.

A service that serves a contract validates its requests with these models and answers in them; a service
that calls it builds its requests and reads the answers with the same models. No service imports another
service's package (tests/unit/test_import_rules.py): what two services share lives here.

- cases.py       the case number (CASE-YYYYMMDD-NNNNNN) and a case's statuses
- reconciler.py  cases, the month summary's query, the ledger lookup/open/restate of the issuer's self-check
- notifier.py    subscriptions, the notification history's filters, alert kinds
"""
