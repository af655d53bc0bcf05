"""supervision: versioned review policies, committed sampling seeds, review items (review/supervision.py)

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None

Ts = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table('review_policies',
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('document', sa.Text(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('created_by', sa.String(length=200), nullable=False),
    sa.Column('created_at', Ts, nullable=False),
    sa.PrimaryKeyConstraint('name', 'version')
    )
    op.create_table('review_seeds',
    sa.Column('policy', sa.String(length=100), nullable=False),
    sa.Column('month', sa.String(length=7), nullable=False),
    sa.Column('seed', sa.String(length=64), nullable=False),
    sa.Column('committed_at', Ts, nullable=False),
    sa.PrimaryKeyConstraint('policy', 'month')
    )
    op.create_table('review_items',
    sa.Column('id', sa.String(length=26), nullable=False),
    sa.Column('policy', sa.String(length=100), nullable=False),
    sa.Column('policy_version', sa.Integer(), nullable=False),
    sa.Column('event_id', sa.BigInteger(), nullable=False),
    sa.Column('stream', sa.String(length=128), nullable=False),
    sa.Column('natural_key', sa.String(length=400), nullable=False),
    sa.Column('tenant', sa.String(length=64), nullable=True),
    sa.Column('conversation', sa.String(length=64), nullable=True),
    sa.Column('event_time', Ts, nullable=True),
    sa.Column('reason', sa.String(length=16), nullable=False),
    sa.Column('hits', sa.Text(), nullable=False),
    sa.Column('queue', sa.String(length=100), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('level', sa.Integer(), server_default='1', nullable=False),
    sa.Column('assignee', sa.String(length=200), nullable=True),
    sa.Column('disposition', sa.String(length=32), nullable=True),
    sa.Column('closed_by', sa.String(length=200), nullable=True),
    sa.Column('closed_at', Ts, nullable=True),
    sa.Column('created_at', Ts, nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('policy', 'stream', 'natural_key', name='uq_review_item')
    )
    op.create_index('ix_review_items_queue', 'review_items', ['queue', 'state', 'created_at'], unique=False)
    op.create_table('review_actions',
    sa.Column('id', sa.String(length=26), nullable=False),
    sa.Column('item_id', sa.String(length=26), nullable=False),
    sa.Column('action', sa.String(length=16), nullable=False),
    sa.Column('actor', sa.String(length=200), nullable=False),
    sa.Column('at', Ts, nullable=False),
    sa.Column('details', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_review_actions_item', 'review_actions', ['item_id', 'at'], unique=False)
    op.create_table('review_staff',
    sa.Column('stream', sa.String(length=128), nullable=False),
    sa.Column('person', sa.String(length=200), nullable=False),
    sa.PrimaryKeyConstraint('stream', 'person')
    )


def downgrade() -> None:
    op.drop_table('review_staff')
    op.drop_index('ix_review_actions_item', table_name='review_actions')
    op.drop_table('review_actions')
    op.drop_index('ix_review_items_queue', table_name='review_items')
    op.drop_table('review_items')
    op.drop_table('review_seeds')
    op.drop_table('review_policies')
