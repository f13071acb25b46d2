"""ops_samples: the dashboard's readings, kept in the database so the charts survive a restart and every issuer
replica shows one history

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 07:10:00
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'ops_samples',
        sa.Column('t', sa.DateTime(timezone=True), nullable=False),
        sa.Column('point', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.PrimaryKeyConstraint('t', name=op.f('pk_ops_samples')),
        schema='issuer',
    )


def downgrade() -> None:
    op.drop_table('ops_samples', schema='issuer')
