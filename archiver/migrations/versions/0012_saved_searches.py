"""saved searches: a person's own queries and filters, encrypted (audit/saved.py)

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('saved_searches',
    sa.Column('id', sa.String(length=26), nullable=False),
    sa.Column('principal_id', sa.String(length=200), nullable=False),
    sa.Column('sealed', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_saved_searches_principal', 'saved_searches', ['principal_id', 'created_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_saved_searches_principal', table_name='saved_searches')
    op.drop_table('saved_searches')
