"""reconciliation feedback: the reconciler's latest view of each invoice, its sequence, and who explains the status

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 09:12:40.518203
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('invoices', sa.Column('recon', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
                  schema='issuer')
    op.add_column('invoices', sa.Column('recon_seq', sa.Integer(), server_default='0', nullable=False),
                  schema='issuer')
    op.add_column('invoices', sa.Column('reason_source', sa.String(length=16), nullable=True), schema='issuer')


def downgrade() -> None:
    op.drop_column('invoices', 'reason_source', schema='issuer')
    op.drop_column('invoices', 'recon_seq', schema='issuer')
    op.drop_column('invoices', 'recon', schema='issuer')
