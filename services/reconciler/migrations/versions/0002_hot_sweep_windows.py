"""hot sweep windows: a (seller, issue date) window with a recent confirmation is swept again soon and often

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03 06:40:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('sweep_windows', sa.Column('hot_until', sa.DateTime(timezone=True), nullable=True),
                  schema='reconciler')


def downgrade() -> None:
    op.drop_column('sweep_windows', 'hot_until', schema='reconciler')
