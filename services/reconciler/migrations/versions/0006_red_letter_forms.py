"""red-letter forms in the expected ledger: a confirmed form waits for its red invoice (a gap after a grace)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 19:00:00
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
        'red_letter_forms',
        sa.Column('form_id', postgresql.UUID(as_uuid=True), primary_key=True),
        sa.Column('tenant_id', postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column('invoice_id', postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column('seller_tax_id', sa.String(18), nullable=False),
        sa.Column('blue_number', sa.String(20), nullable=False),
        sa.Column('form_no', sa.String(32)),
        sa.Column('red_number', sa.String(20)),
        sa.Column('total', sa.Numeric(16, 2)),
        sa.Column('confirmed_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('state', sa.String(16), nullable=False),
        sa.Column('gap_kind', sa.String(16)),
        sa.Column('red_invoice_id', postgresql.UUID(as_uuid=True)),
        sa.Column('checks', sa.Integer, nullable=False, server_default=sa.text('0')),
        sa.Column('next_check_at', sa.DateTime(timezone=True)),
        sa.Column('gap_at', sa.DateTime(timezone=True)),
        sa.Column('met_at', sa.DateTime(timezone=True)),
        sa.Column('case_no', sa.String(32)),
        sa.Column('case_own', sa.Boolean, nullable=False, server_default=sa.text('false')),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        schema='reconciler')
    op.create_index('ix_red_letter_forms_due', 'red_letter_forms', ['next_check_at'], schema='reconciler',
                    postgresql_where=sa.text('next_check_at IS NOT NULL'))
    op.create_index('ix_red_letter_forms_red', 'red_letter_forms', ['seller_tax_id', 'red_number'],
                    schema='reconciler')


def downgrade() -> None:
    op.drop_table('red_letter_forms', schema='reconciler')
