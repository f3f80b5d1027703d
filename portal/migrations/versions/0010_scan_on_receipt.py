"""scan while receiving

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-24 09:10:00

The client app streams an upload to clamd as it arrives and records clamd's
answer on the row (``prescan*``); the worker's scan uses it instead of
streaming the file to clamd a second time (portal/pipeline.py).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('uploads', schema=None) as batch_op:
        batch_op.add_column(sa.Column('prescan', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('prescan_reason', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('prescan_signature', sa.String(length=200),
                                      nullable=True))
        batch_op.add_column(sa.Column('prescan_until', sa.DateTime(timezone=True),
                                      nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('uploads', schema=None) as batch_op:
        batch_op.drop_column('prescan_until')
        batch_op.drop_column('prescan_signature')
        batch_op.drop_column('prescan_reason')
        batch_op.drop_column('prescan')
