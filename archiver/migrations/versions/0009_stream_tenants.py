"""stream tenants: each business number bound once to its WABA, by evidence

Existing archives: each stream is bound to the tenant of its earliest webhook-derived event (the
send log's entries, which any ingest key could label, are not evidence).

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

Ts = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table('stream_tenants',
    sa.Column('stream', sa.String(length=128), nullable=False),
    sa.Column('tenant', sa.String(length=64), nullable=False),
    sa.Column('bound_at', Ts, nullable=False),
    sa.Column('evidence', sa.String(length=200), nullable=False),
    sa.PrimaryKeyConstraint('stream')
    )
    op.execute(
        "INSERT INTO stream_tenants (stream, tenant, bound_at, evidence) "
        "SELECT e.stream, e.tenant, e.received_at, 'migration:earliest webhook event' FROM events e "
        "JOIN (SELECT stream, min(id) AS id FROM events WHERE tenant IS NOT NULL AND inbox_id IS NOT NULL "
        "      AND (field IS NULL OR field <> 'send_log') AND stream NOT IN ('audit', 'unrouted') "
        "      GROUP BY stream) first ON first.id = e.id")


def downgrade() -> None:
    op.drop_table('stream_tenants')
