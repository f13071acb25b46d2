"""GB 32100-2015 Unified Social Credit Code: check character and reasons for rejection."""

from __future__ import annotations

import pytest

from shared import uscc
from shared.uscc import ALPHABET, check_char, is_valid_uscc, uscc_error

REAL_CODES = [
    "914403001922038216",
    "91440300708461136T",
    "91330100716105852F",
    "91520000214434146R",
    "91110108558521630L",
    "91330100799655058B",
    "9144030071526726XG",
    "91110000802100433B",
]

DESIGN_WEIGHTS = [1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28]


def _design_check_char(first17: str) -> str:
    """Design §4 formula, written independently: CH[(31 - sum(idx(c_i) * W_i) mod 31) mod 31]."""
    total = sum(ALPHABET.index(c) * w for c, w in zip(first17, DESIGN_WEIGHTS, strict=True))
    return ALPHABET[(31 - total % 31) % 31]


def test_alphabet_is_the_31_allowed_characters() -> None:
    assert len(ALPHABET) == 31
    assert len(set(ALPHABET)) == 31
    for forbidden in "IOSVZ":
        assert forbidden not in ALPHABET
    assert ALPHABET[:10] == "0123456789"


def test_weights_are_powers_of_three_mod_31_as_the_design_lists() -> None:
    assert [pow(3, i, 31) for i in range(17)] == DESIGN_WEIGHTS
    assert uscc._WEIGHTS == DESIGN_WEIGHTS


@pytest.mark.parametrize("code", REAL_CODES)
def test_real_codes_are_valid(code: str) -> None:
    assert uscc_error(code) is None
    assert is_valid_uscc(code)
    assert check_char(code[:17]) == code[17]


@pytest.mark.parametrize("code", REAL_CODES)
def test_check_char_matches_the_design_formula(code: str) -> None:
    assert check_char(code[:17]) == _design_check_char(code[:17])


def test_check_char_of_all_zeros_and_a_letter_heavy_prefix() -> None:
    assert check_char("0" * 17) == "0"
    prefix = "9ABCDEFGHJKLMNPQR"
    assert check_char(prefix) == _design_check_char(prefix)


@pytest.mark.parametrize("code", REAL_CODES)
def test_every_other_check_char_is_rejected(code: str) -> None:
    for wrong in ALPHABET:
        if wrong == code[17]:
            continue
        reason = uscc_error(code[:17] + wrong)
        assert reason is not None
        assert "check character" in reason
        assert repr(code[17]) in reason  # names the expected character


def test_single_digit_typo_is_detected() -> None:
    code = "914403001922038216"
    typo = code[:5] + "9" + code[6:]  # 4 -> 9 at position 6
    assert typo != code
    assert uscc_error(typo) is not None
    assert not is_valid_uscc(typo)


@pytest.mark.parametrize("letter", list("IOSVZ"))
def test_forbidden_letters_are_rejected_with_a_reason(letter: str) -> None:
    code = "91440300708461136" + letter
    reason = uscc_error(code)
    assert reason is not None
    assert "not allowed" in reason
    assert letter in reason
    # and in the middle of a code as well
    middle = "9144030" + letter + "708461136T"
    assert len(middle) == 18
    reason = uscc_error(middle)
    assert reason is not None and letter in reason


@pytest.mark.parametrize("code", ["91440300708461136t", "9144030071526726xg"])
def test_lowercase_is_not_a_valid_uscc_by_itself(code: str) -> None:
    # The schema upper-cases tax ids before the rule runs; the raw check itself is strict.
    assert uscc_error(code) is not None
    assert uscc_error(code.upper()) is None


@pytest.mark.parametrize("code", ["", "9144030019220382", "91440300192203821", "9144030019220382160",
                                  "914403001922038216" * 2])
def test_wrong_length_is_rejected_with_the_length(code: str) -> None:
    reason = uscc_error(code)
    assert reason is not None
    assert "18 characters" in reason
    assert str(len(code)) in reason


def test_non_ascii_and_punctuation_are_rejected() -> None:
    for code in ["91440300-08461136T", "9144030070846113６T", "91440300708461136 "]:
        assert len(code) == 18
        assert uscc_error(code) is not None
