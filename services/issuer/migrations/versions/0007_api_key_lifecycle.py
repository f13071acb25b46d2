"""api key lifecycle: an optional expiry (a rotated key works on until then) and when each key was last used

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 11:30:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('api_keys', sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True), schema='issuer')
    op.add_column('api_keys', sa.Column('last_used_at', sa.DateTime(timezone=True), nullable=True), schema='issuer')


def downgrade() -> None:
    op.drop_column('api_keys', 'last_used_at', schema='issuer')
    op.drop_column('api_keys', 'expires_at', schema='issuer')
