"""review items: when each falls due (the policy's SLA), the term a false positive named, a lookup by record

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('review_items', sa.Column('due_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('review_items', sa.Column('fp_term', sa.String(length=1000), nullable=True))
    op.create_index('ix_review_items_record', 'review_items', ['stream', 'natural_key'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_review_items_record', table_name='review_items')
    op.drop_column('review_items', 'fp_term')
    op.drop_column('review_items', 'due_at')
