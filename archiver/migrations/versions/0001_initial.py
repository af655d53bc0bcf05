"""initial schema: inbox, events, streams, segments, keys, tiles

Revision ID: 0001
Revises: 
"""

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('data_keys',
    sa.Column('key_id', sa.String(length=80), nullable=False),
    sa.Column('purpose', sa.String(length=16), nullable=False),
    sa.Column('wrapped', sa.LargeBinary(), nullable=True),
    sa.Column('kek_id', sa.String(length=80), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('destroyed_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('key_id')
    )
    op.create_table('inbox',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('body_sha256', sa.String(length=64), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('signature', sa.String(length=80), nullable=False),
    sa.Column('key_id', sa.String(length=80), nullable=False),
    sa.Column('nonce', sa.LargeBinary(), nullable=False),
    sa.Column('ciphertext', sa.LargeBinary(), nullable=True),
    sa.Column('state', sa.String(length=16), server_default='pending', nullable=False),
    sa.Column('deliveries', sa.Integer(), server_default='1', nullable=False),
    sa.Column('normalized_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('purged_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('body_sha256')
    )
    with op.batch_alter_table('inbox', schema=None) as batch_op:
        batch_op.create_index('ix_inbox_state', ['state', 'id'], unique=False)

    op.create_table('merkle_tiles',
    sa.Column('stream', sa.String(length=128), nullable=False),
    sa.Column('level', sa.Integer(), nullable=False),
    sa.Column('chunk', sa.BigInteger(), nullable=False),
    sa.Column('hashes', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('stream', 'level', 'chunk')
    )
    op.create_table('segments',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('stream', sa.String(length=128), nullable=False),
    sa.Column('first_seq', sa.BigInteger(), nullable=False),
    sa.Column('last_seq', sa.BigInteger(), nullable=False),
    sa.Column('object_key', sa.String(length=512), nullable=False),
    sa.Column('version_id', sa.String(length=128), nullable=True),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('retain_until', sa.DateTime(timezone=True), nullable=False),
    sa.Column('head_hash', sa.String(length=64), nullable=False),
    sa.Column('root_hash', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('checkpoint_key', sa.String(length=512), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('object_key'),
    sa.UniqueConstraint('stream', 'first_seq', name='uq_segments_stream_first')
    )
    op.create_table('streams',
    sa.Column('stream', sa.String(length=128), nullable=False),
    sa.Column('tree_size', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('head_hash', sa.String(length=64), nullable=False),
    sa.Column('root_hash', sa.String(length=64), nullable=False),
    sa.Column('pending_key', sa.String(length=512), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('stream')
    )
    op.create_table('events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('stream', sa.String(length=128), nullable=False),
    sa.Column('natural_key', sa.String(length=400), nullable=False),
    sa.Column('inbox_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('tenant', sa.String(length=64), nullable=True),
    sa.Column('field', sa.String(length=64), nullable=True),
    sa.Column('wamid', sa.String(length=256), nullable=True),
    sa.Column('conversation', sa.String(length=64), nullable=True),
    sa.Column('direction', sa.String(length=16), nullable=True),
    sa.Column('origin', sa.String(length=16), nullable=True),
    sa.Column('sender', sa.String(length=64), nullable=True),
    sa.Column('recipient', sa.String(length=64), nullable=True),
    sa.Column('type', sa.String(length=64), nullable=True),
    sa.Column('status', sa.String(length=32), nullable=True),
    sa.Column('template_name', sa.String(length=512), nullable=True),
    sa.Column('template_language', sa.String(length=32), nullable=True),
    sa.Column('event_time', sa.DateTime(timezone=True), nullable=True),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('modelled', sa.Boolean(), nullable=False),
    sa.Column('envelope_sha256', sa.String(length=64), nullable=True),
    sa.Column('subject_key_id', sa.String(length=400), nullable=True),
    sa.Column('nonce', sa.LargeBinary(), nullable=True),
    sa.Column('content', sa.LargeBinary(), nullable=True),
    sa.Column('seq', sa.BigInteger(), nullable=True),
    sa.Column('segment_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.ForeignKeyConstraint(['inbox_id'], ['inbox.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('stream', 'natural_key', name='uq_events_stream_key')
    )
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.create_index('ix_events_inbox', ['inbox_id'], unique=False)
        batch_op.create_index('ix_events_pending', ['stream', 'seq', 'id'], unique=False)

    op.create_table('inbox_deliveries',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('inbox_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['inbox_id'], ['inbox.id'], ),
    sa.PrimaryKeyConstraint('id')
    )


def downgrade() -> None:
    op.drop_table('inbox_deliveries')
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_index('ix_events_pending')
        batch_op.drop_index('ix_events_inbox')

    op.drop_table('events')
    op.drop_table('streams')
    op.drop_table('segments')
    op.drop_table('merkle_tiles')
    with op.batch_alter_table('inbox', schema=None) as batch_op:
        batch_op.drop_index('ix_inbox_state')

    op.drop_table('inbox')
    op.drop_table('data_keys')
