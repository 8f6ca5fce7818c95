"""The decision log's tables (SQLAlchemy), declared once: the log writes and reads them, the migrations
(service/migrations/) must make exactly them (tests/test_migrations.py compares the two)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (JSON, Boolean, DateTime, Float, ForeignKey, Integer, LargeBinary, String, Text,
                        UniqueConstraint)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class DecisionRow(Base):
    __tablename__ = "decisions"
    request_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    ad_id: Mapped[str | None] = mapped_column(String(128), index=True)
    model: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(32))
    arm: Mapped[str] = mapped_column(String(16))
    verdict: Mapped[str] = mapped_column(String(32))
    violation: Mapped[str] = mapped_column(String(32))
    violation_score: Mapped[float] = mapped_column(Float)
    outputs: Mapped[dict] = mapped_column(JSON)
    latency_ms: Mapped[float] = mapped_column(Float)
    shadowed: Mapped[bool] = mapped_column(Boolean, default=False)
    caller: Mapped[str | None] = mapped_column(String(64), index=True)
    # the audit decision (revision 0003; NULL on rows logged before it): pass / review / block, the rules
    # that fired (a JSON list) and the policy that decided
    suggestion: Mapped[str | None] = mapped_column(String(16), index=True)
    policy_name: Mapped[str | None] = mapped_column(String(64))
    policy_version: Mapped[str | None] = mapped_column(String(32))
    reasons: Mapped[list | None] = mapped_column(JSON)
    # an automatic pass or block drawn for a reviewer's audit (revision 0005; NULL before it): the review queue
    # lists it beside the ads answered `review`, so reviewed precision is measured on an unbiased sample
    review_sample: Mapped[bool | None] = mapped_column(Boolean)


class FeedbackRow(Base):
    __tablename__ = "feedback"
    __table_args__ = (UniqueConstraint("request_id", "task"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("decisions.request_id"), index=True)
    task: Mapped[str] = mapped_column(String(32))
    label: Mapped[str] = mapped_column(String(32))
    predicted: Mapped[str] = mapped_column(String(32))
    correct: Mapped[bool] = mapped_column(Boolean)
    reviewer: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ReviewItemRow(Base):
    """What a reviewer needs to judge an ad the policy sent to review: its picture and copy (revision 0004).
    Only ads in the review queue get a row: answered `review`, or drawn for audit (`review_sample`); the decision
    log keeps no ad content otherwise, and none while the setting `review_store_ads` is off. The review queue
    reads them, and `GET /v1/reviews/{id}/picture`; `adaudit db prune-review-items` deletes old ones."""
    __tablename__ = "review_items"
    request_id: Mapped[str] = mapped_column(ForeignKey("decisions.request_id"), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    picture: Mapped[bytes] = mapped_column(LargeBinary)
    media_type: Mapped[str] = mapped_column(String(32))
    copy: Mapped[str] = mapped_column(Text)


class DisagreementRow(Base):
    __tablename__ = "shadow_disagreements"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(32), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    primary_model: Mapped[str] = mapped_column(String(64))
    primary_version: Mapped[str] = mapped_column(String(32))
    shadow_model: Mapped[str] = mapped_column(String(64))
    shadow_version: Mapped[str] = mapped_column(String(32))
    primary_outputs: Mapped[dict] = mapped_column(JSON)
    shadow_outputs: Mapped[dict] = mapped_column(JSON)
