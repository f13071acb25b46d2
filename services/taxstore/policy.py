"""The authority's policy for an invoice's life after issue, kept pure (no I/O, no clock) like faults.py:
how long a red-letter form waits for confirmation, whether the buyer has "used" an invoice (so the
counterparty must confirm a form), and which invoices are held for cross-region review and how the
bureau decides them when nobody does.

The random decisions are coins per invoice, not draws from a generator: a coin is a hash of the seed, what
is decided and the invoice's seller and number. The same invoice always gets the same answer, however
often and in whatever order it is asked (a retried request cannot change it), and the fault generator's
draws are left alone (faults.py promises a fixed number of draws per request).

Like the faults, the policy lives in memory per process: settings give its start values, PUT /admin/policy
changes it until the next restart.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, replace
from datetime import timedelta
from decimal import Decimal
from typing import Any

__all__ = ["Policy", "ReviewPlan", "coin", "cross_region", "province", "review_plan"]


@dataclass(frozen=True)
class Policy:
    """The knobs. Field names are the ones GET/PUT /admin/policy speak."""

    confirm_window_s: float = 72 * 3600
    used_rate: float = 0.5
    review_threshold: Decimal | None = None  # None: nothing is held
    review_delay_s: float = 86_400
    review_denial_rate: float = 0.1
    decision_seed: int = 0

    @classmethod
    def from_settings(cls, settings: Any) -> Policy:
        return cls(confirm_window_s=settings.red_letter_confirm_window, used_rate=settings.red_letter_used_rate,
                   review_threshold=settings.review_threshold, review_delay_s=settings.review_delay,
                   review_denial_rate=settings.review_denial_rate, decision_seed=settings.decision_seed)

    def update(self, **changes: Any) -> Policy:
        if "review_threshold" in changes and changes["review_threshold"] is not None:
            changes["review_threshold"] = Decimal(changes["review_threshold"])
        return replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["review_threshold"] = None if self.review_threshold is None else f"{self.review_threshold:.2f}"
        return out

    @property
    def confirm_window(self) -> timedelta:
        return timedelta(seconds=self.confirm_window_s)

    def buyer_has_used(self, seller_tax_id: str, number: str) -> bool:
        """Whether the buyer has used (deducted, booked) this invoice: then a form on it needs confirming."""
        return coin(self.decision_seed, "used", seller_tax_id, number) < self.used_rate


def coin(seed: int, what: str, *key: str) -> float:
    """A number in [0, 1) fixed by the seed, the decision and the key."""
    digest = hashlib.sha256("\x1f".join((str(seed), what, *key)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def province(uscc: str | None) -> str | None:
    """The province of a USCC's registration: the first two of its administrative-division digits (3-8)."""
    if not uscc or len(uscc) != 18 or not uscc[2:4].isdigit():
        return None
    return uscc[2:4]


def cross_region(seller_tax_id: str, buyer_tax_id: str | None) -> bool:
    """Seller and buyer registered in different provinces (a buyer without a USCC is not a region)."""
    seller, buyer = province(seller_tax_id), province(buyer_tax_id)
    return seller is not None and buyer is not None and seller != buyer


@dataclass(frozen=True)
class ReviewPlan:
    due_in: timedelta  # when the bureau decides on its own
    auto_outcome: str  # approved | denied


def review_plan(policy: Policy, *, seller_tax_id: str, buyer_tax_id: str | None, number: str, kind: str,
                total: Decimal) -> ReviewPlan | None:
    """Whether a newly stored invoice is held for cross-region review, and what the bureau will decide."""
    if policy.review_threshold is None or kind != "blue" or total <= policy.review_threshold:
        return None
    if not cross_region(seller_tax_id, buyer_tax_id):
        return None
    denied = coin(policy.decision_seed, "deny", seller_tax_id, number) < policy.review_denial_rate
    return ReviewPlan(timedelta(seconds=policy.review_delay_s), "denied" if denied else "approved")
