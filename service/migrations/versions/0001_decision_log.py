"""The decision log as the first gateway created it: decisions (without caller), feedback, shadow_disagreements.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "decisions",
        sa.Column("request_id", sa.String(32), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ad_id", sa.String(128), nullable=True),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("arm", sa.String(16), nullable=False),
        sa.Column("verdict", sa.String(32), nullable=False),
        sa.Column("violation", sa.String(32), nullable=False),
        sa.Column("violation_score", sa.Float(), nullable=False),
        sa.Column("outputs", sa.JSON(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("shadowed", sa.Boolean(), nullable=False),
    )
    op.create_index("ix_decisions_created_at", "decisions", ["created_at"])
    op.create_index("ix_decisions_ad_id", "decisions", ["ad_id"])

    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(32), sa.ForeignKey("decisions.request_id"), nullable=False),
        sa.Column("task", sa.String(32), nullable=False),
        sa.Column("label", sa.String(32), nullable=False),
        sa.Column("predicted", sa.String(32), nullable=False),
        sa.Column("correct", sa.Boolean(), nullable=False),
        sa.Column("reviewer", sa.String(128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("request_id", "task"),  # unnamed, as create_all made it
    )
    op.create_index("ix_feedback_request_id", "feedback", ["request_id"])

    op.create_table(
        "shadow_disagreements",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("primary_model", sa.String(64), nullable=False),
        sa.Column("primary_version", sa.String(32), nullable=False),
        sa.Column("shadow_model", sa.String(64), nullable=False),
        sa.Column("shadow_version", sa.String(32), nullable=False),
        sa.Column("primary_outputs", sa.JSON(), nullable=False),
        sa.Column("shadow_outputs", sa.JSON(), nullable=False),
    )
    op.create_index("ix_shadow_disagreements_request_id", "shadow_disagreements", ["request_id"])
    op.create_index("ix_shadow_disagreements_created_at", "shadow_disagreements", ["created_at"])


def downgrade() -> None:
    op.drop_table("shadow_disagreements")
    op.drop_table("feedback")
    op.drop_table("decisions")
