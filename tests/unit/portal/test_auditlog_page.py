"""The handling-log page says when its count stopped at the cap (in Japanese first)."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask import render_template

import portal.office
from portal.instance import init_instance
from portal.office.auditlog import COUNT_CAP, LogFilters, LogPage
from portal.settings import Settings


@pytest.mark.parametrize(("lang", "capped", "exact"), [
    ("ja", "10000 件を超えています（先頭 200 ページ中 3 ページ目",
     "10000 件（200 ページ中 3 ページ目"),
    ("en", "More than 10000 events; page 3 of the first 200", "10000 events, page 3 of 200"),
])
def test_a_capped_count_is_said_so(tmp_path: Path, lang: str, capped: str,
                                   exact: str) -> None:
    settings = Settings.from_env({"KINKO_HOME": str(tmp_path)})
    init_instance(settings)
    app = portal.office.create_app(settings)
    assert COUNT_CAP == 10_000
    with app.test_request_context("/audit", headers={"Cookie": f"kinko_lang={lang}"}):
        def page(more: bool) -> str:
            return render_template("office/audit/log.html", events=[],
                                   page=LogPage([], 3, COUNT_CAP, 200, more),
                                   filters=LogFilters(), companies=[], company_codes={},
                                   tags=[])
        assert capped in page(True) and exact not in page(True)
        assert exact in page(False) and capped not in page(False)
