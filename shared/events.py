"""Event types (facts, past tense) and their payloads. The type string carries the version."""

from __future__ import annotations

__all__ = ["INVOICE_ISSUED", "INVOICE_VOIDED", "ISSUER_SOURCE"]

ISSUER_SOURCE = "fapiao/issuer"

INVOICE_ISSUED = "cn.fapiao.invoice.issued.v1"
"""data: {invoice_id, tenant_id, content_hash, accepted_at, invoice: <the canonical invoice>}"""

INVOICE_VOIDED = "cn.fapiao.invoice.voided.v1"
"""data: {invoice_id, tenant_id, seller_tax_id, number, reason, voided_at}"""
