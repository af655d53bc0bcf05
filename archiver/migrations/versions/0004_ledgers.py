"""ledgers: consent events, template events, ledger cursors

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
Ts = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table('consent_events',
    sa.Column('id', BigId, autoincrement=True, nullable=False),
    sa.Column('stream', sa.String(length=128), nullable=False),
    sa.Column('subject', sa.String(length=40), nullable=False),
    sa.Column('category', sa.String(length=32), nullable=False),
    sa.Column('action', sa.String(length=16), nullable=False),
    sa.Column('method', sa.String(length=64), nullable=False),
    sa.Column('evidence_sha256', sa.String(length=64), nullable=True),
    sa.Column('evidence_ref', sa.String(length=200), nullable=True),
    sa.Column('actor', sa.String(length=200), nullable=False),
    sa.Column('at', Ts, nullable=False),
    sa.Column('recorded_at', Ts, nullable=False),
    sa.Column('source', sa.String(length=400), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('stream', 'source', 'category', 'action', name='uq_consent_source')
    )
    op.create_index('ix_consent_lookup', 'consent_events', ['stream', 'subject', 'category', 'at'], unique=False)
    op.create_table('ledger_cursors',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('last_id', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('template_events',
    sa.Column('id', BigId, autoincrement=True, nullable=False),
    sa.Column('tenant', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=512), nullable=False),
    sa.Column('language', sa.String(length=32), nullable=False),
    sa.Column('status', sa.String(length=32), nullable=True),
    sa.Column('category', sa.String(length=32), nullable=True),
    sa.Column('body_sha256', sa.String(length=64), nullable=True),
    sa.Column('reason', sa.String(length=200), nullable=True),
    sa.Column('at', Ts, nullable=False),
    sa.Column('recorded_at', Ts, nullable=False),
    sa.Column('source', sa.String(length=400), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('source')
    )
    op.create_index('ix_template_lookup', 'template_events', ['tenant', 'name', 'language', 'at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_template_lookup', table_name='template_events')
    op.drop_table('template_events')
    op.drop_table('ledger_cursors')
    op.drop_index('ix_consent_lookup', table_name='consent_events')
    op.drop_table('consent_events')
