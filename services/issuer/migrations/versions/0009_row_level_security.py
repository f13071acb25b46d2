"""row-level security on the tenant-owned tables (services/issuer/row_security.py)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 15:30:00
"""
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

# The transaction's tenant (or '*', every tenant); unset: nothing. Compared as text, so a malformed value matches
# no row rather than failing the statement.
SCOPE = "current_setting('fapiao.tenant_id', true)"
OWN = {
    'tenants': f"({SCOPE} = '*' OR id::text = {SCOPE})",
    'api_keys': f"({SCOPE} = '*' OR tenant_id::text = {SCOPE})",
    'invoices': f"({SCOPE} = '*' OR tenant_id::text = {SCOPE})",
    'idempotency_keys': f"({SCOPE} = '*' OR tenant_id::text = {SCOPE})",
    # A timeline entry is its invoice's tenant's: visible when the invoice is (itself under its policy).
    'invoice_timeline': f"({SCOPE} = '*' OR EXISTS (SELECT 1 FROM issuer.invoices i "  # noqa: S608 - constants
                        "WHERE i.id = invoice_id))",
}


def upgrade() -> None:
    for table, own in OWN.items():
        op.execute(f'ALTER TABLE issuer.{table} ENABLE ROW LEVEL SECURITY')
        # FORCE: the issuer's role owns these tables, and an owner is otherwise exempt from its own policies.
        op.execute(f'ALTER TABLE issuer.{table} FORCE ROW LEVEL SECURITY')
        op.execute(f'CREATE POLICY tenant_rows ON issuer.{table} USING {own} WITH CHECK {own}')


def downgrade() -> None:
    for table in OWN:
        op.execute(f'DROP POLICY IF EXISTS tenant_rows ON issuer.{table}')
        op.execute(f'ALTER TABLE issuer.{table} NO FORCE ROW LEVEL SECURITY')
        op.execute(f'ALTER TABLE issuer.{table} DISABLE ROW LEVEL SECURITY')
