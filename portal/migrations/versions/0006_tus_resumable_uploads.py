"""tus resumable uploads

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24 05:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'tus_uploads',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('company_id', sa.Integer(), nullable=False),
        sa.Column('user_id', sa.Integer(), nullable=False),
        sa.Column('filename', sa.String(length=255), nullable=False),
        sa.Column('purpose_code', sa.String(length=32), nullable=False),
        sa.Column('length', sa.BigInteger(), nullable=False),
        sa.Column('offset', sa.BigInteger(), nullable=False),
        sa.Column('parts', sa.Integer(), nullable=False),
        sa.Column('received', sa.BigInteger(), nullable=False),
        sa.Column('upload_id', sa.String(length=32), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['company_id'], ['companies.id'],
                                name=op.f('fk_tus_uploads_company_id_companies')),
        sa.ForeignKeyConstraint(['user_id'], ['client_users.id'],
                                name=op.f('fk_tus_uploads_user_id_client_users')),
        sa.ForeignKeyConstraint(['purpose_code'], ['purposes.code'],
                                name=op.f('fk_tus_uploads_purpose_code_purposes')),
        sa.ForeignKeyConstraint(['upload_id'], ['uploads.id'],
                                name=op.f('fk_tus_uploads_upload_id_uploads')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_tus_uploads')),
    )
    with op.batch_alter_table('tus_uploads', schema=None) as batch_op:
        batch_op.create_index('ix_tus_uploads_expires', ['expires_at'], unique=False)
    op.create_table(
        'tus_parts',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('tus_id', sa.String(length=32), nullable=False),
        sa.Column('offset', sa.BigInteger(), nullable=False),
        sa.Column('size', sa.BigInteger(), nullable=False),
        sa.Column('key', sa.String(length=128), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['tus_id'], ['tus_uploads.id'],
                                name=op.f('fk_tus_parts_tus_id_tus_uploads')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_tus_parts')),
        sa.UniqueConstraint('tus_id', 'offset', name='uq_tus_parts_offset'),
    )
    with op.batch_alter_table('tus_parts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_tus_parts_tus_id'), ['tus_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('tus_parts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_tus_parts_tus_id'))
    op.drop_table('tus_parts')
    with op.batch_alter_table('tus_uploads', schema=None) as batch_op:
        batch_op.drop_index('ix_tus_uploads_expires')
    op.drop_table('tus_uploads')
