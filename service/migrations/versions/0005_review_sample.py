"""decisions.review_sample: automatic passes and blocks drawn for a reviewer's audit.

Reviewers see only the ads the policy answered `review` unless something sends them automatic decisions too;
without that, the reviewed precision of automatic passes and blocks (the figure the automation rate is
traded against) is never measured. The gateway draws a share of them (`review_sample_rate`) into the review
queue; this column marks them. Rows logged before this revision keep NULL (not drawn).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("decisions", sa.Column("review_sample", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("decisions") as batch:  # SQLite: the table is copied without the column
        batch.drop_column("review_sample")
