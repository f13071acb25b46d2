"""The two ways out: an HTTP POST to the tenant's webhook, an e-mail over SMTP. Each send returns an
Outcome; neither raises for a failure the schedule should handle. Every call is bounded by a timeout."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from email.message import EmailMessage

import aiosmtplib
import httpx

from services.notifier.guard import Refused, TargetPolicy
from services.notifier.signing import headers as signature_headers

__all__ = ["Mailer", "Outcome", "WebhookSender"]


@dataclass(frozen=True)
class Outcome:
    ok: bool
    status_code: int | None = None
    latency_ms: int = 0
    error: str | None = None
    permanent: bool = False  # retrying cannot help (e.g. the mail server refused every recipient for good)


def _ms(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)


class WebhookSender:
    """POSTs signed JSON to the checked address of the tenant's URL; 2xx within the timeout is delivered."""

    def __init__(self, *, policy: TargetPolicy, timeout: float, connect_timeout: float) -> None:
        self.policy = policy
        self.timeout = timeout
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=connect_timeout), follow_redirects=False,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
            headers={"user-agent": "fapiao-notifier/1 (+Standard Webhooks)"})

    async def close(self) -> None:
        await self._http.aclose()

    async def send(self, *, url: str, msg_id: str, body: bytes, secrets: list[str]) -> Outcome:
        started = time.perf_counter()
        try:
            address = await self.policy.check(url)  # again now: DNS may say something else than at subscribe time
        except Refused as exc:
            return Outcome(False, None, _ms(started), f"refused: {exc}")
        target = self.policy.parse(url)
        # Connect to the address just checked, not to whatever a second lookup returns; keep Host and SNI.
        ip = f"[{address.ip}]" if ":" in address.ip else address.ip
        pinned = target.parts._replace(netloc=f"{ip}:{address.port}").geturl()
        host_header = target.parts.netloc.rsplit("@", 1)[-1]
        request_headers = {"content-type": "application/json", "host": host_header,
                           **signature_headers(secrets, msg_id, body)}
        try:
            # httpx times each read; a receiver trickling bytes could last forever: bound the whole exchange.
            response = await asyncio.wait_for(
                self._http.post(pinned, content=body, headers=request_headers,
                                extensions={"sni_hostname": address.host}), self.timeout)
        except (httpx.TimeoutException, TimeoutError):
            return Outcome(False, None, _ms(started), f"no answer within {self.timeout:g} s")
        except httpx.HTTPError as exc:
            return Outcome(False, None, _ms(started), f"{type(exc).__name__}: {exc}"[:300])
        latency = _ms(started)
        if 200 <= response.status_code < 300:
            return Outcome(True, response.status_code, latency)
        return Outcome(False, response.status_code, latency, f"HTTP {response.status_code}")


class Mailer:
    def __init__(self, *, host: str, port: int, username: str | None, password: str | None, use_tls: bool,
                 start_tls: bool, timeout: float) -> None:
        self.host, self.port = host, port
        self.username, self.password = username, password
        self.use_tls, self.start_tls = use_tls, start_tls
        self.timeout = timeout

    async def send(self, message: EmailMessage, recipients: list[str]) -> Outcome:
        started = time.perf_counter()
        try:
            await aiosmtplib.send(message, recipients=recipients, hostname=self.host, port=self.port,
                                  username=self.username, password=self.password, use_tls=self.use_tls,
                                  start_tls=self.start_tls, timeout=self.timeout)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            return Outcome(False, codes[0] if codes else None, _ms(started),
                           f"the mail server refused the recipients: {'; '.join(r.message for r in exc.recipients)}"
                           [:300], permanent=all(c >= 500 for c in codes))
        except aiosmtplib.SMTPDataError as exc:  # the server refused this message for good (5xx) or for now
            return Outcome(False, exc.code, _ms(started), f"SMTP {exc.code}: {exc.message}"[:300],
                           permanent=exc.code >= 500)
        except aiosmtplib.SMTPResponseException as exc:  # e.g. authentication: fixable by an operator, so retry
            return Outcome(False, exc.code, _ms(started), f"SMTP {exc.code}: {exc.message}"[:300])
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            return Outcome(False, None, _ms(started), f"{type(exc).__name__}: {exc}"[:300])
        return Outcome(True, 250, _ms(started))
