"""``kinko init``: the instance directory, keys, TLS certificate, schema.

Idempotent: existing keys and certificates are never replaced.
"""

from __future__ import annotations

import os
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import select

from . import keys
from .db import make_engine, make_sessionmaker, postgres_url
from .models import Purpose
from .settings import Settings
from .tls import ensure_certificate

MIGRATIONS = Path(__file__).resolve().parent / "migrations"

# The office's default purposes of use (利用目的); the manager edits them.
DEFAULT_PURPOSES = [
    ("koyo", "雇用保険届出", "Employment insurance filings", 7, 10),
    ("shaho", "健康保険・厚生年金保険届出", "Health insurance and pension filings", 7, 20),
    ("rosai", "労災保険請求", "Industrial accident insurance claims", 7, 30),
    ("gensen", "源泉徴収票作成", "Withholding tax slips", 7, 40),
    ("kyuyo", "給与計算", "Payroll", 7, 50),
]


def alembic_config(settings: Settings, url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", (url or settings.database_url).replace("%", "%%"))
    return cfg


def migrate(settings: Settings) -> None:
    """Bring the schema to head, as the owner role when one is configured."""
    url = settings.database_admin_url or settings.database_url
    command.upgrade(alembic_config(settings, url), "head")
    if settings.database_admin_url:
        grant_app_role(settings)


# What the application role may do on PostgreSQL (docs/deploy.md).  The
# handling log is append-only for it: the regulation's records must not be
# rewritten by the software that writes them.
APPEND_ONLY_TABLES = ("audit_events",)


def grant_app_role(settings: Settings) -> str | None:
    """Grant the ``KINKO_DATABASE_URL`` role its rights, as the owner role.

    Idempotent; run by every ``kinko init`` with ``KINKO_DATABASE_ADMIN_URL``,
    so that tables added by later migrations are covered too.  Returns the
    role name, or None when app and owner are the same role (then only the
    trigger from migration 0008 protects the log).
    """
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    admin_url = settings.database_admin_url
    if not admin_url or not admin_url.startswith(("postgresql", "postgres")):
        return None
    app_role = make_url(postgres_url(settings.database_url)).username
    owner = make_url(postgres_url(admin_url)).username
    if not app_role or app_role == owner:
        return None
    engine = make_engine(admin_url)
    try:
        with engine.begin() as conn:
            role = conn.execute(text("SELECT quote_ident(:r)"), {"r": app_role}).scalar_one()
            conn.execute(text(f"GRANT USAGE ON SCHEMA public TO {role}"))
            conn.execute(text(
                f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}"))
            conn.execute(text(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}"))
            conn.execute(text(f"REVOKE ALL ON alembic_version FROM {role}"))
            conn.execute(text(f"GRANT SELECT ON alembic_version TO {role}"))
            for table in APPEND_ONLY_TABLES:
                conn.execute(text(f"REVOKE UPDATE, DELETE, TRUNCATE ON {table} FROM {role}"))
    finally:
        engine.dispose()
    return app_role


def init_instance(settings: Settings) -> list[str]:
    """Create whatever is missing.  Returns a list of what was created."""
    created: list[str] = []
    home = settings.home
    if not home.exists():
        created.append(str(home))
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(home, 0o700)
    for sub in ("run", "dropzone", "vault", "outbox"):
        (home / sub).mkdir(exist_ok=True, mode=0o700)
    created += keys.ensure_keys(settings)
    if ensure_certificate(settings.tls_cert, settings.tls_key, ["localhost", "127.0.0.1"]):
        created.append("tls certificate")
    migrate(settings)
    db_file = home / "kinko.db"
    if db_file.exists():
        os.chmod(db_file, 0o600)
    sessions = make_sessionmaker(make_engine(settings.database_url))
    with sessions() as db, db.begin():
        have = set(db.execute(select(Purpose.code)).scalars())
        for code, ja, en, years, order in DEFAULT_PURPOSES:
            if code not in have:
                db.add(Purpose(code=code, label_ja=ja, label_en=en, retention_years=years,
                               sort_order=order))
                created.append(f"purpose {code}")
    return created
