"""The tax store's policy decisions (services/taxstore/policy.py): which invoices are cross-region, which are
held for review and how the bureau would decide them, and whether a buyer has used an invoice. Pure functions:
no database, no clock."""

from __future__ import annotations

from decimal import Decimal

import pytest

from services.taxstore.policy import Policy, coin, cross_region, province, review_plan
from shared.uscc import check_char


def _uscc(province_digits: str) -> str:
    body = "91" + province_digits + "0300708461136"[:13]
    return body + check_char(body)


def test_the_province_is_the_first_two_division_digits() -> None:
    assert province("91440300708461136T") == "44"
    assert province(_uscc("11")) == "11"
    assert province(None) is None and province("") is None and province("91AB0300708461136T") is None


@pytest.mark.parametrize(("seller", "buyer", "expected"), [
    ("11", "44", True), ("44", "44", False), ("31", None, False)])
def test_cross_region_needs_two_provinces(seller: str, buyer: str | None, expected: bool) -> None:
    assert cross_region(_uscc(seller), _uscc(buyer) if buyer else None) is expected


def test_coins_are_fixed_by_seed_decision_and_key_and_spread_evenly() -> None:
    assert coin(1, "deny", "a", "b") == coin(1, "deny", "a", "b")
    assert coin(1, "deny", "a", "b") != coin(2, "deny", "a", "b") != coin(1, "used", "a", "b")
    draws = [coin(7, "used", "s", f"{i:020d}") for i in range(4000)]
    assert all(0 <= d < 1 for d in draws)
    assert 0.45 < sum(d < 0.5 for d in draws) / len(draws) < 0.55


def test_review_holds_cross_region_blue_invoices_above_the_threshold_only() -> None:
    far, near, buyer = _uscc("11"), _uscc("44"), "91440300708461136T"
    off = Policy()
    on = Policy(review_threshold=Decimal("1000.00"), review_delay_s=60, review_denial_rate=0.0)
    args = {"number": "26000000000000000001", "kind": "blue"}
    assert review_plan(off, seller_tax_id=far, buyer_tax_id=buyer, total=Decimal("5000"), **args) is None
    assert review_plan(on, seller_tax_id=near, buyer_tax_id=buyer, total=Decimal("5000"), **args) is None
    assert review_plan(on, seller_tax_id=far, buyer_tax_id=buyer, total=Decimal("1000.00"), **args) is None
    assert review_plan(on, seller_tax_id=far, buyer_tax_id=buyer, total=Decimal("-5000"),
                       number=args["number"], kind="red") is None
    plan = review_plan(on, seller_tax_id=far, buyer_tax_id=buyer, total=Decimal("1000.01"), **args)
    assert plan is not None and plan.auto_outcome == "approved" and plan.due_in.total_seconds() == 60
    denying = on.update(review_denial_rate=1.0)
    plan = review_plan(denying, seller_tax_id=far, buyer_tax_id=buyer, total=Decimal("1000.01"), **args)
    assert plan is not None and plan.auto_outcome == "denied"


def test_has_used_follows_the_rate_and_the_policy_speaks_json() -> None:
    assert not Policy(used_rate=0.0).buyer_has_used("s", "n")
    assert Policy(used_rate=1.0).buyer_has_used("s", "n")
    p = Policy().update(review_threshold="12.50", used_rate=0.25)
    assert p.review_threshold == Decimal("12.50")
    assert p.as_dict() == {"confirm_window_s": 259200, "used_rate": 0.25, "review_threshold": "12.50",
                           "review_delay_s": 86400, "review_denial_rate": 0.1, "decision_seed": 0}
