"""user language and password opening

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24 05:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Per-user language of pages, e-mails and PDFs (existing accounts: Japanese).
    for table in ('client_users', 'staff'):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column('language', sa.String(length=8),
                                          server_default='ja', nullable=False))
    # Opening a password-protected upload with its password (portal/unlock.py).
    with op.batch_alter_table('uploads', schema=None) as batch_op:
        batch_op.add_column(sa.Column('unlock_until', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('unlock_attempts', sa.Integer(),
                                      server_default='0', nullable=False))
        batch_op.add_column(sa.Column('opened_from', sa.String(length=32), nullable=True))
        batch_op.create_index(batch_op.f('ix_uploads_opened_from'), ['opened_from'],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table('uploads', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_uploads_opened_from'))
        batch_op.drop_column('opened_from')
        batch_op.drop_column('unlock_attempts')
        batch_op.drop_column('unlock_until')
    for table in ('staff', 'client_users'):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column('language')
