"""Alembic's head must match the models: a model change without a migration fails."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from portal.db import make_engine
from portal.instance import migrate
from portal.models import Base
from portal.settings import Settings


def test_head_matches_models(tmp_path: Path) -> None:
    settings = Settings.from_env({"KINKO_HOME": str(tmp_path)})
    migrate(settings)
    engine = make_engine(settings.database_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], diff
