"""Standard Webhooks signatures (https://www.standardwebhooks.com): what the notifier sends and how a
receiver checks it, plus the encryption of signing secrets at rest.

    webhook-id:        msg_<id>, the same on every retry of one delivery (receivers deduplicate on it)
    webhook-timestamp: Unix seconds of this attempt
    webhook-signature: v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>, space-separated when
                       several secrets are valid (during a rotation)

A secret is "whsec_" + base64(32 random bytes); the HMAC key is the decoded bytes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable

from cryptography.fernet import Fernet, InvalidToken

__all__ = ["SecretBox", "Unverified", "headers", "new_secret", "sign", "verify"]

PREFIX = "whsec_"
TOLERANCE_SECONDS = 300


def new_secret() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(PREFIX))


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """'v1,<base64 signature>' of one message."""
    mac = hmac.new(_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def headers(secrets_: Iterable[str], msg_id: str, body: bytes, *, timestamp: int | None = None) -> dict[str, str]:
    ts = int(time.time()) if timestamp is None else timestamp
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts),
            "webhook-signature": " ".join(sign(s, msg_id, ts, body) for s in secrets_)}


class Unverified(ValueError):
    """The message is not from the holder of the secret, or too old/new to trust."""


def verify(secret: str, msg_id: str, timestamp: str, signature_header: str, body: bytes, *,
           now: float | None = None, tolerance: int = TOLERANCE_SECONDS) -> None:
    """What a receiver does (also in docs/notifications.md): check the time window, then any v1 signature."""
    try:
        ts = int(timestamp)
    except ValueError:
        raise Unverified("webhook-timestamp is not a number") from None
    if abs((time.time() if now is None else now) - ts) > tolerance:
        raise Unverified("webhook-timestamp is outside the 5-minute window")
    expected = sign(secret, msg_id, ts, body).split(",", 1)[1]
    for candidate in signature_header.split(" "):
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return
    raise Unverified("no valid v1 signature")


class SecretBox:
    """Signing secrets are needed in clear to sign, so they are encrypted (Fernet: AES-128-CBC + HMAC) with a
    key derived from FAPIAO_SECRETS_KEY, never hashed; a database dump alone does not reveal them."""

    def __init__(self, key_material: str) -> None:
        digest = hashlib.sha256(b"fapiao-notifier-secrets:" + key_material.encode()).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(digest))

    def seal(self, secret: str) -> bytes:
        return self._fernet.encrypt(secret.encode())

    def open(self, token: bytes) -> str:
        try:
            return self._fernet.decrypt(bytes(token)).decode()
        except InvalidToken:
            raise ValueError("a signing secret cannot be decrypted: was FAPIAO_SECRETS_KEY changed?") from None
