"""Japanese is the UI's first language: every UI string has a translation."""

from __future__ import annotations

from pathlib import Path

from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po

ROOT = Path(__file__).resolve().parents[3]
METHODS = [("portal/**.py", "python"), ("templates/**.html", "jinja2")]
KEYWORDS = {"_": None, "gettext": None, "ngettext": (1, 2), "_l": None,
            "lazy_gettext": None, "N_": None}


def test_every_ui_string_has_a_japanese_translation() -> None:
    ids = set()
    for _file, _line, message, _comments, _ctx in extract_from_dir(
            str(ROOT), METHODS, keywords=KEYWORDS):
        ids.add(message if isinstance(message, str) else message[0])
    with open(ROOT / "portal/translations/ja/LC_MESSAGES/messages.po", "rb") as fh:
        catalog = read_po(fh)
    translated = {m.id if isinstance(m.id, str) else m.id[0]
                  for m in catalog if m.id and (m.string if isinstance(m.string, str)
                                               else all(m.string))}
    missing = sorted(ids - translated)
    assert not missing, f"run `make extract` and translate: {missing[:10]}"
    assert not catalog.fuzzy
