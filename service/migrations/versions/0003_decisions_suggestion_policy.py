"""decisions.suggestion, policy_name, policy_version, reasons: the audit decision and the policy that made it.

Every answer since issue 28 carries a suggestion (pass / review / block), the reasons that fired and the
policy (name, version); the review queue selects by suggestion, hence its index. Rows logged before
this revision keep NULL in the four columns.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("decisions", sa.Column("suggestion", sa.String(16), nullable=True))
    op.add_column("decisions", sa.Column("policy_name", sa.String(64), nullable=True))
    op.add_column("decisions", sa.Column("policy_version", sa.String(32), nullable=True))
    op.add_column("decisions", sa.Column("reasons", sa.JSON(), nullable=True))
    op.create_index("ix_decisions_suggestion", "decisions", ["suggestion"])


def downgrade() -> None:
    with op.batch_alter_table("decisions") as batch:  # SQLite: the table is copied without the columns
        batch.drop_index("ix_decisions_suggestion")
        batch.drop_column("reasons")
        batch.drop_column("policy_version")
        batch.drop_column("policy_name")
        batch.drop_column("suggestion")
