"""Per-tenant limits on the public API, so that one tenant cannot take the issuer from the others.

Each tenant has three token buckets, one per budget, and a cap on its requests in flight:

- `read`: GET requests, one token each;
- `write`: POST/PUT/PATCH/DELETE of one resource, one token each;
- `import`: POST /v1/invoices/batch and /v1/invoices/import, one token per invoice (a batch's items; a CSV
  file's lines after the header), because a batch of 1,000 costs the issuer about 1,000 single requests.

A bucket holds at most `burst` tokens and gains `rate` per second. A request heavier than the burst (a batch
larger than the whole bucket) is let through once the bucket is full, and empties it. Buckets live in this
process: with N issuer replicas behind a balancer a tenant gets up to N times each limit.

The bookkeeping here has no I/O and takes the clock as an argument (`now`, monotonic seconds); the issuer's
admission dependency (api/deps.py) asks it once per request and AdmissionMiddleware puts the RateLimit header
fields on the answer and frees the slot once the answer is sent.

A request that is sure to be refused is refused early, by AdmissionMiddleware itself: a tenant known to this
process (its key in the issuer's KeyCache) with all its slots taken, or with an empty read/write bucket, hears
the same 429 before routing, body parsing and the dependencies run. A flood is then mostly answered at the
cost of reading its headers, and the event loop stays free for the other tenants' requests.

A tenant that sends again within a second of being refused is not honouring Retry-After (always ≥ 1 s). Its
next early refusals are held for up to HOLD seconds before they are answered (at most HOLD_MAX_PER_TENANT of a
tenant's, HOLD_MAX_TOTAL in all, at a time; beyond that they are answered at once). Holding costs a sleeping
coroutine, no CPU, and a client that keeps N requests in flight then gets N/HOLD answers a second instead of as
many as the event loop can produce: refusals no longer become load. A client that honours Retry-After is never
held: it waits longer than the hold anyway.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.errors import TooManyRequests
from shared.http import domain_problem
from shared.metrics import RATE_LIMITED

__all__ = ["BUDGETS", "Admission", "AdmissionMiddleware", "Budget", "Decision", "Policy", "TenantLimits",
           "budget_of", "refusal"]

Budget = Literal["read", "write", "import"]
BUDGETS: tuple[Budget, ...] = ("read", "write", "import")
IMPORT_ROUTES = frozenset({"/v1/invoices/batch", "/v1/invoices/import"})


def budget_of(method: str, route: str) -> Budget:
    """Which budget a request spends, by its method and route template."""
    if method in ("GET", "HEAD"):
        return "read"
    if method == "POST" and route in IMPORT_ROUTES:
        return "import"
    return "write"


@dataclass(frozen=True)
class Policy:
    burst: int  # the bucket's size: what a tenant may spend at once
    rate: float  # tokens gained per second

    @property
    def window(self) -> int:
        """Seconds an empty bucket takes to fill: the `w` of RateLimit-Policy."""
        return max(1, math.ceil(self.burst / self.rate))


@dataclass
class _Bucket:
    tokens: float
    at: float

    def refill(self, policy: Policy, now: float) -> None:
        self.tokens = min(float(policy.burst), self.tokens + max(0.0, now - self.at) * policy.rate)
        self.at = now


@dataclass(frozen=True)
class Decision:
    """One request's admission: allowed or why not, and the bucket as the answer's headers show it."""

    budget: Budget
    refused: Literal["rate", "concurrency"] | None
    policy: Policy
    remaining: int  # whole tokens left after this request
    reset: int  # seconds until the bucket is full again
    retry_after: int  # seconds until this request would pass (0 when it did)
    concurrency: int  # the cap on requests in flight
    hold: float = 0.0  # seconds to wait before answering this refusal (a client ignoring Retry-After)

    @property
    def allowed(self) -> bool:
        return self.refused is None

    def headers(self) -> list[tuple[bytes, bytes]]:
        """draft-ietf-httpapi-ratelimit-headers-06: RateLimit-Limit, -Remaining, -Reset and -Policy."""
        p = self.policy
        return [(b"ratelimit-limit", str(p.burst).encode()),
                (b"ratelimit-remaining", str(self.remaining).encode()),
                (b"ratelimit-reset", str(self.reset).encode()),
                (b"ratelimit-policy", f'{p.burst};w={p.window};comment="{self.budget}"'.encode())]


HOLD = 0.5  # seconds a repeated early refusal waits before it is answered
HOLD_AFTER = 1.0  # a refusal this soon after the tenant's previous one is a repeat (Retry-After is ≥ 1 s)
HOLD_MAX_PER_TENANT = 64  # refusals of one tenant held at a time; more are answered at once
HOLD_MAX_TOTAL = 1024  # and of all tenants


@dataclass
class _Tenant:
    buckets: dict[Budget, _Bucket] = field(default_factory=dict)
    in_flight: int = 0
    refused_at: float = -1e9  # monotonic time of the latest refusal
    held: int = 0  # refusals being held right now


class TenantLimits:
    """The buckets and in-flight counts of every tenant that has called this process."""

    def __init__(self, policies: dict[Budget, Policy], *, concurrency: int) -> None:
        self.policies = policies
        self.concurrency = concurrency
        self._tenants: dict[uuid.UUID, _Tenant] = {}
        self._held = 0

    def admit(self, tenant_id: uuid.UUID, budget: Budget, *, weight: int, now: float) -> Decision:
        """Take `weight` tokens and a slot, or refuse (taking nothing): too many in flight first, then the
        bucket. A refusal costs the tenant nothing, so a client that honours Retry-After is not punished."""
        policy = self.policies[budget]
        tenant = self._tenants.setdefault(tenant_id, _Tenant())
        bucket = tenant.buckets.get(budget)
        if bucket is None:
            bucket = tenant.buckets[budget] = _Bucket(float(policy.burst), now)
        bucket.refill(policy, now)
        need = float(min(max(weight, 1), policy.burst))
        refused: Literal["rate", "concurrency"] | None = None
        retry_after = 0
        if tenant.in_flight >= self.concurrency:
            refused, retry_after = "concurrency", 1
        elif bucket.tokens + 1e-9 < need:
            refused, retry_after = "rate", max(1, math.ceil((need - bucket.tokens) / policy.rate))
        else:
            bucket.tokens -= need
            tenant.in_flight += 1
        if refused is not None:
            tenant.refused_at = now
        return Decision(budget=budget, refused=refused, policy=policy, remaining=max(0, math.floor(bucket.tokens)),
                        reset=math.ceil((policy.burst - bucket.tokens) / policy.rate), retry_after=retry_after,
                        concurrency=self.concurrency)

    def sure_refusal(self, tenant_id: uuid.UUID, budget: Budget, *, now: float) -> Decision | None:
        """The refusal `admit` would give a request of this tenant whatever its weight, or None when it might
        pass: all slots taken, or (read and write, which weigh one) not one token left. Takes nothing."""
        tenant = self._tenants.get(tenant_id)
        if tenant is None:
            return None
        if tenant.in_flight < self.concurrency:
            bucket = tenant.buckets.get(budget)
            if budget == "import" or bucket is None:
                return None
            bucket.refill(self.policies[budget], now)
            if bucket.tokens + 1e-9 >= 1:
                return None
        repeat = now - tenant.refused_at < HOLD_AFTER
        decision = self.admit(tenant_id, budget, weight=1, now=now)
        if repeat and tenant.held < HOLD_MAX_PER_TENANT and self._held < HOLD_MAX_TOTAL:
            decision = Decision(**{**decision.__dict__, "hold": HOLD})
        return decision

    async def hold(self, tenant_id: uuid.UUID, decision: Decision) -> None:
        """Wait out a refusal's hold, counted against the caps while it waits."""
        tenant = self._tenants.setdefault(tenant_id, _Tenant())
        tenant.held += 1
        self._held += 1
        try:
            await asyncio.sleep(decision.hold)
        finally:
            tenant.held -= 1
            self._held -= 1

    def release(self, tenant_id: uuid.UUID) -> None:
        """The request admitted for this tenant has been answered."""
        tenant = self._tenants.get(tenant_id)
        if tenant is None:
            return
        tenant.in_flight = max(0, tenant.in_flight - 1)

    def forget_idle(self, *, now: float) -> int:
        """Drop tenants whose buckets are full again and who have nothing in flight (a fresh entry is the same
        state), so the table holds recent callers only; how many were dropped."""
        idle = []
        for tenant_id, tenant in self._tenants.items():
            if tenant.in_flight or tenant.held:
                continue
            for budget, bucket in tenant.buckets.items():
                bucket.refill(self.policies[budget], now)
            if all(b.tokens >= self.policies[k].burst for k, b in tenant.buckets.items()):
                idle.append(tenant_id)
        for tenant_id in idle:
            del self._tenants[tenant_id]
        return len(idle)

    def in_flight(self, tenant_id: uuid.UUID) -> int:
        tenant = self._tenants.get(tenant_id)
        return tenant.in_flight if tenant is not None else 0


def refusal(d: Decision) -> TooManyRequests:
    """The problem a refused request hears."""
    if d.refused == "concurrency":
        return TooManyRequests(
            f"this tenant has {d.concurrency} requests in flight, the most it may have at once; retry when one "
            "has been answered", retry_after=d.retry_after, code="too_many_concurrent",
            extra={"budget": d.budget, "limit": d.concurrency, "retry_after_seconds": d.retry_after})
    return TooManyRequests(
        f"the {d.budget} budget of this tenant is spent ({d.policy.burst} at once, {d.policy.rate:g} per second); "
        f"retry after {d.retry_after}s", retry_after=d.retry_after, code="rate_limited",
        extra={"budget": d.budget, "limit": d.policy.burst, "rate_per_second": d.policy.rate,
               "retry_after_seconds": d.retry_after})


def _bearer(scope: Scope) -> str | None:
    """The credentials of an `Authorization: Bearer …` header, as HTTPBearer reads them."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, credentials = value.decode("latin-1").partition(" ")
            return credentials.strip() or None if scheme.lower() == "bearer" else None
    return None


@dataclass
class Admission:
    """What the admission dependency decided for this request, for AdmissionMiddleware to finish."""

    limits: TenantLimits
    tenant_id: uuid.UUID
    decision: Decision


STATE_KEY = "admission"


class AdmissionMiddleware:
    """Puts the admitted request's RateLimit header fields on its answer (a 429 too) and gives its slot back once
    the answer has been sent, whatever happened in between. The decision itself is the dependency's: only it
    knows the tenant."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})  # request.state is this dict: the dependency writes into it

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                admission = state.get(STATE_KEY)
                if isinstance(admission, Admission):
                    message["headers"] = [*message.get("headers", []), *admission.decision.headers()]
            await send(message)

        if (early := self._sure_refusal(scope)) is not None:
            state[STATE_KEY] = early
            RATE_LIMITED.labels("issuer", early.decision.budget, early.decision.refused).inc()
            if early.decision.hold:
                await early.limits.hold(early.tenant_id, early.decision)
            await domain_problem(refusal(early.decision))(scope, receive, send_with_headers)
            return
        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            admission = state.get(STATE_KEY)
            if isinstance(admission, Admission) and admission.decision.allowed:
                admission.limits.release(admission.tenant_id)

    @staticmethod
    def _sure_refusal(scope: Scope) -> Admission | None:
        """A refusal decided from the headers alone (see the module's docstring), or None: let the app decide."""
        app: Any = scope.get("app")
        limits: TenantLimits | None = getattr(getattr(app, "state", None), "limits", None)
        path: str = scope.get("path", "")
        if limits is None or not path.startswith("/v1/") or (key := _bearer(scope)) is None:
            return None
        now = time.monotonic()
        tenant = app.state.keys.get(key, now=now)  # only a key this process checked recently: 401 stays first
        if tenant is None:
            return None
        decision = limits.sure_refusal(tenant.id, budget_of(scope.get("method", "GET"), path), now=now)
        return None if decision is None else Admission(limits, tenant.id, decision)
