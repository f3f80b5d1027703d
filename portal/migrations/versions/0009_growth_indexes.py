"""growth indexes; staged vault copies

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-24 05:30:00

Indexes for the pages that grow with the instance: the room and the office
inbox (newest first, LIMIT) and the handling-log search (every filter), see
docs/performance.md and bench/growth.py; and the columns of a ``clean``
upload's staged vault copy (portal/pipeline.py).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

_AUDIT = [
    ("ix_audit_company", ["company_id"]),
    ("ix_audit_actor", ["actor_kind", "actor_id"]),
    ("ix_audit_actor_label", ["actor_label"]),
    ("ix_audit_addr", ["remote_addr"]),
]


def upgrade() -> None:
    with op.batch_alter_table('uploads', schema=None) as batch_op:
        batch_op.add_column(sa.Column('staged_key', sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column('staged_wrapped_key', sa.LargeBinary(), nullable=True))
        batch_op.add_column(sa.Column('staged_ciphertext_sha256', sa.String(length=64),
                                      nullable=True))
    op.drop_index('ix_uploads_company_created', table_name='uploads')
    op.create_index('ix_uploads_company_created', 'uploads',
                    ['company_id', 'created_at', 'id'])
    op.create_index('ix_uploads_created', 'uploads', ['created_at', 'id'])
    op.create_index('ix_uploads_status_created', 'uploads', ['status', 'created_at', 'id'])
    for name, columns in _AUDIT:
        op.create_index(name, 'audit_events', columns)
    # The action filter is a case-insensitive LIKE 'prefix%' on SQLite (it
    # can use only a NOCASE index) and a case-sensitive LIKE on PostgreSQL.
    # Then id: each action under a prefix is read newest first with LIMIT
    # (portal.auditexport.newest_ids_by_action).
    if op.get_bind().dialect.name == 'postgresql':
        op.create_index('ix_audit_action', 'audit_events', ['action', 'id'],
                        postgresql_ops={'action': 'text_pattern_ops'})
    else:
        op.execute('CREATE INDEX ix_audit_action ON audit_events (action COLLATE NOCASE, id)')


def downgrade() -> None:
    op.drop_index('ix_audit_action', table_name='audit_events')
    for name, _columns in reversed(_AUDIT):
        op.drop_index(name, table_name='audit_events')
    op.drop_index('ix_uploads_status_created', table_name='uploads')
    op.drop_index('ix_uploads_created', table_name='uploads')
    op.drop_index('ix_uploads_company_created', table_name='uploads')
    op.create_index('ix_uploads_company_created', 'uploads', ['company_id', 'created_at'])
    with op.batch_alter_table('uploads', schema=None) as batch_op:
        batch_op.drop_column('staged_ciphertext_sha256')
        batch_op.drop_column('staged_wrapped_key')
        batch_op.drop_column('staged_key')
