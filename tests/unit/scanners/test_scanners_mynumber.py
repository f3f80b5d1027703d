"""My Number check digit, compared against a literal reading of the rule."""

from __future__ import annotations

import random

import pytest

from scanners.mynumber import check_digit, is_valid_mynumber


def reference_check_digit(first11: str) -> int:
    """Literal transcription: P(n) is the n-th digit counted from the right of the 11."""
    digits = [int(c) for c in first11]
    total = 0
    for n in range(1, 12):
        p_n = digits[len(digits) - n]
        q_n = n + 1 if 1 <= n <= 6 else n - 5
        total += p_n * q_n
    r = total % 11
    return 0 if r <= 1 else 11 - r


def test_matches_reference_on_random_prefixes() -> None:
    rng = random.Random(20240101)
    for _ in range(5000):
        prefix = "".join(rng.choice("0123456789") for _ in range(11))
        digit = reference_check_digit(prefix)
        assert check_digit(prefix) == digit
        assert is_valid_mynumber(prefix + str(digit))
        wrong = (digit + rng.randrange(1, 10)) % 10
        assert not is_valid_mynumber(prefix + str(wrong))


@pytest.mark.parametrize(
    ("first11", "digit"),
    [
        # P(1..11) = 1,0,9,8,7,6,5,4,3,2,1; Q = 2,3,4,5,6,7,2,3,4,5,6; sum 212, r = 3
        ("12345678901", 8),
        ("00000000000", 0),
        ("00000000001", 9),  # P(1)=1, Q(1)=2 -> r = 2
        ("10000000000", 5),  # P(11)=1, Q(11)=6 -> r = 6
        ("00000100000", 4),  # P(6)=1, Q(6)=7 -> r = 7
        ("20000000000", 0),  # P(11)=2, Q(11)=6 -> r = 1 -> 0
    ],
)
def test_known_values(first11: str, digit: int) -> None:
    assert reference_check_digit(first11) == digit
    assert check_digit(first11) == digit


def test_known_valid_number() -> None:
    assert reference_check_digit("12345678901") == 8
    assert is_valid_mynumber("123456789018")
    assert not is_valid_mynumber("123456789017")


@pytest.mark.parametrize(
    "value",
    [
        "",
        "12345678901",
        "1234567890180",
        "12345678901a",
        "１２３４５６７８９０１８",
        "123456789018\n",
        " 123456789018",
        "1234-5678-9018",
        "١٢٣٤٥٦٧٨٩٠١٨",
    ],
)
def test_invalid_inputs(value: str) -> None:
    assert is_valid_mynumber(value) is False


@pytest.mark.parametrize(
    "value", ["", "1234567890", "123456789012", "1234567890a", "１２３４５６７８９０１"]
)
def test_check_digit_rejects_bad_input(value: str) -> None:
    with pytest.raises(ValueError):
        check_digit(value)


def test_non_string_is_invalid() -> None:
    assert is_valid_mynumber(123456789018) is False  # type: ignore[arg-type]
