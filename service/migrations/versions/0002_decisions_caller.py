"""decisions.caller: the API key's name ("anonymous" without keys), and its index.

Before migrations the gateway added this column at start with an ad-hoc ALTER TABLE (without the
index); a database in that state is stamped 0002 and given the index (schema.adopt_unversioned).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("decisions", sa.Column("caller", sa.String(64), nullable=True))
    op.create_index("ix_decisions_caller", "decisions", ["caller"])


def downgrade() -> None:
    with op.batch_alter_table("decisions") as batch:  # SQLite: the table is copied without the column
        batch.drop_index("ix_decisions_caller")
        batch.drop_column("caller")
