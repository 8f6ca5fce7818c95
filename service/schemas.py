"""The gateway's JSON shapes (pydantic): what clients send and what they get back.

These models are the OpenAPI documentation as well: `/docs` and `/openapi.json` show them.
Requests forbid unknown fields, so a misspelt `image_b64` is a 422 naming the field rather
than a silently missing image.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

# What an id or a name stored in the decision log may not hold: control characters (PostgreSQL refuses
# NUL in text; the others break logs and CSV exports) and lone surrogates (not encodable as UTF-8)
UNSTORABLE = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")


def storable_problem(value: str) -> str | None:
    """Why `value` cannot be stored as an id or name, or None."""
    found = UNSTORABLE.search(value)
    return None if found is None else (f"holds the character U+{ord(found.group()):04X} at position "
                                       f"{found.start()}: control characters and lone surrogates are not allowed")


def _storable(value: str) -> str:
    problem = storable_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def storable_text(max_length: int, min_length: int = 0):
    """A str of at most `max_length` characters that can be stored (see `storable_problem`). The length is a
    string constraint inside the type, checked before the storability check: given as a Field constraint
    on the whole annotated type, pydantic would check it after the validator and call it "items"."""
    return Annotated[str, StringConstraints(min_length=min_length, max_length=max_length), AfterValidator(_storable)]


AD_ID = Field(None, description="The platform's ad id; canary assignment is sticky per ad id when given (no "
              "control characters)", examples=["ad-20261123-0042"])


class AuditRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image_base64: str = Field(description="The ad image (PNG, JPEG, WebP, GIF or BMP), base64; a data: URL "
                              "prefix is accepted")
    text: str = Field(description="The ad copy (UTF-8)", examples=["限时特价，全网最低价！"])
    ad_id: storable_text(128, min_length=1) | None = AD_ID
    policy: str | None = Field(None, min_length=1, max_length=64, description="The audit policy to decide with "
                               "(GET /v1/policies lists them); none: the gateway's default_policy",
                               examples=["default"])
    explain: bool = Field(False, description="add `evidence`: the copy's spans and the picture's cells that drove "
                          "the violation (occlusion through the serving model) and the advertising-law article it "
                          "refers to (docs/evidence.md); costs one extra backend batch")


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[AuditRequest] = Field(description="Up to max_batch ads; a bare JSON list is accepted too")


class Timings(BaseModel):
    preprocess_ms: float
    inference_ms: float
    total_ms: float


class Reason(BaseModel):
    rule: str = Field(description="the policy rule that fired", examples=["violation.exaggeration.block_at",
                                                                         "terms.block: 最佳"])
    suggestion: Literal["review", "block"] = Field(description="the level the rule fired at")
    violation: str | None = Field(description="the violation class it stands for (none for an attribute rule)")
    score: float | None = Field(description="the model's probability (none for a term hit)")
    threshold: float | None = Field(description="the policy's threshold it reached (none for a term hit)")


class PolicyRef(BaseModel):
    name: str = Field(examples=["default"])
    version: str = Field(examples=["1"])


class TermHit(BaseModel):
    term: str = Field(description="the term as its list spells it", examples=["最佳"])
    list: Literal["block", "review", "allow"]
    start: int = Field(description="offset of the hit's first character in the copy as sent")
    end: int = Field(description="offset after its last character (text[start:end] is the hit as written)")


class EvidenceSpan(BaseModel):
    start: int = Field(description="offset of the span's first character in the copy as sent")
    end: int = Field(description="offset after its last character (text[start:end] is `text`)")
    text: str
    score: float = Field(description="the drop in the explained class's probability when the span is deleted")


class EvidenceCopy(BaseModel):
    spans: list[EvidenceSpan] = Field(description="the spans that drove the class, strongest first")
    window: int = Field(description="explain_window: the most words a run covers; clauses are scored first (a "
                        "copy of one clause: runs of `window` words), then runs of 1 to `window` words inside the "
                        "strongest where it carries the class")
    explained_chars: int = Field(description="how many of the copy's first characters were explained (a cap)")


class EvidenceCell(BaseModel):
    row: int
    column: int
    score: float = Field(description="the drop in the explained class's probability when the cell is greyed")
    box: list[int] = Field(description="x0, y0, x1, y1 in the picture as sent (pixels)")


class EvidencePicture(BaseModel):
    grid: int = Field(description="the occlusion grid is grid x grid cells")
    whole: float | None = Field(description="the drop in the explained class's probability when the whole picture "
                                "is greyed; null when that probability is below CARRYING_DROP (no greying could "
                                "drop it that much)")
    scores: list[list[float]] = Field(description="each cell's drop, row by row; empty when `whole` is below "
                                      "CARRYING_DROP (0.1, service/evidence.py): the class does not rest on the "
                                      "picture, and its grid was not searched")
    cells: list[EvidenceCell] = Field(description="the cells whose greying drops the probability most")


class Article(BaseModel):
    violation: str
    law: str
    article: str
    summary: str


class Evidence(BaseModel):
    model_config = ConfigDict(serialize_by_alias=True)  # `copy`, a name BaseModel itself uses
    violation: str = Field(description="the class explained: the answered violation, or the likeliest non-none one")
    probability: float = Field(description="the model's probability of that class for the ad as sent")
    copy_: EvidenceCopy = Field(alias="copy")
    picture: EvidencePicture
    articles: list[Article] = Field(description="the advertising-law articles the classes refer to: a reference")
    note: str = Field(description="the article table is a reference, not legal advice")
    variants: int = Field(description="occluded variants scored in the extra backend batch")
    took_ms: float


SUGGESTION = Field(description="pass, review (a reviewer decides) or block, by the policy (docs/decisions.md)")


class AuditLabels(BaseModel):
    request_id: str
    ad_id: str | None = None
    verdict: str = Field(examples=["reject"], description="reject exactly when violation is not none; follows "
                         "the suggestion (docs/decisions.md)")
    verdict_score: float = Field(description="the model's probability of this verdict")
    violation: str = Field(examples=["exaggeration"])
    violation_score: float = Field(description="the model's probability of this violation")
    attributes: dict[str, str] = Field(description="the other tasks' labels (industry, background_colour, ...)")
    scores: dict[str, float] = Field(description="the model's probability of every task's answered label")
    suggestion: Literal["pass", "review", "block"] | None = SUGGESTION
    reasons: list[Reason] = Field([], description="each policy rule that fired")
    policy: PolicyRef | None = Field(None, description="the policy that decided")
    model: str
    version: str
    arm: Literal["primary", "canary"] = Field(description="which policy arm answered")
    shadowed: bool = Field(description="mirrored to the shadow model for comparison")


class AuditResult(AuditLabels):
    suggestion: Literal["pass", "review", "block"] = SUGGESTION
    policy: PolicyRef
    term_hits: list[TermHit] = Field(description="terms of the policy's lists found in the copy, with offsets")
    timings: Timings
    evidence: Evidence | None = Field(None, exclude_if=lambda value: value is None,
                                      description="with explain=true only (docs/evidence.md)")


class BatchResponse(BaseModel):
    items: list[AuditResult]


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    labels: dict[str, str] = Field(min_length=1, description="task -> the reviewer's label",
                                   examples=[{"verdict": "reject", "violation": "medical_claim"}])
    reviewer: storable_text(128) | None = None


class FeedbackResponse(BaseModel):
    request_id: str
    model: str
    version: str
    labels: dict[str, str]
    correct: dict[str, bool] = Field(description="per reviewed task: did the model's label match")


class Decision(AuditLabels):
    term_hits: list[TermHit] = []
    created_at: datetime
    latency_ms: float
    caller: str | None = Field(None, description="the API key's name that asked (anonymous without keys)")
    feedback: dict[str, str] | None = Field(None, description="the reviewer's labels, once given")


class AccuracyRow(BaseModel):
    model: str
    version: str
    task: str
    reviewed: int
    correct: int
    accuracy: float


class Disagreement(BaseModel):
    request_id: str
    created_at: datetime
    primary_model: str
    primary_version: str
    shadow_model: str
    shadow_version: str
    primary: dict
    shadow: dict


class TargetReadiness(BaseModel):
    model: str
    version: str | None  # None: the latest the backend serves
    location: str  # the target's Triton (host:port), or the embedded backend's model folder
    ready: bool
    problem: str | None = None


class Readiness(BaseModel):
    ready: bool
    backend: str
    primary_model: str
    models: dict[str, bool]
    message: str
    targets: dict[str, TargetReadiness] = {}  # primary, canary, shadow (those configured), each on its own backend


class PolicySummary(BaseModel):
    name: str
    version: str
    description: str
    source: str = Field(description="the YAML file it was read from")
    violations: dict[str, dict[str, float]] = Field(description="per violation class: block_at, review_at")
    terms: dict[str, int] = Field(description="terms per list (block, review, allow)")
    default: bool = Field(description="what a request that names no policy gets")


class PolicyList(BaseModel):
    default: str
    policies: list[PolicySummary]


class ErrorBody(BaseModel):
    error: str
    kind: str
