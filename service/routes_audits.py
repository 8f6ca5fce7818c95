"""`/v1/audits`: audit one ad (JSON or multipart) or a batch, read a logged decision, give feedback.

The routes only parse and check (bodies.py, intake.py) and hand checked ads to the gateway;
the request bodies are read by hand (two content types on one route, a size limit while
reading), so their schemas are declared for the OpenAPI docs with `openapi_extra`. The audit
answers are written by `answers.json_answer` (why: see answers.py).
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Path, Request

from . import bodies
from .answers import AUDIT_RESULT, BATCH_RESPONSE, json_answer
from .dependencies import get_gateway, in_log
from .decision_log import FeedbackExists, UnknownRequest
from .errors import ApiError, unprocessable
from .gateway import Gateway
from .schemas import AuditRequest, AuditResult, BatchResponse, Decision, ErrorBody, FeedbackRequest, FeedbackResponse
from .security import ANONYMOUS

router = APIRouter(prefix="/v1", tags=["audits"])

JSON, MULTIPART = "application/json", "multipart/form-data"
FEEDBACK_BODY_LIMIT = 64 * 1024
ERRORS = {status: {"model": ErrorBody, "description": text} for status, text in {
    400: "not an image, a truncated image, text not UTF-8 or empty, malformed JSON",
    401: "no valid API key (when api_keys are configured)",
    413: "body, image or batch over the limit, decompression bomb",
    415: "wrong Content-Type", 422: "a field missing or invalid, text too long",
    429: "the caller is over its rate limit (Retry-After)",
    503: "overloaded (max_in_flight), the model backend unreachable or the model not ready, or the decision "
         "log unavailable (Retry-After)"}.items()}
MULTIPART_SCHEMA = {"type": "object", "required": ["image", "text"], "properties": {
    "image": {"type": "string", "format": "binary"}, "text": {"type": "string"},
    "ad_id": {"type": "string", "maxLength": 128}, "explain": {"type": "boolean", "default": False}}}


def request_body(*content: tuple[str, dict]) -> dict:
    return {"requestBody": {"required": True, "content": {media: {"schema": schema} for media, schema in content}}}


RequestId = Path(min_length=1, max_length=64, description="the request_id an audit returned")


def caller_of(request: Request) -> str:
    return getattr(request.state, "caller", ANONYMOUS)  # set by security.authenticate on every /v1 route


@router.post("/audits", response_model=AuditResult, responses=ERRORS, summary="Audit one ad",
             openapi_extra=request_body((JSON, AuditRequest.model_json_schema()), (MULTIPART, MULTIPART_SCHEMA)))
async def create_audit(request: Request, gateway: Gateway = Depends(get_gateway)):
    received = time.perf_counter()
    media = bodies.media_type(request)
    if media not in (JSON, MULTIPART):
        raise bodies.unsupported(media, f"{JSON} or {MULTIPART}")
    body = await bodies.read_body(request, gateway.settings.body_limit(1))
    if media == JSON:
        raw = bodies.audit_from_json(bodies.parse_json(body), gateway.settings.max_image_bytes)
    else:
        raw = bodies.audit_from_multipart(body, request.headers["content-type"])
    request.state.model = gateway.policy.primary.model
    (result,) = await gateway.audit([raw], received, caller_of(request))
    request.state.model = result["model"]
    return json_answer(AUDIT_RESULT, result)


@router.post("/audits:batch", response_model=BatchResponse, responses=ERRORS, summary="Audit up to max_batch ads",
             openapi_extra=request_body((JSON, {"type": "object", "required": ["items"], "properties": {
                 "items": {"type": "array", "items": AuditRequest.model_json_schema()}}})))
async def create_audits(request: Request, gateway: Gateway = Depends(get_gateway)):
    received = time.perf_counter()
    media = bodies.media_type(request)
    if media != JSON:
        raise bodies.unsupported(media, JSON)
    settings = gateway.settings
    body = await bodies.read_body(request, settings.body_limit(settings.max_batch))
    raw = bodies.batch_from_json(bodies.parse_json(body), settings.max_batch, settings.max_image_bytes)
    request.state.model = gateway.policy.primary.model
    return json_answer(BATCH_RESPONSE, {"items": await gateway.audit(raw, received, caller_of(request))})


@router.get("/audits/{request_id}", response_model=Decision, responses={404: {"model": ErrorBody}},
            summary="A logged decision, with the reviewer's labels once given")
async def get_audit(request_id: str = RequestId, gateway: Gateway = Depends(get_gateway)):
    decision = await in_log(gateway.log.decision, request_id)
    if decision is None:
        raise ApiError(404, "unknown_request", f"no decision with request_id {request_id}")
    return decision


@router.post("/audits/{request_id}/feedback", response_model=FeedbackResponse, summary="A reviewer's labels",
             responses={404: {"model": ErrorBody}, 409: {"model": ErrorBody}, 422: {"model": ErrorBody}},
             openapi_extra=request_body((JSON, FeedbackRequest.model_json_schema())))
async def give_feedback(request: Request, request_id: str = RequestId, gateway: Gateway = Depends(get_gateway)):
    media = bodies.media_type(request)
    if media != JSON:
        raise bodies.unsupported(media, JSON)
    body = await bodies.read_body(request, FEEDBACK_BODY_LIMIT)
    feedback = bodies.validated(FeedbackRequest, bodies.parse_json(body), "the feedback")
    taxonomy = await gateway.taxonomy()  # the primary model's tasks and classes (models/labels.py)
    for task, label in feedback.labels.items():
        try:
            taxonomy.label_index(task, label)
        except ValueError as error:
            raise unprocessable("unknown_label", str(error)) from None
    try:
        decision, correct = await in_log(gateway.log.add_feedback, request_id, feedback.labels, feedback.reviewer)
    except UnknownRequest:
        raise ApiError(404, "unknown_request", f"no decision with request_id {request_id}") from None
    except FeedbackExists:
        raise ApiError(409, "feedback_exists", f"feedback for {request_id} is already recorded") from None
    for task, ok in correct.items():
        gateway.metrics.reviewed.labels(decision["model"], decision["version"], task,
                                        "correct" if ok else "incorrect").inc()
    gateway.metrics.count_review(decision, feedback.labels, taxonomy)  # reviewed precision of pass / block (metrics.py)
    return {"request_id": request_id, "model": decision["model"], "version": decision["version"],
            "labels": feedback.labels, "correct": correct}
