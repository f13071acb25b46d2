"""initial issuer schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-25 04:20:24.255322
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('outbox',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('topic', sa.String(length=200), nullable=False),
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('event_id', sa.String(length=64), nullable=False),
    sa.Column('event_type', sa.String(length=200), nullable=False),
    sa.Column('payload', sa.LargeBinary(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('published_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('attempts', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_outbox')),
    schema='issuer'
    )
    op.create_index('ix_outbox_unpublished', 'outbox', ['id'], unique=False, schema='issuer', postgresql_where=sa.text('published_at IS NULL'))
    op.create_table('processed_events',
    sa.Column('consumer_group', sa.String(length=100), nullable=False),
    sa.Column('event_id', sa.String(length=64), nullable=False),
    sa.Column('processed_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('consumer_group', 'event_id', name=op.f('pk_processed_events')),
    schema='issuer'
    )
    op.create_table('tenants',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('tax_id', sa.String(length=18), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tenants')),
    sa.UniqueConstraint('tax_id', name=op.f('uq_tenants_tax_id')),
    schema='issuer'
    )
    op.create_table('api_keys',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('tenant_id', sa.UUID(), nullable=False),
    sa.Column('prefix', sa.String(length=16), nullable=False),
    sa.Column('key_hash', sa.String(length=64), nullable=False),
    sa.Column('label', sa.String(length=100), server_default='default', nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['tenant_id'], ['issuer.tenants.id'], name=op.f('fk_api_keys_tenant_id_tenants')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_keys')),
    sa.UniqueConstraint('key_hash', name=op.f('uq_api_keys_key_hash')),
    schema='issuer'
    )
    op.create_index(op.f('ix_api_keys_tenant_id'), 'api_keys', ['tenant_id'], unique=False, schema='issuer')
    op.create_table('idempotency_keys',
    sa.Column('tenant_id', sa.UUID(), nullable=False),
    sa.Column('key', sa.String(length=200), nullable=False),
    sa.Column('endpoint', sa.String(length=100), nullable=False),
    sa.Column('request_hash', sa.String(length=64), nullable=False),
    sa.Column('status_code', sa.SmallInteger(), nullable=True),
    sa.Column('response', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['issuer.tenants.id'], name=op.f('fk_idempotency_keys_tenant_id_tenants')),
    sa.PrimaryKeyConstraint('tenant_id', 'key', name=op.f('pk_idempotency_keys')),
    schema='issuer'
    )
    op.create_index('ix_idempotency_keys_created_at', 'idempotency_keys', ['created_at'], unique=False, schema='issuer')
    op.create_table('invoices',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('seq', sa.BigInteger(), sa.Identity(always=True), nullable=False),
    sa.Column('tenant_id', sa.UUID(), nullable=False),
    sa.Column('seller_tax_id', sa.String(length=18), nullable=False),
    sa.Column('number', sa.String(length=20), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('issue_date', sa.Date(), nullable=False),
    sa.Column('buyer_tax_id', sa.String(length=18), nullable=True),
    sa.Column('buyer_name', sa.String(length=200), nullable=False),
    sa.Column('total_amount', sa.Numeric(precision=16, scale=2), nullable=False),
    sa.Column('total_tax', sa.Numeric(precision=16, scale=2), nullable=False),
    sa.Column('total', sa.Numeric(precision=16, scale=2), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('content', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('content_hash', sa.String(length=64), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('next_action', sa.Text(), nullable=True),
    sa.Column('next_action_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('case_no', sa.String(length=32), nullable=True),
    sa.Column('receipt_no', sa.String(length=64), nullable=True),
    sa.Column('event_seq', sa.Integer(), server_default='1', nullable=False),
    sa.Column('accepted_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['issuer.tenants.id'], name=op.f('fk_invoices_tenant_id_tenants')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_invoices')),
    sa.UniqueConstraint('seller_tax_id', 'number', name=op.f('uq_invoices_seller_tax_id_number')),
    sa.UniqueConstraint('seq', name=op.f('uq_invoices_seq')),
    schema='issuer'
    )
    op.create_index('ix_invoices_tenant_buyer_seq', 'invoices', ['tenant_id', 'buyer_tax_id', 'seq'], unique=False, schema='issuer')
    op.create_index('ix_invoices_tenant_issue_date', 'invoices', ['tenant_id', 'issue_date'], unique=False, schema='issuer')
    op.create_index('ix_invoices_tenant_seq', 'invoices', ['tenant_id', 'seq'], unique=False, schema='issuer')
    op.create_index('ix_invoices_tenant_status_seq', 'invoices', ['tenant_id', 'status', 'seq'], unique=False, schema='issuer')
    op.create_table('invoice_timeline',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('invoice_id', sa.UUID(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('kind', sa.String(length=40), nullable=False),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('detail', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.ForeignKeyConstraint(['invoice_id'], ['issuer.invoices.id'], name=op.f('fk_invoice_timeline_invoice_id_invoices')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_invoice_timeline')),
    schema='issuer'
    )
    op.create_index('ix_invoice_timeline_invoice_id_id', 'invoice_timeline', ['invoice_id', 'id'], unique=False, schema='issuer')


def downgrade() -> None:
    op.drop_index('ix_invoice_timeline_invoice_id_id', table_name='invoice_timeline', schema='issuer')
    op.drop_table('invoice_timeline', schema='issuer')
    op.drop_index('ix_invoices_tenant_status_seq', table_name='invoices', schema='issuer')
    op.drop_index('ix_invoices_tenant_seq', table_name='invoices', schema='issuer')
    op.drop_index('ix_invoices_tenant_issue_date', table_name='invoices', schema='issuer')
    op.drop_index('ix_invoices_tenant_buyer_seq', table_name='invoices', schema='issuer')
    op.drop_table('invoices', schema='issuer')
    op.drop_index('ix_idempotency_keys_created_at', table_name='idempotency_keys', schema='issuer')
    op.drop_table('idempotency_keys', schema='issuer')
    op.drop_index(op.f('ix_api_keys_tenant_id'), table_name='api_keys', schema='issuer')
    op.drop_table('api_keys', schema='issuer')
    op.drop_table('tenants', schema='issuer')
    op.drop_table('processed_events', schema='issuer')
    op.drop_index('ix_outbox_unpublished', table_name='outbox', schema='issuer', postgresql_where=sa.text('published_at IS NULL'))
    op.drop_table('outbox', schema='issuer')
