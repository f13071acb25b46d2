"""status derived from the latest facts: the sync service's last result and the reconciler's last finding, kept
apart, so a late sync result can be recorded without moving a status the reconciler decided

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 16:05:00
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

UNSETTLED = "status IN ('accepted', 'published', 'submitted', 'retrying', 'stuck')"


def upgrade() -> None:
    op.add_column('invoices', sa.Column('sync_status', sa.String(length=20), nullable=True), schema='issuer')
    op.add_column('invoices', sa.Column('sync_note', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
                  schema='issuer')
    op.add_column('invoices', sa.Column('finding_status', sa.String(length=20), nullable=True), schema='issuer')
    op.add_column('invoices', sa.Column('finding_sync_seq', sa.Integer(), server_default='0', nullable=False),
                  schema='issuer')
    # What existing rows imply: a status the sync service set is its last result; the reconciler's last event
    # type is its finding, made knowing every sync result applied so far.
    op.execute("""
        UPDATE issuer.invoices SET
          sync_status = CASE WHEN sync_seq > 0 AND reason_source = 'sync' THEN status END,
          sync_note = CASE WHEN sync_seq > 0 AND reason_source = 'sync' THEN jsonb_build_object(
              'reason', reason, 'next_action', next_action, 'next_action_at', next_action_at) END,
          finding_status = CASE recon->>'type'
              WHEN 'cn.fapiao.invoice.confirmed.v1' THEN 'confirmed'
              WHEN 'cn.fapiao.invoice.stuck.v1' THEN 'stuck'
              WHEN 'cn.fapiao.invoice.gap-found.v1' THEN CASE WHEN status = 'stuck' THEN 'stuck' ELSE 'retrying' END
              WHEN 'cn.fapiao.invoice.awaiting-visibility.v1' THEN 'submitted'
              ELSE CASE WHEN status IN ('confirmed', 'stuck') AND recon_seq > 0 THEN status END END,
          finding_sync_seq = sync_seq
    """)
    op.create_index('ix_invoices_unsettled', 'invoices', ['id'], schema='issuer',
                    postgresql_where=sa.text(UNSETTLED))


def downgrade() -> None:
    op.drop_index('ix_invoices_unsettled', table_name='invoices', schema='issuer')
    for column in ('finding_sync_seq', 'finding_status', 'sync_note', 'sync_status'):
        op.drop_column('invoices', column, schema='issuer')
