"""status_since: when each invoice entered its current status, so every stage of the pipeline has an age

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 06:50:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('invoices', sa.Column('status_since', sa.DateTime(timezone=True), nullable=True), schema='issuer')
    op.execute("UPDATE issuer.invoices SET status_since = updated_at")
    op.alter_column('invoices', 'status_since', nullable=False, server_default=sa.text('now()'), schema='issuer')
    op.create_index('ix_invoices_rejected', 'invoices', ['status_since'], schema='issuer',
                    postgresql_where=sa.text("status = 'rejected'"))


def downgrade() -> None:
    op.drop_index('ix_invoices_rejected', table_name='invoices', schema='issuer')
    op.drop_column('invoices', 'status_since', schema='issuer')
