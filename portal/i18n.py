"""Translations outside a request: notices, PDFs, exports, CLI output.

Pages use Flask-Babel's ``_()``; text the worker or the CLI renders (where
there is no request and so no locale) marks its strings with :func:`N_` and
translates them with :func:`translations`.  One catalogue for both.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from babel.support import NullTranslations, Translations

CATALOGUE = Path(__file__).resolve().parent / "translations"


def N_(message: str) -> str:  # noqa: N802 - the gettext convention for "mark only"
    """Mark a string for the catalogue without translating it yet."""
    return message


@lru_cache(maxsize=4)
def translations(lang: str) -> NullTranslations:
    """The catalogue for ``lang``; English (the msgids) when ``en`` or missing."""
    if lang == "en":
        return NullTranslations()
    try:
        return Translations.load(str(CATALOGUE), [lang], "messages")
    except OSError:
        return NullTranslations()
