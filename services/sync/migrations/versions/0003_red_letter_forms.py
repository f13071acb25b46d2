"""red-letter form writes and watches (form_ops, form_seqs); submissions.red_letter_of for red invoices

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 19:00:00
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('submissions', sa.Column('red_letter_of', sa.String(length=20), nullable=True), schema='sync')
    op.create_table('form_ops',
    sa.Column('op_id', postgresql.UUID(as_uuid=True), nullable=False),
    sa.Column('form_id', postgresql.UUID(as_uuid=True), nullable=False),
    sa.Column('invoice_id', postgresql.UUID(as_uuid=True), nullable=False),
    sa.Column('tenant_id', postgresql.UUID(as_uuid=True), nullable=False),
    sa.Column('op', sa.String(length=8), nullable=False),
    sa.Column('party_tax_id', sa.String(length=18), nullable=False),
    sa.Column('body', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('form_no', sa.String(length=20), nullable=True),
    sa.Column('status', sa.String(length=12), nullable=False),
    sa.Column('store_status', sa.String(length=12), nullable=True),
    sa.Column('attempts', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('op_id', name=op.f('pk_form_ops')),
    schema='sync'
    )
    op.create_index('ix_form_ops_due', 'form_ops', ['next_attempt_at'], unique=False, schema='sync',
                    postgresql_where=sa.text("status IN ('retrying', 'watching')"))
    op.create_table('form_seqs',
    sa.Column('form_id', postgresql.UUID(as_uuid=True), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('form_id', name=op.f('pk_form_seqs')),
    schema='sync'
    )


def downgrade() -> None:
    op.drop_table('form_seqs', schema='sync')
    op.drop_index('ix_form_ops_due', table_name='form_ops', schema='sync',
                  postgresql_where=sa.text("status IN ('retrying', 'watching')"))
    op.drop_table('form_ops', schema='sync')
    op.drop_column('submissions', 'red_letter_of', schema='sync')
