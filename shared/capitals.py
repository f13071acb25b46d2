"""An amount in Chinese capital numerals (大写金额), as invoices and cheques write it: 贰佰贰拾陆圆整,
壹万零壹圆伍角, 负壹佰圆整 for a red (negative) invoice."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

__all__ = ["in_capitals"]

_DIGITS = "零壹贰叁肆伍陆柒捌玖"
_SMALL = ("", "拾", "佰", "仟")
_BIG = ("", "万", "亿", "万亿")


def _group(n: int) -> str:
    """0..9999 in capitals, with 零 for inner zeros (1001 -> 壹仟零壹)."""
    out, zero = "", False
    for pos in range(3, -1, -1):
        d = n // 10**pos % 10
        if d == 0:
            zero = bool(out)
            continue
        if zero:
            out += "零"
            zero = False
        out += _DIGITS[d] + _SMALL[pos]
    return out


def in_capitals(amount: Decimal) -> str:
    cents = int((abs(amount) * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    yuan, jiao, fen = cents // 100, cents // 10 % 10, cents % 10
    if yuan >= 10**16:
        raise ValueError("too large for capitals")
    words = ""
    groups = [yuan // 10**(4 * i) % 10**4 for i in range(4)]
    need_zero = False
    for i in range(3, -1, -1):
        g = groups[i]
        if g == 0:
            need_zero = bool(words)
            continue
        if words and (need_zero or g < 1000):
            words += "零"
        words += _group(g) + _BIG[i]
        need_zero = False
    if words:
        words += "圆"
    if jiao == 0 and fen == 0:
        words = (words or "零圆") + "整"
    else:
        if jiao:
            words += _DIGITS[jiao] + "角"
        elif words:
            words += "零"
        if fen:
            words += _DIGITS[fen] + "分"
    return ("负" if amount < 0 and cents else "") + words
