"""review_items: the picture and copy of each ad answered `review`, for the reviewer (issue 28, the review loop).

The review queue (`GET /v1/reviews/queue`) shows a reviewer the ad itself, which the decision log did not
keep: one row per ad whose suggestion is `review` (only those: passed and blocked ads leave no content
behind), written with its decision; the setting `review_store_ads` turns this off. Rows logged before
this revision have no item: the queue lists them without picture and copy.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "review_items",
        sa.Column("request_id", sa.String(32), sa.ForeignKey("decisions.request_id"), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("picture", sa.LargeBinary(), nullable=False),
        sa.Column("media_type", sa.String(32), nullable=False),
        sa.Column("copy", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("review_items")
