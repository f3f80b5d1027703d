"""postgres audit protection, scan leases

On PostgreSQL the handling log is append-only at the database level: a
trigger refuses UPDATE, DELETE and TRUNCATE on audit_events for every role
(a second line behind the privileges `kinko init` revokes from the app
role).  Only someone who can alter the table (the owner) could switch the
trigger off, and then `kinko audit verify` still finds the change through
the hash chain.  SQLite has no roles: there the chain is the protection.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-24 05:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Many workers on one queue: a scan in progress holds a renewed lease.
    with op.batch_alter_table('uploads', schema=None) as batch_op:
        batch_op.add_column(sa.Column('lease_until', sa.DateTime(timezone=True),
                                      nullable=True))
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("""
        CREATE OR REPLACE FUNCTION kinko_audit_append_only() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'audit_events is append-only (% refused)', TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END
        $$
    """)
    op.execute("""
        CREATE TRIGGER audit_events_append_only
        BEFORE UPDATE OR DELETE ON audit_events
        FOR EACH ROW EXECUTE FUNCTION kinko_audit_append_only()
    """)
    op.execute("""
        CREATE TRIGGER audit_events_no_truncate
        BEFORE TRUNCATE ON audit_events
        FOR EACH STATEMENT EXECUTE FUNCTION kinko_audit_append_only()
    """)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_events_no_truncate ON audit_events")
        op.execute("DROP TRIGGER IF EXISTS audit_events_append_only ON audit_events")
        op.execute("DROP FUNCTION IF EXISTS kinko_audit_append_only()")
    with op.batch_alter_table('uploads', schema=None) as batch_op:
        batch_op.drop_column('lease_until')
