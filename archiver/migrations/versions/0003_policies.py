"""policies: retention schedules, legal holds, dispositions, erasure decisions

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

Ts = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table('segments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('retention_rule', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('disposed_at', Ts, nullable=True))
        batch_op.add_column(sa.Column('disposition_id', sa.String(length=26), nullable=True))
    with op.batch_alter_table('media', schema=None) as batch_op:
        batch_op.add_column(sa.Column('version_id', sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column('retain_until', Ts, nullable=True))
        batch_op.add_column(sa.Column('disposed_at', Ts, nullable=True))
        batch_op.add_column(sa.Column('disposition_id', sa.String(length=26), nullable=True))
    op.create_table('retention_schedules',
    sa.Column('version', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('document', sa.Text(), nullable=False),
    sa.Column('actor', sa.String(length=200), nullable=False),
    sa.Column('created_at', Ts, nullable=False),
    sa.PrimaryKeyConstraint('version')
    )
    op.create_table('holds',
    sa.Column('id', sa.String(length=26), nullable=False),
    sa.Column('matter', sa.String(length=200), nullable=False),
    sa.Column('scope', sa.Text(), nullable=False),
    sa.Column('placed_by', sa.String(length=200), nullable=False),
    sa.Column('placed_at', Ts, nullable=False),
    sa.Column('released_at', Ts, nullable=True),
    sa.Column('released_by', sa.String(length=200), nullable=True),
    sa.Column('release_reason', sa.String(length=1000), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('hold_objects',
    sa.Column('hold_id', sa.String(length=26), nullable=False),
    sa.Column('object_key', sa.String(length=512), nullable=False),
    sa.Column('version_id', sa.String(length=128), nullable=True),
    sa.Column('applied_at', Ts, nullable=False),
    sa.ForeignKeyConstraint(['hold_id'], ['holds.id']),
    sa.PrimaryKeyConstraint('hold_id', 'object_key')
    )
    op.create_table('erasures',
    sa.Column('id', sa.String(length=26), nullable=False),
    sa.Column('subject', sa.String(length=40), nullable=False),
    sa.Column('requested_by', sa.String(length=200), nullable=False),
    sa.Column('requested_at', Ts, nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('decision', sa.Text(), nullable=False),
    sa.Column('retention_end', Ts, nullable=True),
    sa.Column('shredded_at', Ts, nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_erasures_state', 'erasures', ['state'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_erasures_state', table_name='erasures')
    op.drop_table('erasures')
    op.drop_table('hold_objects')
    op.drop_table('holds')
    op.drop_table('retention_schedules')
    with op.batch_alter_table('media', schema=None) as batch_op:
        for c in ('disposition_id', 'disposed_at', 'retain_until', 'version_id'):
            batch_op.drop_column(c)
    with op.batch_alter_table('segments', schema=None) as batch_op:
        for c in ('disposition_id', 'disposed_at', 'retention_rule'):
            batch_op.drop_column(c)
