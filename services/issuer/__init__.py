"""Issuer: the ERP-facing invoice API, tenants and keys, the invoice ledger and its outbox."""
