"""Spotting My Numbers in text that must never hold one (logs, notices, reasons).

Two strengths, both deliberately simple:

* :func:`has_number_run` for free text people type (a deletion reason, a
  retention note): full-width digits, spaces and dashes are folded first,
  so ``１２３４ ５６７８ ９０１２`` is caught too.  Callers refuse the text.
* :func:`looks_like_mynumber` for values the code itself writes (audit
  details): 12 digits, optionally in groups of four.  Narrower, so that a
  generated value never trips it by accident.
"""

from __future__ import annotations

import re
import unicodedata

_DIGIT_RUN = re.compile(r"\d{12}")
_SEPARATORS = re.compile(r"[\s\-‐‑‒–—―−ー]")
_TWELVE_DIGITS = re.compile(r"(?<!\d)\d{4}[- ]?\d{4}[- ]?\d{4}(?!\d)")


def has_number_run(text: str) -> bool:
    """True if the text holds 12 digits in a row (full-width or separated ones too)."""
    return bool(_DIGIT_RUN.search(_SEPARATORS.sub("", unicodedata.normalize("NFKC", text))))


def looks_like_mynumber(text: str) -> bool:
    return bool(_TWELVE_DIGITS.search(text))


def mask_mynumbers(text: str) -> str:
    """``text`` with every My-Number-shaped run (also full-width) replaced by ``*``.

    For values that outlive the file they came with (a file name in a
    disposal record), so that a number does not outlive the file there.
    """
    folded = unicodedata.normalize("NFKC", text)
    if not _TWELVE_DIGITS.search(folded):
        return text
    return _TWELVE_DIGITS.sub(lambda m: "*" * len(m.group(0)), folded)
