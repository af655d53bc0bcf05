"""export transfers: every hand-over of a produced bundle after production (chain of custody)

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

Ts = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table('export_transfers',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('export_id', sa.String(length=26), nullable=False),
    sa.Column('at', Ts, nullable=False),
    sa.Column('actor', sa.String(length=200), nullable=False),
    sa.Column('method', sa.String(length=100), nullable=False),
    sa.Column('manifest_sha256', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['export_id'], ['exports.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_export_transfers_export', 'export_transfers', ['export_id', 'id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_export_transfers_export', table_name='export_transfers')
    op.drop_table('export_transfers')
