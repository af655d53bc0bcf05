"""capture: identity bindings, media jobs, referenced wamids

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
Ts = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('ref_wamid', sa.String(length=256), nullable=True))
        # a raw history chunk is about every person in it: hundreds of key ids
        batch_op.alter_column('subject_key_id', type_=sa.Text(), existing_type=sa.String(length=400),
                              existing_nullable=True)
        batch_op.create_index('ix_events_wamid', ['stream', 'wamid'], unique=False)
        batch_op.create_index('ix_events_kind_time', ['stream', 'kind', 'event_time'], unique=False)
    op.create_table('identities',
    sa.Column('id', BigId, autoincrement=True, nullable=False),
    sa.Column('namespace', sa.String(length=8), nullable=False),
    sa.Column('blind_index', sa.String(length=64), nullable=False),
    sa.Column('subject', sa.String(length=40), nullable=False),
    sa.Column('valid_from', sa.BigInteger(), nullable=False),
    sa.Column('valid_to', sa.BigInteger(), nullable=False),
    sa.Column('evidence', sa.String(length=400), nullable=False),
    sa.Column('created_at', Ts, nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('namespace', 'blind_index', 'valid_from', name='uq_identities_start')
    )
    op.create_index('ix_identities_subject', 'identities', ['subject'], unique=False)
    op.create_table('media',
    sa.Column('id', BigId, autoincrement=True, nullable=False),
    sa.Column('stream', sa.String(length=128), nullable=False),
    sa.Column('media_id', sa.String(length=128), nullable=False),
    sa.Column('wamid', sa.String(length=256), nullable=True),
    sa.Column('message_key', sa.String(length=400), nullable=False),
    sa.Column('subject_key_id', sa.Text(), nullable=False),
    sa.Column('meta_sha256', sa.String(length=128), nullable=True),
    sa.Column('url', sa.String(length=2048), nullable=True),
    sa.Column('mime_type', sa.String(length=128), nullable=True),
    sa.Column('message_time', Ts, nullable=True),
    sa.Column('state', sa.String(length=16), server_default='pending', nullable=False),
    sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('next_attempt_at', Ts, nullable=False),
    sa.Column('last_error', sa.String(length=200), nullable=True),
    sa.Column('object_key', sa.String(length=512), nullable=True),
    sa.Column('size', sa.BigInteger(), nullable=True),
    sa.Column('created_at', Ts, nullable=False),
    sa.Column('updated_at', Ts, nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('stream', 'media_id', name='uq_media_stream_id')
    )
    op.create_index('ix_media_due', 'media', ['state', 'next_attempt_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_media_due', table_name='media')
    op.drop_table('media')
    op.drop_index('ix_identities_subject', table_name='identities')
    op.drop_table('identities')
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_index('ix_events_kind_time')
        batch_op.drop_index('ix_events_wamid')
        batch_op.drop_column('ref_wamid')
        batch_op.alter_column('subject_key_id', type_=sa.String(length=400), existing_type=sa.Text(),
                              existing_nullable=True)
