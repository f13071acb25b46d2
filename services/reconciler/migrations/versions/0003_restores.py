"""restores: each restore of a backup, so the sweep can say an invoice was lost by one

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 11:20:00
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('restores',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('backup_taken_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('restored_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('backup_file', sa.Text(), nullable=False),
    sa.Column('manifest', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_restores')),
    schema='reconciler'
    )


def downgrade() -> None:
    op.drop_table('restores', schema='reconciler')
