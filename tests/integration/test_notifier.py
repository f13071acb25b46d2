"""The notifier against real processes and real peers: alerts over real Kafka, PostgreSQL, webhooks to a real
HTTP receiver on loopback, e-mail to a real SMTP sink (fapiao.mailsink). Tenants manage everything through the
issuer's /v1 API.

The first two tests run the whole pipeline (an outage at the tax store makes invoices stuck, the reconciler
raises the alerts); the others publish alert events themselves, the way the reconciler does, to control each
case exactly.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from sqlalchemy import text
from standardwebhooks.webhooks import Webhook

from services.notifier.signing import verify
from shared.envelope import encode, new_envelope
from shared.events import ALERT_RECOVERED, ALERT_STUCK, RECONCILER_SOURCE
from shared.topics import ALERTS
from tests import steps
from tests.harness import Receiver, ReconPipeline, Tenant, eventually, metric
from tests.steps import issue, new_tenant, until_all

# --- helpers -------------------------------------------------------------------------------------------

async def subscribe_webhook(p: ReconPipeline, tenant: Tenant, url: str, **extra: object) -> dict:
    r = await p.issuer.client.post("/v1/subscriptions", headers=tenant.headers,
                                   json={"channel": "webhook", "url": url, **extra})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["secret"].startswith("whsec_") and body["secret_shown_once"] is True
    return body


async def subscribe_email(p: ReconPipeline, tenant: Tenant, address: str, **extra: object) -> dict:
    r = await p.issuer.client.post("/v1/subscriptions", headers=tenant.headers,
                                   json={"channel": "email", "emails": [address], **extra})
    assert r.status_code == 201, r.text
    assert "secret" not in r.json()
    return r.json()


async def webhook_tenant(p: ReconPipeline, receiver: Receiver, **extra: object) -> tuple[Tenant, str, dict]:
    """A new tenant with a webhook subscription posting to a receiver path of its own: (tenant, path, hook)."""
    tenant = await new_tenant(p)
    path = f"/hooks/{uuid.uuid4().hex}"
    return tenant, path, await subscribe_webhook(p, tenant, receiver.url(path), **extra)


async def mailbox(p: ReconPipeline, tenant: Tenant, name: str) -> tuple[str, dict]:
    """An e-mail subscription to a fresh address starting with `name`: (address, subscription)."""
    address = f"{name}-{uuid.uuid4().hex[:8]}@example.com"
    return address, await subscribe_email(p, tenant, address)


def verified(req, secret: str) -> dict:  # type: ignore[no-untyped-def]
    """Checks a received webhook twice: with the algorithm docs/notifications.md gives receivers, and with the
    Standard Webhooks reference library. Returns the payload."""
    h = req.headers
    verify(secret, h["webhook-id"], h["webhook-timestamp"], h["webhook-signature"], req.body)
    return Webhook(secret).verify(req.body, {k: h[k] for k in ("webhook-id", "webhook-timestamp",
                                                                "webhook-signature")})


def alerts_in(payload: dict) -> list[dict]:
    """The alerts a webhook carried: itself, or each one a digest lists."""
    if payload["type"] == "invoice.alerts.digest":
        return payload["data"]["alerts"]
    return [payload["data"]]


async def history(p: ReconPipeline, tenant: Tenant, **params: object) -> list[dict]:
    r = await p.issuer.client.get("/v1/notifications", params=params, headers=tenant.headers)
    assert r.status_code == 200, r.text
    return r.json()["items"]


async def delivery(p: ReconPipeline, tenant: Tenant, delivery_id: str) -> dict:
    r = await p.issuer.client.get(f"/v1/notifications/{delivery_id}", headers=tenant.headers)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture
async def producer(recon_pipeline: ReconPipeline) -> AsyncIterator[AIOKafkaProducer]:
    prod = AIOKafkaProducer(bootstrap_servers=recon_pipeline.infra.kafka_bootstrap, acks="all",
                            enable_idempotence=True)
    await prod.start()
    try:
        yield prod
    finally:
        await prod.stop()


async def publish_alert(p: ReconPipeline, producer: AIOKafkaProducer, tenant: Tenant, *, kind: str = "stuck",
                        invoice_id: str | None = None, number: str | None = None, case_no: str | None = None,
                        alert_id: str | None = None, envelope_id: str | None = None) -> dict:
    """An alert as the reconciler publishes it (shared/events.py); returns its data."""
    invoice_id = invoice_id or str(uuid.uuid4())
    types = {"stuck": ALERT_STUCK, "recovered": ALERT_RECOVERED}
    data = {"alert_id": alert_id or str(uuid.uuid4()), "kind": kind, "tenant_id": tenant.id,
            "seller_tax_id": tenant.tax_id, "invoice_id": invoice_id,
            "number": number or f"26{uuid.uuid4().int % 10**18:018d}", "issue_date": "2026-11-30",
            "total": "1130.00", "buyer_name": "深圳市腾讯计算机系统有限公司", "buyer_tax_id": "91440300708461136T",
            "reason": "Invoice is not confirmed at the tax authority 10 min after issue: the tax authority cannot "
                      "be reached (HTTP 503 from the tax store). Case " + (case_no or "-") + ".",
            "next_action": "Follow the case; the system keeps checking.", "case_no": case_no,
            "at": datetime.now(UTC).isoformat()}
    env = new_envelope(id=envelope_id or data["alert_id"], source=RECONCILER_SOURCE, type=types[kind],
                       subject=invoice_id, tenant=tenant.id, sequence=1, data=data)
    topic = ALERTS.qualified(p.issuer.settings.topic_prefix)  # type: ignore[attr-defined]
    await producer.send_and_wait(topic, encode(env), key=invoice_id.encode())
    return data


async def _case_no() -> str:
    return f"CASE-20261130-{uuid.uuid4().int % 10**6:06d}"


# --- the whole pipeline ----------------------------------------------------------------------------------

async def test_a_stuck_invoice_is_told_once_per_channel_then_its_recovery(recon_pipeline: ReconPipeline,
                                                                          receiver: Receiver) -> None:
    p = recon_pipeline
    p.start_own("reconciler", FAPIAO_STUCK_AFTER="3")
    tenant, path, hook = await webhook_tenant(p, receiver)
    address, _ = await mailbox(p, tenant, "finance")

    await p.faults(outage=True)
    ids = await issue(p, tenant, 1)
    number, iid = next(iter(ids.items()))
    await until_all(p, tenant, "stuck", 1, timeout=60)
    case_no = (await steps.detail(p, tenant, iid))["case_no"]

    await eventually(lambda: _count(receiver.at(path), 1) and _count(p.mails(to=address), 1), timeout=20)
    [stuck_hook] = receiver.at(path)
    payload = verified(stuck_hook, hook["secret"])
    assert payload["type"] == "invoice.stuck" and stuck_hook.headers["webhook-id"].startswith("msg_")
    data = payload["data"]
    assert (data["invoice_id"], data["number"], data["case_no"]) == (iid, number, case_no)
    assert data["total"] and data["buyer_name"] and "cannot be reached" in data["reason"]
    assert data["links"]["case"].endswith(f"/v1/cases/{case_no}")
    [mail] = p.mails(to=address)
    assert number in mail["Subject"] and case_no in mail["Subject"]
    plain = mail.get_body(("plain",)).get_content()
    html = mail.get_body(("html",)).get_content()
    for part in (plain, html):
        assert number in part and case_no in part and "¥" in part and "深圳市腾讯计算机系统有限公司" in part
        assert "发票" in part and "Invoice" in part and "cannot be reached" in part
    assert f"/v1/invoices/{iid}" in plain and f"fapiao invoice show {number}" in plain

    await p.faults(outage=False)
    await until_all(p, tenant, "confirmed", 1, timeout=60)
    await eventually(lambda: _count(receiver.at(path), 2) and _count(p.mails(to=address), 2), timeout=20)
    await asyncio.sleep(1.5)  # nothing more follows: one notice per transition and channel
    assert len(receiver.at(path)) == 2 and len(p.mails(to=address)) == 2
    recovered = verified(receiver.at(path)[1], hook["secret"])
    assert recovered["type"] == "invoice.recovered" and recovered["data"]["case_no"] == case_no
    assert "已恢复" in p.mails(to=address)[1]["Subject"] or "visible" in p.mails(to=address)[1]["Subject"]

    # The invoice's timeline and its notification history say what was sent, where, when.
    async def on_timeline() -> list | None:
        sent = [t for t in (await steps.detail(p, tenant, iid))["timeline"] if t["kind"] == "alert_sent"]
        return sent if len(sent) == 4 else None

    sent = await eventually(on_timeline, timeout=15)
    assert {("webhook" in t["message"], "e-mail" in t["message"]) for t in sent} == {(True, False), (False, True)}
    assert any("Alert (stuck) sent via webhook to 127.0.0.1" in t["message"] for t in sent)
    r = await p.issuer.client.get(f"/v1/invoices/{iid}/notifications", headers=tenant.headers)
    assert r.status_code == 200 and len(r.json()["items"]) == 4
    assert {(n["channel"], n["status"], n["attempts"]) for n in r.json()["items"]} == {
        ("webhook", "delivered", 1), ("email", "delivered", 1)}


def _count(items: list, n: int) -> bool:
    return len(items) >= n


async def test_an_outage_that_sticks_200_invoices_sends_one_digest_per_channel(recon_pipeline: ReconPipeline,
                                                                               receiver: Receiver) -> None:
    p = recon_pipeline
    p.start_own("reconciler", FAPIAO_STUCK_AFTER="3")
    p.start_own("notifier", FAPIAO_DIGEST_WINDOW="10")
    tenant, path, hook = await webhook_tenant(p, receiver)
    address, _ = await mailbox(p, tenant, "ops")

    await p.faults(outage=True)
    ids = await issue(p, tenant, 200)
    await until_all(p, tenant, "stuck", 200, timeout=90)
    # The operators' list names each alert's channel (the alerts reach the notifier a moment after the invoices
    # turn stuck, through Kafka; a loaded machine makes that moment longer).
    async def fates() -> list:
        async with httpx.AsyncClient(timeout=10) as c:
            r = await c.get(f"{p.notifier.url}/admin/alerts", headers=p.admin,
                            params={"tenant_id": tenant.id, "limit": 100})
        return [d for a in r.json()["items"] for d in a["deliveries"]]

    seen = await eventually(fates, timeout=20, interval=0.3)
    assert {d["channel"] for d in seen} == {"webhook", "email"}, seen[:4]
    await eventually(lambda: _count(receiver.at(path), 1) and _count(p.mails(to=address), 1), timeout=30)
    await asyncio.sleep(2)
    assert len(receiver.at(path)) == 1 and len(p.mails(to=address)) == 1, "one digest per channel, not 200 messages"
    digest = verified(receiver.at(path)[0], hook["secret"])
    assert digest["type"] == "invoice.alerts.digest" and digest["data"]["count"] == 200
    assert {a["number"] for a in digest["data"]["alerts"]} == set(ids)
    assert all(a["type"] == "invoice.stuck" and a["case_no"] for a in digest["data"]["alerts"])
    [mail] = p.mails(to=address)
    assert "200" in mail["Subject"]
    plain = mail.get_body(("plain",)).get_content()
    assert all(n in plain for n in ids)
    items = await history(p, tenant)
    assert {(n["channel"], n["kind"], n["alert_count"]) for n in items} == {("webhook", "digest", 200),
                                                                           ("email", "digest", 200)}

    await p.faults(outage=False)
    await until_all(p, tenant, "confirmed", 200, timeout=120)
    await eventually(lambda: _count(receiver.at(path), 2) and _count(p.mails(to=address), 2), timeout=30)
    await asyncio.sleep(2)
    # The recoveries are grouped the same way (they may straddle two windows while the store catches up).
    recovered = [verified(r, hook["secret"]) for r in receiver.at(path)[1:]]
    assert len(recovered) <= 2 and sum(d["data"].get("count", 1) for d in recovered) == 200
    assert len(p.mails(to=address)) <= 3


# --- delivery, retries, restarts -------------------------------------------------------------------------

async def test_a_receiver_failing_three_times_gets_it_on_the_fourth_attempt_across_a_restart(
        recon_pipeline: ReconPipeline, receiver: Receiver, producer: AIOKafkaProducer) -> None:
    p = recon_pipeline
    p.start_own("notifier", FAPIAO_RETRY_BASE="2", FAPIAO_RETRY_CAP="4")
    tenant = await new_tenant(p)
    path = f"/hooks/{uuid.uuid4().hex}"
    receiver.scripts[path] = [500, 500, 500]
    hook = await subscribe_webhook(p, tenant, receiver.url(path))
    iid = (await issue(p, tenant, 1)).popitem()[1]
    await publish_alert(p, producer, tenant, invoice_id=iid, case_no=await _case_no())

    async def two_attempts_recorded() -> bool:
        items = await history(p, tenant)
        return bool(items) and items[0]["attempts"] == 2

    await eventually(two_attempts_recorded, timeout=20, interval=0.05)
    p.notifier.kill()  # between attempts 2 and 3: the schedule is in the database, not in this process
    assert len(receiver.at(path)) == 2
    p.notifier.start()
    # While it waits for its next attempt, operators see it queued for a retry, and how old it is.
    async def queued_for_retry() -> bool:
        return (await metric(p.notifier.url, "fapiao_notifier_retry_queue_depth", channel="webhook") >= 1
                and await metric(p.notifier.url, "fapiao_notifier_oldest_pending_delivery_age_seconds") > 0)

    await eventually(queued_for_retry, timeout=5, interval=0.1)
    await eventually(lambda: _count(receiver.at(path), 4), timeout=30)
    await asyncio.sleep(1)
    calls = receiver.at(path)
    assert len(calls) == 4
    assert len({c.headers["webhook-id"] for c in calls}) == 1, "one webhook-id across all retries"
    assert len({c.headers["webhook-timestamp"] for c in calls}) >= 3  # each attempt is signed anew
    for c in calls:
        verified(c, hook["secret"])

    [item] = await history(p, tenant)
    assert item["status"] == "delivered" and item["attempts"] == 4 and item["webhook_id"] == \
        calls[0].headers["webhook-id"]
    log = (await delivery(p, tenant, item["id"]))["attempt_log"]
    assert [(a["n"], a["outcome"], a["status_code"]) for a in log] == [
        (1, "failed", 500), (2, "failed", 500), (3, "failed", 500), (4, "delivered", 200)]
    assert all(a["latency_ms"] is not None and a["at"] for a in log)
    assert all(log[i]["at"] < log[i + 1]["at"] for i in range(3))
    assert await metric(p.notifier.url, "fapiao_notifier_deliveries_total", channel="webhook",
                        outcome="delivered") >= 1
    assert await metric(p.notifier.url, "fapiao_notifier_attempts_total", channel="webhook", outcome="failed") >= 1


async def test_a_delivery_that_never_succeeds_is_exhausted_visible_and_can_be_retried(
        recon_pipeline: ReconPipeline, receiver: Receiver, producer: AIOKafkaProducer) -> None:
    p = recon_pipeline
    tenant = await new_tenant(p)
    path = f"/hooks/{uuid.uuid4().hex}"
    receiver.scripts[path] = [503] * 5  # FAPIAO_MAX_ATTEMPTS is 5 here
    await subscribe_webhook(p, tenant, receiver.url(path))
    iid = (await issue(p, tenant, 1)).popitem()[1]
    await publish_alert(p, producer, tenant, invoice_id=iid, case_no=await _case_no())

    async def exhausted() -> dict | None:
        items = await history(p, tenant, status="exhausted")
        return items[0] if items else None

    item = await eventually(exhausted, timeout=30)
    assert item["attempts"] == 5 and item["last_error"] == "HTTP 503" and item["next_attempt_at"] is None
    assert len(receiver.at(path)) == 5
    assert await metric(p.notifier.url, "fapiao_notifier_deliveries_total", channel="webhook",
                        outcome="exhausted") >= 1

    async def failed_on_timeline() -> dict | None:
        entries = [t for t in (await steps.detail(p, tenant, iid))["timeline"] if t["kind"] == "alert_failed"]
        return entries[0] if entries else None

    entry = await eventually(failed_on_timeline, timeout=15)
    assert "could not be delivered via webhook" in entry["message"] and "5 attempts" in entry["message"]

    r = await p.issuer.client.post(f"/v1/notifications/{item['id']}/retry", headers=tenant.headers)
    assert r.status_code == 200 and r.json()["status"] == "pending", r.text
    await eventually(lambda: _count(receiver.at(path), 6), timeout=15)
    done = await eventually(lambda: _delivered(p, tenant, item["id"]), timeout=15)
    assert done["attempt_log"][-1]["outcome"] == "delivered"
    again = await p.issuer.client.post(f"/v1/notifications/{item['id']}/retry", headers=tenant.headers)
    assert again.status_code == 409


async def _delivered(p: ReconPipeline, tenant: Tenant, delivery_id: str) -> dict | None:
    d = await delivery(p, tenant, delivery_id)
    return d if d["status"] == "delivered" else None


async def test_the_same_alert_delivered_twice_by_kafka_is_one_notification(
        recon_pipeline: ReconPipeline, receiver: Receiver, producer: AIOKafkaProducer) -> None:
    p = recon_pipeline
    tenant, path, _ = await webhook_tenant(p, receiver)
    address, _ = await mailbox(p, tenant, "dup")
    iid = (await issue(p, tenant, 1)).popitem()[1]
    case_no = await _case_no()
    first = await publish_alert(p, producer, tenant, invoice_id=iid, case_no=case_no)
    # The very same event again (a redelivery), and the same alert in a new envelope (a re-sent alert).
    await publish_alert(p, producer, tenant, invoice_id=iid, case_no=case_no, alert_id=first["alert_id"])
    await publish_alert(p, producer, tenant, invoice_id=iid, case_no=case_no, alert_id=first["alert_id"],
                        envelope_id=str(uuid.uuid4()))
    await eventually(lambda: _count(receiver.at(path), 1) and _count(p.mails(to=address), 1), timeout=20)
    await asyncio.sleep(2)
    assert len(receiver.at(path)) == 1 and len(p.mails(to=address)) == 1
    assert len(await history(p, tenant)) == 2  # one per channel
    async with p.issuer.app.state.engine.connect() as conn:  # type: ignore[attr-defined]
        n = (await conn.execute(text("select count(*) from notifier.alerts where alert_id = :a"),
                                {"a": first["alert_id"]})).scalar_one()
    assert n == 1


# --- targets, isolation, secrets, mutes, reminders -------------------------------------------------------

async def test_private_and_metadata_targets_are_refused_and_subscriptions_are_the_tenants_own(
        recon_pipeline: ReconPipeline, receiver: Receiver, producer: AIOKafkaProducer) -> None:
    p = recon_pipeline
    a, b = await new_tenant(p, name="甲 A Co."), await new_tenant(p, name="乙 B Co.")
    for url, words in (("http://169.254.169.254/latest/meta-data/", "cloud metadata service"),
                       ("http://10.0.0.1/hook", "private (RFC 1918)"),
                       ("http://[::ffff:10.0.0.1]/hook", "private (RFC 1918)"),
                       ("http://192.168.1.20:8080/hook", "private (RFC 1918)"),
                       ("http://100.64.0.9/hook", "carrier-grade NAT"),
                       ("http://[fe80::1]/hook", "link-local"),
                       ("ftp://example.com/hook", "http:// or https://"),
                       ("http://user:pw@127.0.0.1/hook", "credentials")):
        r = await p.issuer.client.post("/v1/subscriptions", headers=a.headers, json={"channel": "webhook", "url": url})
        assert r.status_code == 422, (url, r.text)
        [error] = r.json()["errors"]
        assert error["path"] == "url" and words in error["reason"], (url, error)
    bad_mail = await p.issuer.client.post("/v1/subscriptions", headers=a.headers,
                                          json={"channel": "email", "emails": ["not an address\r\nBcc: x@y.z"]})
    assert bad_mail.status_code == 422 and bad_mail.json()["errors"][0]["path"].startswith("emails")
    assert (await p.issuer.client.get("/v1/subscriptions", headers=a.headers)).json()["items"] == []

    path = f"/hooks/{uuid.uuid4().hex}"
    mine = await subscribe_webhook(p, a, receiver.url(path), kinds=["stuck"])
    sid = mine["id"]
    for method, url, body in (("GET", f"/v1/subscriptions/{sid}", None),
                              ("PATCH", f"/v1/subscriptions/{sid}", {"active": False}),
                              ("POST", f"/v1/subscriptions/{sid}/rotate-secret", None),
                              ("POST", f"/v1/subscriptions/{sid}/ping", None),
                              ("DELETE", f"/v1/subscriptions/{sid}", None)):
        r = await p.issuer.client.request(method, url, json=body, headers=b.headers)
        assert r.status_code == 404, (method, url, r.text)
    assert (await p.issuer.client.get("/v1/subscriptions", headers=b.headers)).json()["items"] == []
    listed = (await p.issuer.client.get("/v1/subscriptions", headers=a.headers)).json()["items"]
    assert [s["id"] for s in listed] == [sid] and "secret" not in listed[0] and listed[0]["active"] is True

    iid = (await issue(p, a, 1)).popitem()[1]
    await publish_alert(p, producer, a, invoice_id=iid, case_no=await _case_no())
    await eventually(lambda: _count(receiver.at(path), 1), timeout=20)
    [item] = await eventually(lambda: history(p, a), timeout=10)
    assert await history(p, b) == []
    assert (await p.issuer.client.get(f"/v1/notifications/{item['id']}", headers=b.headers)).status_code == 404
    assert (await p.issuer.client.get(f"/v1/invoices/{iid}/notifications", headers=b.headers)).status_code == 404
    assert (await p.issuer.client.get("/v1/notifications", params={"invoice_id": iid},
                                      headers=b.headers)).status_code == 404
    assert (await p.issuer.client.put(f"/v1/invoices/{iid}/mute", headers=b.headers)).status_code == 404


async def test_a_private_address_is_checked_again_when_delivering(
        recon_pipeline: ReconPipeline, receiver: Receiver, producer: AIOKafkaProducer) -> None:
    p = recon_pipeline
    tenant = await new_tenant(p)
    path = f"/hooks/{uuid.uuid4().hex}"
    await subscribe_webhook(p, tenant, receiver.url(path))  # allowed: this notifier allows loopback
    p.start_own("notifier", FAPIAO_WEBHOOK_ALLOW_PRIVATE="")  # the operator no longer allows it
    iid = (await issue(p, tenant, 1)).popitem()[1]
    await publish_alert(p, producer, tenant, invoice_id=iid, case_no=await _case_no())

    async def refused() -> dict | None:
        items = await history(p, tenant)
        if not items or items[0]["attempts"] < 2:
            return None
        return await delivery(p, tenant, items[0]["id"])

    d = await eventually(refused, timeout=20)
    assert all(a["outcome"] == "failed" and a["status_code"] is None for a in d["attempt_log"])
    assert "refused: 127.0.0.1, a loopback address" in d["attempt_log"][0]["error"]
    assert receiver.at(path) == [], "nothing may reach a refused address"


async def test_a_rotated_secret_signs_beside_the_old_one_during_the_overlap(recon_pipeline: ReconPipeline,
                                                                             receiver: Receiver) -> None:
    p = recon_pipeline
    tenant, path, hook = await webhook_tenant(p, receiver)
    old = hook["secret"]
    r = await p.issuer.client.post(f"/v1/subscriptions/{hook['id']}/rotate-secret", headers=tenant.headers,
                                   json={"overlap_seconds": 3600})
    assert r.status_code == 200, r.text
    new = r.json()["secret"]
    assert new != old and new.startswith("whsec_") and r.json()["previous_secret_expires_at"]

    ping = await p.issuer.client.post(f"/v1/subscriptions/{hook['id']}/ping", headers=tenant.headers)
    assert ping.status_code == 202, ping.text
    await eventually(lambda: _count(receiver.at(path), 1), timeout=15)
    req = receiver.at(path)[0]
    assert len(req.headers["webhook-signature"].split(" ")) == 2
    assert verified(req, old)["type"] == "webhook.ping" and verified(req, new)["type"] == "webhook.ping"

    # Rotating with no overlap: from now on only the newest secret signs.
    r = await p.issuer.client.post(f"/v1/subscriptions/{hook['id']}/rotate-secret", headers=tenant.headers,
                                   json={"overlap_seconds": 0})
    newest = r.json()["secret"]
    await p.issuer.client.post(f"/v1/subscriptions/{hook['id']}/ping", headers=tenant.headers)
    await eventually(lambda: _count(receiver.at(path), 2), timeout=15)
    req = receiver.at(path)[1]
    assert len(req.headers["webhook-signature"].split(" ")) == 2  # the first rotation's overlap still runs
    verified(req, newest)
    verified(req, old)
    with pytest.raises(Exception):  # noqa: B017 - the library raises its own WebhookVerificationError
        verified(req, new)


async def test_a_muted_invoice_is_silent_until_it_recovers_and_open_cases_are_reminded(
        recon_pipeline: ReconPipeline, receiver: Receiver, producer: AIOKafkaProducer) -> None:
    p = recon_pipeline
    p.start_own("notifier", FAPIAO_REMIND_AFTER="2")
    tenant, path, hook = await webhook_tenant(p, receiver)
    ids = list((await issue(p, tenant, 2)).values())
    quiet, loud = ids
    r = await p.issuer.client.put(f"/v1/invoices/{quiet}/mute", headers=tenant.headers)
    assert r.status_code == 201 and r.json()["until"] == "resolved", r.text
    assert (await p.issuer.client.put(f"/v1/invoices/{quiet}/mute", headers=tenant.headers)).status_code == 200
    quiet_case, loud_case = await _case_no(), await _case_no()
    await publish_alert(p, producer, tenant, invoice_id=quiet, case_no=quiet_case)
    await publish_alert(p, producer, tenant, invoice_id=loud, case_no=loud_case)

    async def seen(kind: str, case_no: str, n: int = 1) -> list | None:
        hits = [a for r in receiver.at(path) for a in alerts_in(verified(r, hook["secret"]))
                if a["type"] == kind and a["case_no"] == case_no]
        return hits if len(hits) >= n else None

    await eventually(lambda: seen("invoice.stuck", loud_case), timeout=15)
    reminders = await eventually(lambda: seen("case.reminder", loud_case, 2), timeout=20)
    assert "reminder 1" in reminders[0]["reason"] and "reminder 2" in reminders[1]["reason"]
    assert await seen("invoice.stuck", quiet_case) is None and await seen("case.reminder", quiet_case) is None

    # The ends of both problems are told (the mute lifts itself), then the reminders stop.
    await publish_alert(p, producer, tenant, kind="recovered", invoice_id=quiet, case_no=quiet_case)
    await publish_alert(p, producer, tenant, kind="recovered", invoice_id=loud, case_no=loud_case)
    await eventually(lambda: seen("invoice.recovered", quiet_case), timeout=15)
    await eventually(lambda: seen("invoice.recovered", loud_case), timeout=15)
    assert (await p.issuer.client.get("/v1/mutes", headers=tenant.headers)).json()["items"] == []
    before = len(receiver.at(path))
    await asyncio.sleep(3.5)
    assert len(receiver.at(path)) == before, "no reminder after the case resolved"
    # Unmuting what the resolution already unmuted is no error (DELETE is idempotent); nothing is muted after.
    assert (await p.issuer.client.delete(f"/v1/invoices/{quiet}/mute", headers=tenant.headers)).status_code == 204
    assert (await p.issuer.client.get("/v1/mutes", headers=tenant.headers)).json()["items"] == []


async def test_history_pages_without_gaps(recon_pipeline: ReconPipeline, receiver: Receiver) -> None:
    p = recon_pipeline
    tenant = await new_tenant(p)
    hook = await subscribe_webhook(p, tenant, receiver.url(f"/hooks/{uuid.uuid4().hex}"))
    sent = set()
    for _ in range(5):
        r = await p.issuer.client.post(f"/v1/subscriptions/{hook['id']}/ping", headers=tenant.headers)
        assert r.status_code == 202 and r.json()["webhook_id"].startswith("msg_")
        sent.add(r.json()["delivery_id"])
    seen: list[str] = []
    cursor = None
    for _ in range(5):
        r = await p.issuer.client.get("/v1/notifications", headers=tenant.headers,
                                      params={"limit": 2, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        seen += [n["id"] for n in r.json()["items"]]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            break
    assert seen and len(seen) == len(set(seen)) == 5 and set(seen) == sent
    bad = await p.issuer.client.get("/v1/notifications", params={"cursor": "nonsense"}, headers=tenant.headers)
    assert bad.status_code == 422 and bad.json()["errors"][0]["path"] == "cursor"


async def test_an_unreadable_secret_holds_back_only_its_own_webhooks_until_rotated(
        recon_pipeline: ReconPipeline, receiver: Receiver) -> None:
    p = recon_pipeline
    tenant, path, hook = await webhook_tenant(p, receiver)
    address, mail = await mailbox(p, tenant, "keys")
    # The old key is lost (and retries are slow enough for the rotation below to come before they run out).
    p.start_own("notifier", FAPIAO_SECRETS_KEY="another-secrets-key-" + uuid.uuid4().hex, FAPIAO_RETRY_BASE="2")
    for sub in (hook, mail):
        assert (await p.issuer.client.post(f"/v1/subscriptions/{sub['id']}/ping",
                                           headers=tenant.headers)).status_code == 202
    await eventually(lambda: _count(p.mails(to=address), 1), timeout=15)  # e-mail is not held up

    async def webhook_failed() -> dict | None:
        items = [n for n in await history(p, tenant) if n["channel"] == "webhook" and n["attempts"] >= 1]
        return await delivery(p, tenant, items[0]["id"]) if items else None

    d = await eventually(webhook_failed, timeout=15)
    assert "no signing secret can be decrypted" in d["attempt_log"][0]["error"]
    assert receiver.at(path) == [], "never sent unsigned"

    r = await p.issuer.client.post(f"/v1/subscriptions/{hook['id']}/rotate-secret", headers=tenant.headers,
                                   json={"overlap_seconds": 0})
    assert r.status_code == 200, r.text
    await eventually(lambda: _count(receiver.at(path), 1), timeout=20)  # the waiting delivery goes out now
    payload = verified(receiver.at(path)[0], r.json()["secret"])
    assert payload["type"] == "webhook.ping" and len(receiver.at(path)[0].headers["webhook-signature"].split()) == 1


async def test_voiding_a_stuck_invoice_closes_its_case_and_stops_the_reminders(recon_pipeline: ReconPipeline,
                                                                                receiver: Receiver) -> None:
    p = recon_pipeline
    p.start_own("reconciler", FAPIAO_STUCK_AFTER="3")
    p.start_own("notifier", FAPIAO_REMIND_AFTER="2")
    tenant, path, hook = await webhook_tenant(p, receiver)
    await p.faults(outage=True)
    iid = (await issue(p, tenant, 1)).popitem()[1]
    await until_all(p, tenant, "stuck", 1, timeout=60)
    case_no = (await steps.detail(p, tenant, iid))["case_no"]

    def kinds() -> list[str]:
        return [a["type"] for r in receiver.at(path) for a in alerts_in(verified(r, hook["secret"]))]

    await eventually(lambda: kinds().count("case.reminder") >= 1, timeout=20)
    r = await p.issuer.client.post(f"/v1/invoices/{iid}/void", json={"reason": "issued by mistake"},
                                   headers=tenant.headers)
    assert r.status_code == 200, r.text
    await eventually(lambda: "case.closed" in kinds(), timeout=20)
    closed = next(a for r in receiver.at(path) for a in alerts_in(verified(r, hook["secret"]))
                  if a["type"] == "case.closed")
    assert closed["case_no"] == case_no and "voided" in closed["reason"]
    case = (await p.issuer.client.get(f"/v1/cases/{case_no}", headers=tenant.headers)).json()
    assert case["status"] == "closed"
    before = len(kinds())
    await asyncio.sleep(3.5)
    assert len(kinds()) == before, "no reminder about a case that is closed"
