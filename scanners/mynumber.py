"""My Number (個人番号) check digit, per the ordinance implementing the My Number Act.

For a 12-digit number take the first 11 digits P(11)..P(1), where P(1) is the 11th
digit (rightmost of the eleven).  Weights: Q(n) = n + 1 for n = 1..6, Q(n) = n - 5 for
n = 7..11.  r = sum(P(n) * Q(n)) mod 11; the check digit is 0 if r <= 1, else 11 - r.

Pure functions; no My Number is ever logged or stored by this module.
"""

from __future__ import annotations

__all__ = ["check_digit", "is_valid_mynumber"]

_DIGITS = frozenset("0123456789")


def _is_ascii_digits(text: str, length: int) -> bool:
    # str.isdigit() accepts full-width and other Unicode digits; only ASCII is valid here.
    return len(text) == length and all(ch in _DIGITS for ch in text)


def check_digit(first11: str) -> int:
    """Check digit for the first 11 digits.  Raises ValueError unless 11 ASCII digits."""
    if not _is_ascii_digits(first11, 11):
        raise ValueError("expected exactly 11 ASCII digits")
    total = 0
    for n in range(1, 12):
        p = int(first11[11 - n])  # P(1) is the rightmost of the eleven
        q = n + 1 if n <= 6 else n - 5
        total += p * q
    r = total % 11
    return 0 if r <= 1 else 11 - r


def is_valid_mynumber(number: str) -> bool:
    """True iff ``number`` is 12 ASCII digits with a correct check digit.  Never raises."""
    if not isinstance(number, str) or not _is_ascii_digits(number, 12):
        return False
    return check_digit(number[:11]) == int(number[11])
