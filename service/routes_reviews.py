"""Review routes: the review queue and the pictures of its ads, reviewed accuracy per model (feedback joined
with decisions) and the shadow disagreements waiting for a human look.

The review loop (issue 28, docs/console.md): an ad the policy answered `review` waits in
`GET /v1/reviews/queue` (oldest first, paged by `after`, the cursor the previous page returned) until a
reviewer's `POST /v1/audits/{request_id}/feedback` closes it. The queue carries what a reviewer needs
beside the decision: the copy, and where to fetch the picture (`GET /v1/reviews/{request_id}/picture`),
both kept for review ads only while `review_store_ads` is on. `GET /v1/taxonomy` names the labels a reviewer
gives: the primary model's tasks and classes and their roles, what feedback is checked against, from which
the console builds its buttons and keys (no class name is written into the console). Every route here is
behind the API keys.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Depends, Path, Query, Response
from pydantic import BaseModel, Field

from .decision_log import UnknownCursor
from .dependencies import get_gateway, in_log
from .errors import ApiError, unprocessable
from .gateway import Gateway
from .schemas import AccuracyRow, Disagreement, ErrorBody, PolicyRef, Reason, TermHit

router = APIRouter(prefix="/v1", tags=["reviews"])
CURSOR = Query(None, min_length=1, max_length=64, description="the `next` of the previous page: items after it")


class QueueItem(BaseModel):
    request_id: str
    created_at: datetime
    ad_id: str | None = None
    model: str
    version: str
    arm: str
    suggestion: str = Field(description="review (a reviewer decides), or the automatic pass or block an audit "
                            "sample checks (`queued`: sample)")
    queued: Literal["review", "sample"] = Field(description="review: the policy asked for a reviewer; sample: an "
                                                "automatic decision drawn for audit (review_sample_rate)")
    verdict: str = Field(description="the model's lean, shown to the reviewer (docs/decisions.md)")
    violation: str
    scores: dict[str, float]
    reasons: list[Reason]
    policy: PolicyRef | None
    term_hits: list[TermHit]
    copy_text: str | None = Field(None, alias="copy", description="the ad's copy (none: not kept)")
    picture_url: str | None = Field(None, description="where the picture is served (none: not kept)")
    evidence: dict | list | None = Field(None, description="the model's evidence, where the answer carried it")


class TaxonomyResponse(BaseModel):
    """The primary model's taxonomy (models/labels.py `Taxonomy`, with the two verdicts it derives), so a client
    labels in the served model's names rather than names of its own that feedback would refuse."""

    tasks: dict[str, list[str]] = Field(description="every task the model predicts and its classes, in the "
                                        "order of the model's logits")
    verdict_task: str = Field(description="the verdict-like decision")
    reject_classes: list[str] = Field(description="the verdict task's classes that reject an ad")
    approve_class: str = Field(description="the verdict answered when nothing rejects")
    reject_class: str = Field(description="the verdict answered when an ad is rejected (the first rejecting class)")
    reason_task: str = Field(description="the task that says why: an ad is rejected exactly when its reason is "
                             "not the clean class")
    clean_class: str = Field(description="the reason task's class meaning nothing is wrong")
    mismatch_class: str | None = Field(description="the reason task's class of a copy selling something other "
                                       "than its picture shows (none: the taxonomy has no such class)")


class ReviewQueue(BaseModel):
    items: list[QueueItem]
    next: str | None = Field(description="the cursor of the next page (`after`); none: this is the last")


@router.get("/reviews/queue", response_model=ReviewQueue, response_model_by_alias=True,
            responses={422: {"model": ErrorBody}}, summary="Ads waiting for a reviewer, oldest first")
async def review_queue(limit: int = Query(20, ge=1, le=200), after: str | None = CURSOR,
                       gateway: Gateway = Depends(get_gateway)):
    try:
        items, cursor = await in_log(gateway.log.review_queue, limit, after)
    except UnknownCursor:
        raise unprocessable("unknown_cursor", f"after={after} is no request_id of the decision log: pass the "
                            "`next` a previous page returned") from None
    return {"items": items, "next": cursor}


@router.get("/taxonomy", response_model=TaxonomyResponse, responses={503: {"model": ErrorBody}},
            summary="The primary model's tasks and classes: the labels feedback takes")
async def primary_taxonomy(gateway: Gateway = Depends(get_gateway)):
    taxonomy = await gateway.taxonomy()  # the one feedback is checked against; 503 while the backend cannot say
    return {**taxonomy.as_config(), "approve_class": taxonomy.approve_class, "reject_class": taxonomy.reject_class}


@router.get("/reviews/{request_id}/picture", response_class=Response, responses={
    200: {"content": {"image/png": {}, "image/jpeg": {}}, "description": "the picture as the advertiser sent it"},
    404: {"model": ErrorBody}}, summary="The picture of an ad in the review queue")
async def review_picture(request_id: str = Path(min_length=1, max_length=64),
                         gateway: Gateway = Depends(get_gateway)):
    found = await in_log(gateway.log.review_picture, request_id)
    if found is None:
        raise ApiError(404, "unknown_review_item", f"no picture kept for {request_id}: not an ad answered "
                       "review, or review_store_ads was off")
    picture, media_type = found
    # the ad's bytes as sent, never interpreted by a browser as anything but the image type sniffed at intake
    return Response(picture, media_type=media_type, headers={"Cache-Control": "private, max-age=3600",
                                                             "X-Content-Type-Options": "nosniff"})


@router.get("/reviews/accuracy", response_model=list[AccuracyRow],
            summary="Reviewed accuracy per model, version and task")
async def reviewed_accuracy(gateway: Gateway = Depends(get_gateway)):
    return await in_log(gateway.log.accuracy)


@router.get("/shadow/disagreements", response_model=list[Disagreement],
            summary="The latest ads where the shadow model disagreed with the answer")
async def shadow_disagreements(limit: int = Query(50, ge=1, le=1000), gateway: Gateway = Depends(get_gateway)):
    return await in_log(gateway.log.disagreements, limit)
