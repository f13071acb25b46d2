"""initial taxstore schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-25 05:00:00.000000
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(sa.schema.CreateSequence(sa.Sequence('receipt_seq', schema='taxstore')))
    op.create_table('invoices',
    sa.Column('seller_tax_id', sa.String(length=18), nullable=False),
    sa.Column('number', sa.String(length=20), nullable=False),
    sa.Column('receipt_no', sa.String(length=32), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('invoice_type', sa.String(length=16), nullable=False),
    sa.Column('issue_date', sa.Date(), nullable=False),
    sa.Column('buyer_tax_id', sa.String(length=18), nullable=True),
    sa.Column('total', sa.Numeric(precision=16, scale=2), nullable=False),
    sa.Column('content', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('content_hash', sa.String(length=64), nullable=False),
    sa.Column('submitted_hash', sa.String(length=64), nullable=False),
    sa.Column('red_letter_of', sa.String(length=20), nullable=True),
    sa.Column('stored_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('visible_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('seller_tax_id', 'number', name=op.f('pk_invoices')),
    sa.UniqueConstraint('receipt_no', name=op.f('uq_invoices_receipt_no')),
    schema='taxstore'
    )
    op.create_index('ix_invoices_seller_tax_id_issue_date_number', 'invoices', ['seller_tax_id', 'issue_date', 'number'], unique=False, schema='taxstore')
    op.create_index('ix_invoices_number', 'invoices', ['number'], unique=False, schema='taxstore')
    op.create_index('ix_invoices_red_letter_of', 'invoices', ['red_letter_of'], unique=False, schema='taxstore', postgresql_where=sa.text('red_letter_of IS NOT NULL'))
    op.create_table('sellers',
    sa.Column('tax_id', sa.String(length=18), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('registered_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('tax_id', name=op.f('pk_sellers')),
    schema='taxstore'
    )


def downgrade() -> None:
    op.drop_table('sellers', schema='taxstore')
    op.drop_index('ix_invoices_red_letter_of', table_name='invoices', schema='taxstore', postgresql_where=sa.text('red_letter_of IS NOT NULL'))
    op.drop_index('ix_invoices_number', table_name='invoices', schema='taxstore')
    op.drop_index('ix_invoices_seller_tax_id_issue_date_number', table_name='invoices', schema='taxstore')
    op.drop_table('invoices', schema='taxstore')
    op.execute(sa.schema.DropSequence(sa.Sequence('receipt_seq', schema='taxstore')))
