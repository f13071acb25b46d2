"""red-letter confirmation forms, the red invoices' numbers, cross-region review columns on invoices

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 15:00:00
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(sa.schema.CreateSequence(sa.Sequence('form_seq', schema='taxstore')))
    op.execute(sa.schema.CreateSequence(sa.Sequence('red_number_seq', schema='taxstore')))
    columns: list[tuple[str, sa.types.TypeEngine]] = [
        ('review_status', sa.String(length=16)), ('review_due_at', sa.DateTime(timezone=True)),
        ('review_auto', sa.String(length=16)), ('reviewed_at', sa.DateTime(timezone=True)),
        ('review_note', sa.String(length=500))]
    for name, type_ in columns:
        op.add_column('invoices', sa.Column(name, type_, nullable=True), schema='taxstore')
    op.create_index('ix_invoices_review_status', 'invoices', ['review_status'], unique=False, schema='taxstore',
                    postgresql_where=sa.text('review_status IS NOT NULL'))
    op.create_table('red_letter_forms',
    sa.Column('form_no', sa.String(length=24), nullable=False),
    sa.Column('seller_tax_id', sa.String(length=18), nullable=False),
    sa.Column('blue_number', sa.String(length=20), nullable=False),
    sa.Column('buyer_tax_id', sa.String(length=18), nullable=True),
    sa.Column('requested_by', sa.String(length=18), nullable=False),
    sa.Column('requested_role', sa.String(length=8), nullable=False),
    sa.Column('request_id', sa.String(length=64), nullable=False),
    sa.Column('request_hash', sa.String(length=64), nullable=False),
    sa.Column('reason_code', sa.String(length=2), nullable=False),
    sa.Column('scope', sa.String(length=8), nullable=False),
    sa.Column('lines', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('template', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('total_amount', sa.Numeric(precision=16, scale=2), nullable=False),
    sa.Column('total_tax', sa.Numeric(precision=16, scale=2), nullable=False),
    sa.Column('total', sa.Numeric(precision=16, scale=2), nullable=False),
    sa.Column('confirmation_required', sa.Boolean(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('decided_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('decided_by', sa.String(length=18), nullable=True),
    sa.Column('note', sa.String(length=500), nullable=True),
    sa.Column('red_number', sa.String(length=20), nullable=True),
    sa.Column('red_receipt_no', sa.String(length=32), nullable=True),
    sa.Column('red_content', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('red_issued_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('form_no', name=op.f('pk_red_letter_forms')),
    sa.UniqueConstraint('requested_by', 'request_id', name=op.f('uq_red_letter_forms_requested_by_request_id')),
    schema='taxstore'
    )
    op.create_index('ix_red_letter_forms_seller_tax_id_blue_number', 'red_letter_forms',
                    ['seller_tax_id', 'blue_number'], unique=False, schema='taxstore')
    op.create_index('ix_red_letter_forms_buyer_tax_id', 'red_letter_forms', ['buyer_tax_id'], unique=False,
                    schema='taxstore')


def downgrade() -> None:
    op.drop_index('ix_red_letter_forms_buyer_tax_id', table_name='red_letter_forms', schema='taxstore')
    op.drop_index('ix_red_letter_forms_seller_tax_id_blue_number', table_name='red_letter_forms', schema='taxstore')
    op.drop_table('red_letter_forms', schema='taxstore')
    op.drop_index('ix_invoices_review_status', table_name='invoices', schema='taxstore',
                  postgresql_where=sa.text('review_status IS NOT NULL'))
    for name in ('review_note', 'reviewed_at', 'review_auto', 'review_due_at', 'review_status'):
        op.drop_column('invoices', name, schema='taxstore')
    op.execute(sa.schema.DropSequence(sa.Sequence('red_number_seq', schema='taxstore')))
    op.execute(sa.schema.DropSequence(sa.Sequence('form_seq', schema='taxstore')))
