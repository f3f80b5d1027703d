"""The OpenAPI document covers every client API route, and is valid 3.1."""

from __future__ import annotations

import re
from pathlib import Path

from portal.client import create_app
from portal.client.openapi import SPEC
from portal.instance import init_instance
from portal.settings import Settings


def test_every_api_route_is_documented(tmp_path: Path) -> None:
    settings = Settings.from_env({"KINKO_HOME": str(tmp_path)})
    init_instance(settings)
    app = create_app(settings)
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/v1/") and rule.endpoint != "openapi":
            path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
            for method in rule.methods or ():
                if method not in ("HEAD", "OPTIONS"):
                    routes.add((path, method.lower()))
    documented = {(path, method) for path, ops in SPEC["paths"].items() for method in ops}
    assert routes <= documented, routes - documented
    r = app.test_client().get("/api/v1/openapi.json", base_url="https://localhost")
    assert r.status_code == 200 and r.get_json()["openapi"] == "3.1.0"


def test_the_document_is_valid_openapi() -> None:
    from openapi_spec_validator import validate

    validate(SPEC)
