"""Amounts in Chinese capitals (大写), as an invoice writes its total."""

from __future__ import annotations

from decimal import Decimal

import pytest

from shared.capitals import in_capitals


@pytest.mark.parametrize(("amount", "words"), [
    ("226.00", "贰佰贰拾陆圆整"), ("0.00", "零圆整"), ("0.05", "伍分"), ("0.50", "伍角"),
    ("10001.50", "壹万零壹圆伍角"), ("1010.10", "壹仟零壹拾圆壹角"), ("20000.02", "贰万圆零贰分"),
    ("105000.00", "壹拾万伍仟圆整"), ("100000000.00", "壹亿圆整"), ("100010000.00", "壹亿零壹万圆整"),
    ("1234567.89", "壹佰贰拾叁万肆仟伍佰陆拾柒圆捌角玖分"), ("100.20", "壹佰圆贰角"), ("-100.00", "负壹佰圆整"),
])
def test_amounts_in_capitals(amount: str, words: str) -> None:
    assert in_capitals(Decimal(amount)) == words
