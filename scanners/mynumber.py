"""My Number (個人番号) check digit, per the ordinance implementing the My Number Act.

For a 12-digit number take the first 11 digits P(11)..P(1), where P(1) is the 11th
digit (rightmost of the eleven).  Weights: Q(n) = n + 1 for n = 1..6, Q(n) = n - 5 for
n = 7..11.  r = sum(P(n) * Q(n)) mod 11; the check digit is 0 if r <= 1, else 11 - r.

Pure functions; no My Number is ever logged or stored by this module.
"""

from __future__ import annotations

import re
from itertools import islice
from operator import mul
from typing import cast

__all__ = ["check_digit", "invalid_indexes", "is_valid_mynumber"]

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


# Per position k of the eleven: a bytes.translate table mapping the ASCII digit d to
# (d * Q) % 11 (at most 10, so eleven of them add up to at most 110: one byte, no carry).
_TABLES = tuple(
    bytes((((i - 48) * w) % 11 if 48 <= i <= 57 else 0) for i in range(256)) for w in _WEIGHTS
)
# Weighted sum (0..110) -> the ASCII check digit it calls for.
_NONZERO = re.compile(rb"[^\x00]")
_EXPECTED = bytes(48 + (0 if s % 11 <= 1 else 11 - s % 11) for s in range(256))


def invalid_indexes(numbers: list[str] | list[bytes], limit: int) -> tuple[int, list[int]]:
    """How many of ``numbers`` fail the check digit, and the indexes of the first
    ``limit`` of them (in order).

    Every item must be 12 ASCII digits, all ``str`` or all ``bytes`` (the caller
    guarantees it).  The work is done
    at C speed over all numbers at once: the digits of position k of every number are
    one ``bytes`` slice, weighted by ``translate`` and added as one big integer (one
    byte per number, no carries); the check digits expected are compared with the
    actual ones the same way.  Same result as :func:`is_valid_mynumber` on each.
    """
    n = len(numbers)
    if not n:
        return 0, []
    if isinstance(numbers[0], bytes):
        joined = b"".join(cast("list[bytes]", numbers))
    else:
        joined = "".join(cast("list[str]", numbers)).encode("ascii")
    total = 0
    for k, table in enumerate(_TABLES):
        total += int.from_bytes(joined[k::12].translate(table), "big")
    expected = total.to_bytes(n, "big").translate(_EXPECTED)
    actual = joined[11::12]
    if expected == actual:
        return 0, []
    diff = (int.from_bytes(expected, "big") ^ int.from_bytes(actual, "big")).to_bytes(n, "big")
    bad = n - diff.count(0)
    first = [m.start() for m in islice(_NONZERO.finditer(diff), max(0, limit))]
    return bad, first
