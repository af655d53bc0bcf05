"""proposals: irreversible decisions (erasure, retention schedule, hold release, key rotations)
proposed by one principal and carried out when a second approves (policies/proposals.py)

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None

Ts = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table('proposals',
    sa.Column('id', sa.String(length=26), nullable=False),
    sa.Column('action', sa.String(length=40), nullable=False),
    sa.Column('summary', sa.String(length=400), nullable=False),
    sa.Column('nonce', sa.LargeBinary(), nullable=False),
    sa.Column('params', sa.LargeBinary(), nullable=False),
    sa.Column('proposer_id', sa.String(length=26), nullable=False),
    sa.Column('proposer', sa.String(length=200), nullable=False),
    sa.Column('reason', sa.String(length=1000), nullable=False),
    sa.Column('created_at', Ts, nullable=False),
    sa.Column('expires_at', Ts, nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('decided_by', sa.String(length=200), nullable=True),
    sa.Column('decided_at', Ts, nullable=True),
    sa.Column('decision_reason', sa.String(length=1000), nullable=True),
    sa.Column('result', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )


def downgrade() -> None:
    op.drop_table('proposals')
