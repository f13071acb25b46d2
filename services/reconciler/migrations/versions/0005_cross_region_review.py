"""cross-region review on the ledger: since when an invoice is held, the bureau's expected time, when it was
alerted as overdue (states review and denied)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 19:30:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    for column in ('review_since', 'review_due_at', 'review_overdue_at'):
        op.add_column('ledger', sa.Column(column, sa.DateTime(timezone=True), nullable=True), schema='reconciler')


def downgrade() -> None:
    for column in ('review_overdue_at', 'review_due_at', 'review_since'):
        op.drop_column('ledger', column, schema='reconciler')
