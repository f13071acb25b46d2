"""audit_log: every change an operator made through this service, by name (shared.audit)

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03 11:40:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('audit_log',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('actor', sa.String(length=64), nullable=False),
    sa.Column('on_behalf_of', sa.String(length=80), nullable=True),
    sa.Column('method', sa.String(length=10), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('status', sa.Integer(), nullable=False),
    sa.Column('client', sa.String(length=80), nullable=True),
    sa.Column('user_agent', sa.String(length=200), nullable=True),
    sa.Column('correlation_id', sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_log')),
    schema='notifier'
    )
    op.create_index('ix_audit_log_at', 'audit_log', ['at'], unique=False, schema='notifier')


def downgrade() -> None:
    op.drop_index('ix_audit_log_at', table_name='audit_log', schema='notifier')
    op.drop_table('audit_log', schema='notifier')
