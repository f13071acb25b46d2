"""One content fingerprint for an invoice, computed the same way by the issuer, the tax store and
the reconciler: SHA-256 over the canonical document serialised with sorted keys."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

__all__ = ["content_hash"]


def content_hash(doc: dict[str, Any]) -> str:
    """Equal documents (as parsed JSON) give equal hashes, whatever their key order."""
    return hashlib.sha256(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)).hexdigest()
