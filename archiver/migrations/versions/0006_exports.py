"""exports: export jobs of the auditor API

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

Ts = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table('exports',
    sa.Column('id', sa.String(length=26), nullable=False),
    sa.Column('matter', sa.String(length=200), nullable=False),
    sa.Column('requested_by', sa.String(length=200), nullable=False),
    sa.Column('principal_id', sa.String(length=200), nullable=False),
    sa.Column('scope', sa.Text(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('created_at', Ts, nullable=False),
    sa.Column('finished_at', Ts, nullable=True),
    sa.Column('error', sa.String(length=400), nullable=True),
    sa.Column('manifest_sha256', sa.String(length=64), nullable=True),
    sa.Column('counts', sa.Text(), nullable=True),
    sa.Column('size', sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )


def downgrade() -> None:
    op.drop_table('exports')
