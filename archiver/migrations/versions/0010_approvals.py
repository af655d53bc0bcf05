"""approvals and enrolment: an account or key that reads content works once a compliance officer
approved it; an account made through the API gets its secrets at the person's first sign-in

Existing accounts and keys were made before approvals existed: they count as approved by the
migration (their creation is on the audit stream).

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

Ts = sa.DateTime(timezone=True)


def upgrade() -> None:
    for table in ('principals', 'api_keys'):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column('approved_by', sa.String(length=200), nullable=True))
            batch.add_column(sa.Column('approved_at', Ts, nullable=True))
        op.execute(f"UPDATE {table} SET approved_by = 'migration 0010', approved_at = created_at")
    op.create_table('enrolments',
    sa.Column('code_sha256', sa.String(length=64), nullable=False),
    sa.Column('principal_id', sa.String(length=26), nullable=False),
    sa.Column('expires_at', Ts, nullable=False),
    sa.Column('used_at', Ts, nullable=True),
    sa.ForeignKeyConstraint(['principal_id'], ['principals.id'], ),
    sa.PrimaryKeyConstraint('code_sha256')
    )


def downgrade() -> None:
    op.drop_table('enrolments')
    for table in ('principals', 'api_keys'):
        with op.batch_alter_table(table) as batch:
            batch.drop_column('approved_at')
            batch.drop_column('approved_by')
