"""The notifier's pure parts: Standard Webhooks signatures, the address policy for webhook targets, the
messages, the retry schedule, the subscription rules and the settings."""

from __future__ import annotations

import ipaddress
import random
import time

import pytest
from pydantic import ValidationError
from standardwebhooks.webhooks import Webhook

from services.notifier.deliveries import mask_email
from services.notifier.guard import Refused, TargetPolicy, describe, parse_networks
from services.notifier.messages import build_email, webhook_payload
from services.notifier.settings import NotifierSettings
from services.notifier.signing import SecretBox, Unverified, headers, new_secret, sign, verify
from shared.backoff import backoff
from shared.contracts.notifier import KINDS, SubscriptionCreate, SubscriptionPatch

# --- signatures -------------------------------------------------------------------------------------------

# The example in the Standard Webhooks specification.
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # noqa: S105 - the specification's published example
SPEC_ID, SPEC_TS, SPEC_BODY = "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_signature_matches_the_specifications_example() -> None:
    assert sign(SPEC_SECRET, SPEC_ID, SPEC_TS, SPEC_BODY) == SPEC_SIGNATURE
    verify(SPEC_SECRET, SPEC_ID, str(SPEC_TS), SPEC_SIGNATURE, SPEC_BODY, now=SPEC_TS + 10)


def test_the_reference_library_accepts_what_we_send() -> None:
    secret = new_secret()
    body = b'{"type":"invoice.stuck","data":{"number":"26113000000000000001"}}'
    sent = headers([secret], "msg_abc", body)
    assert Webhook(secret).verify(body, sent) == {"type": "invoice.stuck",
                                                  "data": {"number": "26113000000000000001"}}


def test_verification_refuses_tampering_other_secrets_and_stale_or_future_timestamps() -> None:
    secret, other = new_secret(), new_secret()
    body = b'{"a":1}'
    h = headers([secret], "msg_1", body)
    verify(secret, h["webhook-id"], h["webhook-timestamp"], h["webhook-signature"], body)
    with pytest.raises(Unverified, match="signature"):
        verify(secret, "msg_1", h["webhook-timestamp"], h["webhook-signature"], b'{"a":2}')
    with pytest.raises(Unverified, match="signature"):
        verify(other, "msg_1", h["webhook-timestamp"], h["webhook-signature"], body)
    with pytest.raises(Unverified, match="signature"):
        verify(secret, "msg_2", h["webhook-timestamp"], h["webhook-signature"], body)  # the id is signed too
    for skew in (-301, 301):
        with pytest.raises(Unverified, match="5-minute"):
            verify(secret, "msg_1", h["webhook-timestamp"], h["webhook-signature"], body, now=time.time() + skew)
    with pytest.raises(Unverified, match="number"):
        verify(secret, "msg_1", "soon", h["webhook-signature"], body)


def test_during_a_rotation_both_secrets_sign_and_either_verifies() -> None:
    old, new = new_secret(), new_secret()
    body = b"{}"
    h = headers([new, old], "msg_9", body, timestamp=int(time.time()))
    assert len(h["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        verify(secret, "msg_9", h["webhook-timestamp"], h["webhook-signature"], body)
        Webhook(secret).verify(body, h)


def test_secrets_are_sealed_at_rest() -> None:
    box = SecretBox("k" * 40)
    secret = new_secret()
    sealed = box.seal(secret)
    assert secret.encode() not in sealed and box.open(sealed) == secret
    with pytest.raises(ValueError, match="FAPIAO_SECRETS_KEY"):
        SecretBox("another key entirely, 32+ chars").open(sealed)


# --- where webhooks may go ------------------------------------------------------------------------------

@pytest.mark.parametrize(("address", "kind"), [
    ("169.254.169.254", "the cloud metadata service"), ("fd00:ec2::254", "the cloud metadata service"),
    ("10.1.2.3", "private (RFC 1918)"), ("172.16.0.1", "private (RFC 1918)"), ("192.168.0.1", "private (RFC 1918)"),
    ("127.0.0.1", "loopback"), ("::1", "loopback"), ("169.254.1.1", "link-local"), ("fe80::1", "link-local"),
    ("100.64.1.1", "carrier-grade NAT (RFC 6598)"), ("fd12::1", "unique local (RFC 4193)"), ("0.0.0.0", "unspecified"),
    ("224.0.0.1", "multicast"), ("::ffff:10.0.0.1", "private (RFC 1918)"), ("192.0.2.1", "reserved"),
    ("8.8.8.8", "public"), ("2001:4860:4860::8888", "public"),
])
def test_addresses_are_named_by_kind(address: str, kind: str) -> None:
    assert describe(ipaddress.ip_address(address)) == kind


def resolver(mapping: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    async def resolve(host: str, port: int) -> list[str]:
        if host not in mapping:
            raise OSError("Name or service not known")
        return mapping[host]
    return resolve


async def test_every_resolved_address_must_be_public() -> None:
    policy = TargetPolicy(resolver=resolver({"erp.example.com": ["93.184.216.34"],
                                             "mixed.example.com": ["93.184.216.34", "10.0.0.7"],
                                             "rebind.example.com": ["127.0.0.1"]}))
    ok = await policy.check("https://erp.example.com/hooks/fapiao")
    assert (ok.host, ok.port, ok.ip) == ("erp.example.com", 443, "93.184.216.34")
    with pytest.raises(Refused, match="mixed.example.com resolves to 10.0.0.7, a private"):
        await policy.check("https://mixed.example.com/h")
    with pytest.raises(Refused, match="loopback"):
        await policy.check("http://rebind.example.com/h")
    with pytest.raises(Refused, match="does not resolve"):
        await policy.check("http://nowhere.example.com/h")


async def test_allowed_ranges_open_private_addresses_but_never_the_metadata_service() -> None:
    policy = TargetPolicy(parse_networks("127.0.0.0/8, 169.254.0.0/16"))
    assert (await policy.check("http://127.0.0.1:9000/h")).ip == "127.0.0.1"
    assert (await policy.check("http://169.254.10.10/h")).port == 80
    with pytest.raises(Refused, match="cloud metadata"):
        await policy.check("http://169.254.169.254/latest/meta-data/")
    with pytest.raises(Refused, match="private"):
        await policy.check("http://10.0.0.1/h")


@pytest.mark.parametrize(("url", "words"), [
    ("ftp://example.com/x", "http:// or https://"), ("http:///x", "must name a host"),
    ("https://u:p@example.com/x", "credentials"), ("https://example.com/x#frag", "fragment"),
    ("https://example.com:99999/x", "not a valid URL"),
])
def test_urls_of_the_wrong_shape_are_refused(url: str, words: str) -> None:
    with pytest.raises(Refused, match=words):
        TargetPolicy.parse(url)


def test_allowed_ranges_must_be_cidrs() -> None:
    assert parse_networks("") == ()
    with pytest.raises(ValueError, match="'loopback' is not an address range"):
        parse_networks("127.0.0.0/8,loopback")


# --- messages ---------------------------------------------------------------------------------------------

ALERT = {"alert_id": "a1", "kind": "stuck", "invoice_id": "5b2c1f0e-0000-4000-8000-000000000001",
         "number": "26113000000000000001", "issue_date": "2026-11-30", "total": "1130.00",
         "buyer_name": "<script>alert(1)</script> 买方", "buyer_tax_id": "91440300708461136T",
         "seller_tax_id": "91310115MA1K4DEM05", "reason": "not visible after 10 min", "next_action": "Follow the case",
         "case_no": "CASE-20261130-000001", "at": "2026-11-30T10:00:00+00:00"}


def test_a_single_alert_is_its_own_webhook_type_with_links() -> None:
    body = webhook_payload(kind="single", alerts=[ALERT], created_at="2026-11-30T10:00:01+00:00",
                           issuer_url="https://fapiao.example.com")
    assert body["type"] == "invoice.stuck" and body["timestamp"] == "2026-11-30T10:00:01+00:00"
    assert body["data"]["links"] == {"invoice": f"https://fapiao.example.com/v1/invoices/{ALERT['invoice_id']}",
                                     "case": "https://fapiao.example.com/v1/cases/CASE-20261130-000001"}


def test_a_form_alert_links_the_buyer_to_the_form_only_and_the_seller_to_the_form_and_its_invoice() -> None:
    """The invoice is the seller's: a buyer tenant opening it gets a 404, so its alert names the form it can open."""
    form_id = "7d1e0c2a-0000-4000-8000-000000000002"
    awaiting = {**ALERT, "kind": "form_awaiting", "case_no": None, "form_id": form_id, "role": "buyer"}
    body = webhook_payload(kind="single", alerts=[awaiting], created_at="t", issuer_url="https://fapiao.example.com")
    assert body["type"] == "red_letter.awaiting"
    assert body["data"]["links"] == {"form": f"https://fapiao.example.com/v1/red-letter-forms/{form_id}"}
    plain = build_email(kind="single", alerts=[awaiting], sender="a@b.c", recipients=["x@example.com"],
                        message_id="m", issuer_url="https://fapiao.example.com").get_body(("plain",)).get_content()
    assert f"/v1/red-letter-forms/{form_id}" in plain
    assert "/v1/invoices/" not in plain and "fapiao invoice show" not in plain
    seller = {**awaiting, "kind": "form_rejected", "role": "seller"}
    links = webhook_payload(kind="single", alerts=[seller], created_at="t", issuer_url="u")["data"]["links"]
    assert links == {"form": f"u/v1/red-letter-forms/{form_id}", "invoice": f"u/v1/invoices/{ALERT['invoice_id']}"}


def test_a_digest_lists_every_alert_and_counts_them_by_kind() -> None:
    recovered = {**ALERT, "alert_id": "a2", "kind": "recovered", "number": "26113000000000000002"}
    body = webhook_payload(kind="digest", alerts=[ALERT, ALERT | {"alert_id": "a3"}, recovered], created_at="t",
                           issuer_url="u")
    assert body["type"] == "invoice.alerts.digest"
    assert body["data"]["count"] == 3 and body["data"]["counts"] == {"recovered": 1, "stuck": 2}
    assert [a["type"] for a in body["data"]["alerts"]] == ["invoice.stuck", "invoice.stuck", "invoice.recovered"]


def test_the_email_speaks_chinese_and_english_in_text_and_html_and_escapes_what_tenants_wrote() -> None:
    msg = build_email(kind="single", alerts=[ALERT], sender="Fapiao Sync <alerts@example.com>",
                      recipients=["finance@example.com", "ops@example.com"], message_id="msg_1",
                      issuer_url="https://fapiao.example.com")
    # Several recipients do not see each other (the SMTP envelope names them); one is named in To.
    assert msg["To"] == "undisclosed-recipients:;" and msg["X-Fapiao-Delivery"] == "msg_1"
    one = build_email(kind="ping", alerts=[], sender="a@example.com", recipients=["finance@example.com"],
                      message_id="m", issuer_url="u")
    assert one["To"] == "finance@example.com"
    assert "26113000000000000001" in msg["Subject"] and "CASE-20261130-000001" in msg["Subject"]
    assert "发票" in msg["Subject"] and "Invoice" in msg["Subject"]
    plain = msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    for needle in ("26113000000000000001", "¥1130.00", "买方", "not visible after 10 min", "CASE-20261130-000001",
                   "Follow the case", "https://fapiao.example.com/v1/invoices/"):
        assert needle in plain and needle in html, needle
    assert "fapiao invoice show 26113000000000000001" in plain
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_a_digest_email_names_how_many_of_each() -> None:
    msg = build_email(kind="digest", alerts=[ALERT, {**ALERT, "number": "26113000000000000009"}], sender="a@b.c",
                      recipients=["x@example.com"], message_id="m", issuer_url="u")
    assert "2 stuck" in msg["Subject"] and "未确认 2 张" in msg["Subject"]
    assert "26113000000000000009" in msg.get_body(("plain",)).get_content()


def test_history_masks_addresses() -> None:
    assert mask_email("finance@example.com") == "f******@example.com"
    assert mask_email("a@example.com") == "a*@example.com"


# --- the retry schedule -----------------------------------------------------------------------------------

def test_retries_double_with_equal_jitter_up_to_the_cap() -> None:
    rng = random.Random(3)
    for n, step in ((1, 30), (2, 60), (3, 120), (7, 1920), (8, 3600), (30, 3600)):
        for _ in range(50):
            wait = backoff(n - 1, base=30, cap=3600, jitter="equal", rng=rng)  # after the n-th failed delivery
            assert step / 2 <= wait <= step, (n, wait)


# --- subscriptions ----------------------------------------------------------------------------------------

def test_a_subscription_needs_what_its_channel_needs() -> None:
    assert SubscriptionCreate(channel="webhook", url="https://erp.example.com/h").field_problems() == []
    assert [e.path for e in SubscriptionCreate(channel="webhook").field_problems()] == ["url"]
    both = SubscriptionCreate(channel="email", emails=["a@example.com"], url="https://x.example.com/h")
    assert [(e.path, e.reason) for e in both.field_problems()] == [("url", "only a webhook subscription has a url")]
    assert SubscriptionCreate(channel="email", emails=["a@example.com"]).kinds == list(KINDS)


def test_kinds_are_known_distinct_and_in_a_fixed_order() -> None:
    sub = SubscriptionCreate(channel="email", emails=["a@example.com"], kinds=["recovered", "stuck", "stuck"])
    assert sub.kinds == ["stuck", "recovered"]
    with pytest.raises(ValidationError):
        SubscriptionCreate(channel="email", emails=["a@example.com"], kinds=["everything"])
    with pytest.raises(ValidationError):
        SubscriptionCreate(channel="email", emails=["a@example.com"], kinds=[])


@pytest.mark.parametrize("address", ["not-an-address", "a@b", "x@example.com\r\nBcc: y@example.com",
                                     "<x@example.com>", "x y@example.com", "x@-example.com", "a" * 65 + "@x.com"])
def test_email_addresses_are_checked(address: str) -> None:
    with pytest.raises(ValidationError):
        SubscriptionCreate(channel="email", emails=[address])


def test_email_domains_are_lowercased_and_addresses_deduplicated() -> None:
    sub = SubscriptionCreate(channel="email", emails=["Finance@Example.COM", "Finance@example.com"])
    assert sub.emails == ["Finance@example.com"]


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValidationError):
        SubscriptionPatch.model_validate({"secret": "whsec_mine"})


# --- settings -----------------------------------------------------------------------------------------------

BASE = {"database_url": "postgresql://u:p@h/db", "kafka_bootstrap": "k:9092", "admin_token": "a" * 32}


def test_outside_development_the_secrets_key_is_required() -> None:
    with pytest.raises(ValidationError, match="FAPIAO_SECRETS_KEY"):
        NotifierSettings(**BASE, env="production")
    with pytest.raises(ValidationError, match="FAPIAO_SECRETS_KEY"):
        NotifierSettings(**BASE, env="production", secrets_key="short")
    NotifierSettings(**BASE, env="production", secrets_key="s" * 32)
    NotifierSettings(**BASE, env="development")


def test_settings_refuse_bad_ranges_and_two_tls_modes() -> None:
    with pytest.raises(ValidationError, match="not an address range"):
        NotifierSettings(**BASE, webhook_allow_private="everything")
    with pytest.raises(ValidationError, match="exclude each other"):
        NotifierSettings(**BASE, smtp_tls=True, smtp_starttls=True)
    assert NotifierSettings(**BASE, digest_window="2m", remind_after="4h").digest_window == 120
