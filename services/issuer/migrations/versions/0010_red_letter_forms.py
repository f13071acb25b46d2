"""red-letter confirmation forms (red_letter_forms, under a row-level policy for the seller's and the buyer's
tenant); invoices.red_letter_of for the red invoices the authority issues for them

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 19:10:00
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

SCOPE = "current_setting('fapiao.tenant_id', true)"
# The seller's tenant and, when the buyer is a tenant too, the buyer's (it confirms or rejects the form).
OWN = f"({SCOPE} = '*' OR tenant_id::text = {SCOPE} OR buyer_tenant_id::text = {SCOPE})"


def upgrade() -> None:
    op.add_column('invoices', sa.Column('red_letter_of', sa.String(length=20), nullable=True), schema='issuer')
    op.create_table('red_letter_forms',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('seq', sa.BigInteger(), sa.Identity(always=True), nullable=False),
    sa.Column('tenant_id', sa.UUID(), nullable=False),
    sa.Column('buyer_tenant_id', sa.UUID(), nullable=True),
    sa.Column('invoice_id', sa.UUID(), nullable=False),
    sa.Column('seller_tax_id', sa.String(length=18), nullable=False),
    sa.Column('number', sa.String(length=20), nullable=False),
    sa.Column('buyer_tax_id', sa.String(length=18), nullable=True),
    sa.Column('reason_code', sa.String(length=2), nullable=False),
    sa.Column('scope', sa.String(length=8), nullable=False),
    sa.Column('lines', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('note', sa.Text(), nullable=True),
    sa.Column('total', sa.Numeric(precision=16, scale=2), nullable=False),
    sa.Column('status', sa.String(length=12), nullable=False),
    sa.Column('form_no', sa.String(length=20), nullable=True),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('store', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('red_invoice_id', sa.UUID(), nullable=True),
    sa.Column('decision', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('sync_seq', sa.Integer(), server_default='0', nullable=False),
    sa.Column('expiry_alerted_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['issuer.tenants.id'], name=op.f('fk_red_letter_forms_tenant_id_tenants')),
    sa.ForeignKeyConstraint(['buyer_tenant_id'], ['issuer.tenants.id'],
                            name=op.f('fk_red_letter_forms_buyer_tenant_id_tenants')),
    sa.ForeignKeyConstraint(['invoice_id'], ['issuer.invoices.id'],
                            name=op.f('fk_red_letter_forms_invoice_id_invoices')),
    sa.ForeignKeyConstraint(['red_invoice_id'], ['issuer.invoices.id'],
                            name=op.f('fk_red_letter_forms_red_invoice_id_invoices')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_red_letter_forms')),
    sa.UniqueConstraint('form_no', name=op.f('uq_red_letter_forms_form_no')),
    sa.UniqueConstraint('seq', name=op.f('uq_red_letter_forms_seq')),
    schema='issuer'
    )
    op.create_index('ix_red_letter_forms_invoice_id', 'red_letter_forms', ['invoice_id'], unique=False,
                    schema='issuer')
    op.create_index('ix_red_letter_forms_tenant_seq', 'red_letter_forms', ['tenant_id', 'seq'], unique=False,
                    schema='issuer')
    op.create_index('ix_red_letter_forms_buyer_tenant_seq', 'red_letter_forms', ['buyer_tenant_id', 'seq'],
                    unique=False, schema='issuer')
    op.execute('ALTER TABLE issuer.red_letter_forms ENABLE ROW LEVEL SECURITY')
    op.execute('ALTER TABLE issuer.red_letter_forms FORCE ROW LEVEL SECURITY')
    op.execute(f'CREATE POLICY tenant_rows ON issuer.red_letter_forms USING {OWN} WITH CHECK {OWN}')


def downgrade() -> None:
    op.execute('DROP POLICY IF EXISTS tenant_rows ON issuer.red_letter_forms')
    op.drop_table('red_letter_forms', schema='issuer')
    op.drop_column('invoices', 'red_letter_of', schema='issuer')
