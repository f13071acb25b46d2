"""The per-tenant bookkeeping (services/issuer/limits.py): token buckets, the in-flight cap and the header fields,
with the clock passed in."""

from __future__ import annotations

import asyncio
import uuid

from services.issuer import limits as limits_mod
from services.issuer.limits import Policy, TenantLimits, budget_of

A, B = uuid.uuid4(), uuid.uuid4()


def limits(concurrency: int = 100) -> TenantLimits:
    return TenantLimits({"read": Policy(5, 1.0), "write": Policy(2, 0.5), "import": Policy(100, 50.0)},
                        concurrency=concurrency)


def test_requests_are_counted_in_the_budget_of_their_kind() -> None:
    assert budget_of("GET", "/v1/invoices") == "read"
    assert budget_of("POST", "/v1/invoices") == "write"
    assert budget_of("DELETE", "/v1/subscriptions/{subscription_id}") == "write"
    assert budget_of("POST", "/v1/invoices/batch") == "import"
    assert budget_of("POST", "/v1/invoices/import") == "import"


def test_a_spent_bucket_refuses_until_it_has_refilled_and_a_refusal_costs_nothing() -> None:
    lim = limits()
    for i in range(5):
        d = lim.admit(A, "read", weight=1, now=0.0)
        assert d.allowed and d.remaining == 4 - i
        lim.release(A)
    refused = lim.admit(A, "read", weight=1, now=0.0)
    assert refused.refused == "rate" and refused.retry_after == 1 and refused.remaining == 0 and refused.reset == 5
    assert lim.admit(A, "read", weight=1, now=0.5).refused == "rate"  # the refusal took nothing: half a token
    assert lim.admit(A, "read", weight=1, now=1.0).allowed


def test_budgets_and_tenants_are_independent() -> None:
    lim = limits()
    for _ in range(2):
        assert lim.admit(A, "write", weight=1, now=0.0).allowed
    assert lim.admit(A, "write", weight=1, now=0.0).refused == "rate"
    assert lim.admit(A, "read", weight=1, now=0.0).allowed, "writes spent, reads are not"
    assert lim.admit(B, "write", weight=1, now=0.0).allowed, "one tenant's writes are not another's"


def test_an_import_weighs_its_invoices_and_one_larger_than_the_burst_waits_for_a_full_bucket() -> None:
    lim = limits()
    assert lim.admit(A, "import", weight=60, now=0.0).remaining == 40
    refused = lim.admit(A, "import", weight=60, now=0.0)
    assert refused.refused == "rate" and refused.retry_after == 1  # 20 more tokens at 50/s: 0.4 s, said as 1 s
    assert lim.admit(A, "import", weight=5000, now=0.5).refused == "rate"  # 65 of 100
    whole = lim.admit(A, "import", weight=5000, now=10.0)
    assert whole.allowed and whole.remaining == 0


def test_the_in_flight_cap_refuses_without_spending_and_frees_a_slot_per_answer() -> None:
    lim = limits(concurrency=2)
    assert lim.admit(A, "read", weight=1, now=0.0).allowed
    assert lim.admit(A, "read", weight=1, now=0.0).allowed
    busy = lim.admit(A, "read", weight=1, now=0.0)
    assert busy.refused == "concurrency" and busy.retry_after == 1 and busy.remaining == 3
    assert lim.admit(B, "read", weight=1, now=0.0).allowed, "another tenant's slots are its own"
    lim.release(A)
    assert lim.in_flight(A) == 1
    assert lim.admit(A, "write", weight=1, now=0.0).allowed, "the cap is one for all of a tenant's budgets"
    assert lim.admit(A, "read", weight=1, now=0.0).refused == "concurrency"


def test_the_answer_carries_the_ratelimit_fields_of_draft_06() -> None:
    lim = limits()
    d = lim.admit(A, "write", weight=1, now=0.0)
    assert dict(d.headers()) == {b"ratelimit-limit": b"2", b"ratelimit-remaining": b"1", b"ratelimit-reset": b"2",
                                 b"ratelimit-policy": b'2;w=4;comment="write"'}


def test_idle_tenants_are_forgotten_once_their_buckets_are_full() -> None:
    lim = limits()
    lim.admit(A, "read", weight=1, now=0.0)
    lim.release(A)
    lim.admit(B, "read", weight=1, now=0.0)  # still in flight
    assert lim.forget_idle(now=0.5) == 0
    assert lim.forget_idle(now=2.0) == 1
    assert lim.in_flight(B) == 1


def test_a_checked_key_is_trusted_for_the_cache_time_only() -> None:
    from services.issuer.tenants import KeyCache, Tenant

    tenant = Tenant(A, "T", "91110000000000000X")
    keys = KeyCache(1.0, size=2)
    keys.put("fsk_a", tenant, now=0.0)
    assert keys.get("fsk_a", now=0.9) == tenant and keys.get("fsk_b", now=0.0) is None
    assert keys.get("fsk_a", now=1.0) is None, "past the time the database is asked again"
    off = KeyCache(0.0)
    off.put("fsk_a", tenant, now=0.0)
    assert off.get("fsk_a", now=0.0) is None


def test_a_sure_refusal_is_the_one_admit_gives_and_a_request_that_may_pass_is_left_to_admit() -> None:
    lim = limits(concurrency=2)
    assert lim.sure_refusal(A, "read", now=0.0) is None  # a tenant not seen yet: admit decides
    for _ in range(5):
        assert lim.admit(A, "read", weight=1, now=0.0).allowed
        lim.release(A)
    early = lim.sure_refusal(A, "read", now=0.0)
    assert early is not None and early.refused == "rate" and early.retry_after == 1
    assert lim.sure_refusal(A, "read", now=1.0) is None  # a token came back: it may pass
    assert lim.admit(A, "read", weight=1, now=1.0).allowed  # and the peek took nothing
    lim.release(A)
    # All slots taken: refused whatever the budget, an import too (its weight does not matter then).
    assert lim.admit(A, "write", weight=1, now=1.0).allowed and lim.admit(A, "import", weight=3, now=1.0).allowed
    full = lim.sure_refusal(A, "import", now=1.0)
    assert full is not None and full.refused == "concurrency" and lim.in_flight(A) == 2
    lim.release(A)
    assert lim.sure_refusal(A, "import", now=1.0) is None  # an import's weight is read from its body
    assert lim.sure_refusal(B, "write", now=1.0) is None


async def test_a_tenant_that_ignores_retry_after_has_its_next_refusals_held_up_to_the_caps() -> None:
    lim = limits()
    for _ in range(5):
        assert lim.admit(A, "read", weight=1, now=0.0).allowed
        lim.release(A)
    first = lim.sure_refusal(A, "read", now=0.0)
    assert first is not None and first.refused == "rate" and first.hold == 0  # the first refusal: answered at once
    again = lim.sure_refusal(A, "read", now=0.5)  # within a second of it: Retry-After was not honoured
    assert again is not None and again.hold == limits_mod.HOLD
    later = lim.sure_refusal(A, "read", now=0.5 + limits_mod.HOLD_AFTER + 0.01)  # honoured (1 s later): not held
    assert later is None or later.hold == 0
    assert lim.sure_refusal(B, "read", now=0.5) is None  # another tenant is not touched
    # While refusals are held, the tenant is not forgotten, and no more than the cap are held at once.
    lim = limits()
    for _ in range(5):
        lim.admit(A, "read", weight=1, now=0.0)
        lim.release(A)
    lim.sure_refusal(A, "read", now=0.0)
    held = []
    for _ in range(limits_mod.HOLD_MAX_PER_TENANT):
        d = lim.sure_refusal(A, "read", now=0.1)
        assert d is not None and d.hold > 0
        held.append(asyncio.create_task(lim.hold(A, d)))
    await asyncio.sleep(0)
    over = lim.sure_refusal(A, "read", now=0.1)
    assert over is not None and over.hold == 0, "beyond the cap a refusal is answered at once"
    assert lim.forget_idle(now=1000.0) == 0, "a tenant with refusals held is kept"
    t0 = asyncio.get_running_loop().time()
    await asyncio.gather(*held)
    assert asyncio.get_running_loop().time() - t0 >= limits_mod.HOLD * 0.9
    assert lim.sure_refusal(A, "read", now=0.2).hold > 0  # the slots are free again


async def test_a_key_not_known_is_looked_up_once_for_all_its_requests_in_flight() -> None:
    from services.issuer.tenants import KeyCache, Tenant

    tenant = Tenant(A, "甲 Co.", "91310000MA1FL00000")
    calls: list[str] = []
    gate = asyncio.Event()

    async def load() -> Tenant | None:
        calls.append("load")
        await gate.wait()
        return tenant

    keys = KeyCache(1.0)
    now = [0.0]
    waiters = [asyncio.create_task(keys.resolve("fsk_a", load, lambda: now[0])) for _ in range(50)]
    await asyncio.sleep(0)
    waiters[0].cancel()  # one request gives up: the others' lookup goes on
    gate.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert calls == ["load"] and isinstance(results[0], asyncio.CancelledError)
    assert all(r == tenant for r in results[1:])
    assert await keys.resolve("fsk_a", load, lambda: now[0]) == tenant and calls == ["load"], "kept for the ttl"
    now[0] = 1.5
    assert await keys.resolve("fsk_a", load, lambda: now[0]) == tenant and len(calls) == 2, "looked up again after"

    # An unknown key is not kept, and a failed lookup reaches every request waiting for it and is not kept either.
    async def unknown() -> Tenant | None:
        calls.append("unknown")
        return None

    assert await keys.resolve("fsk_b", unknown, lambda: now[0]) is None
    assert await keys.resolve("fsk_b", unknown, lambda: now[0]) is None and calls.count("unknown") == 2

    async def broken() -> Tenant | None:
        await asyncio.sleep(0.01)
        raise ConnectionError("database down")

    failed = await asyncio.gather(*(keys.resolve("fsk_c", broken, lambda: now[0]) for _ in range(3)),
                                  return_exceptions=True)
    assert all(isinstance(f, ConnectionError) for f in failed)
    assert await keys.resolve("fsk_c", load, lambda: now[0]) == tenant
