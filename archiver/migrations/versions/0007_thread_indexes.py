"""thread indexes: events by conversation (threads, exports) and by referenced message (attachments)

Revision ID: 0007
Revises: 0006
"""

from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_events_conversation', 'events', ['conversation', 'event_time'], unique=False)
    op.create_index('ix_events_ref_wamid', 'events', ['stream', 'ref_wamid'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_events_ref_wamid', table_name='events')
    op.drop_index('ix_events_conversation', table_name='events')
