"""My Number (個人番号) check digit, per the ordinance implementing the My Number Act.

For a 12-digit number take the first 11 digits P(11)..P(1), where P(1) is the 11th
digit (rightmost of the eleven).  Weights: Q(n) = n + 1 for n = 1..6, Q(n) = n - 5 for
n = 7..11.  r = sum(P(n) * Q(n)) mod 11; the check digit is 0 if r <= 1, else 11 - r.

Pure functions; no My Number is ever logged or stored by this module.
"""

from __future__ import annotations

from operator import mul

__all__ = ["check_digit", "is_valid_mynumber"]

# Q(n) for the characters first11[0] .. first11[10], i.e. n = 11 .. 1 (P(1) is the
# rightmost of the eleven).
_WEIGHTS = tuple(n + 1 if n <= 6 else n - 5 for n in range(11, 0, -1))
_ZERO_SUM = ord("0") * sum(_WEIGHTS)


def _is_ascii_digits(text: str, length: int) -> bool:
    # str.isdigit() alone accepts full-width and other Unicode digits; only ASCII is
    # valid here (and the only ASCII characters isdigit() accepts are 0-9).
    return len(text) == length and text.isascii() and text.isdigit()


def check_digit(first11: str) -> int:
    """Check digit for the first 11 digits.  Raises ValueError unless 11 ASCII digits."""
    if not _is_ascii_digits(first11, 11):
        raise ValueError("expected exactly 11 ASCII digits")
    # sum(P(n) * Q(n)), with P = code point - ord("0"); map/mul keep it in C (the number
    # check runs it for every candidate cell of a big spreadsheet).
    r = (sum(map(mul, first11.encode("ascii"), _WEIGHTS)) - _ZERO_SUM) % 11
    return 0 if r <= 1 else 11 - r


def is_valid_mynumber(number: str) -> bool:
    """True iff ``number`` is 12 ASCII digits with a correct check digit.  Never raises."""
    if not isinstance(number, str) or not _is_ascii_digits(number, 12):
        return False
    raw = number.encode("ascii")
    r = (sum(map(mul, raw[:11], _WEIGHTS)) - _ZERO_SUM) % 11
    return (0 if r <= 1 else 11 - r) == raw[11] - 48
