"""sync results feedback: remember the last sync-result sequence applied per invoice

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 04:51:07.045343
"""
import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('invoices', sa.Column('sync_seq', sa.Integer(), server_default='0', nullable=False),
                  schema='issuer')


def downgrade() -> None:
    op.drop_column('invoices', 'sync_seq', schema='issuer')
