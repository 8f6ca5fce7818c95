"""Audit policies: versioned YAML files that turn the model's scores and term hits into decisions.

A policy names, per violation class, the score at which an ad is blocked (`block_at`) and the score at
which it goes to a reviewer (`review_at`, at most `block_at`); which attributes send an ad to review;
and its term lists (inline, or a file beside the YAML, one term a line). Several policies live side
by side in one folder (one YAML each, told apart by `name`); a request names the one it wants, as
Tencent's BizType does. The format is in docs/decisions.md.

Every problem is a `PolicyError` naming the file and the key (`violations.gambling.review_at: ...`),
so a broken policy is refused with a message the operator can act on, and never replaces one that
works (`load_policies` builds the whole set or raises).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from adaudit.models.labels import TASKS

from .terms import LISTS, TermListError, TermMatcher, check_terms, read_term_file

SHIPPED = Path(__file__).resolve().parent / "policies"  # default.yaml, strict.yaml and their term lists
VIOLATIONS = tuple(name for name in TASKS["violation"] if name != "none")
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"


class PolicyError(ValueError):
    """A policy file or folder that cannot be used; one line naming the file and the key."""


class Thresholds(BaseModel):
    """A class's score thresholds: score >= block_at blocks, else score >= review_at sends to review."""

    model_config = ConfigDict(extra="forbid")
    block_at: Probability
    review_at: Probability

    @model_validator(mode="after")
    def _ordered(self) -> "Thresholds":
        if self.review_at > self.block_at:
            raise ValueError(f"review_at ({self.review_at}) is above block_at ({self.block_at})")
        return self


class AttributeRule(BaseModel):
    """An attribute label that sends an ad to review when its probability reaches review_at (attributes are
    not violations, so they never block on their own)."""

    model_config = ConfigDict(extra="forbid")
    review_at: Probability


class TermLists(BaseModel):
    """block / review / allow: a list of terms, or a file name relative to the policy's YAML."""

    model_config = ConfigDict(extra="forbid")
    violation: str = Field("exaggeration", description="the violation class a block or review term stands for")
    block: list[str] | str | None = None
    review: list[str] | str | None = None
    allow: list[str] | str | None = None

    @field_validator("violation")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in VIOLATIONS:
            raise ValueError(f"unknown violation class {value!r}; expected one of {', '.join(VIOLATIONS)}")
        return value


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)
    name: str = Field(pattern=NAME_PATTERN)
    version: str = Field(min_length=1, max_length=32)
    description: str = ""
    violations: dict[str, Thresholds] = Field(min_length=1)
    attributes: dict[str, dict[str, AttributeRule]] = {}
    terms: TermLists | None = None

    @field_validator("violations")
    @classmethod
    def _classes(cls, value: dict) -> dict:
        unknown = sorted(set(value) - set(VIOLATIONS))
        if unknown:
            raise ValueError(f"unknown violation class {unknown[0]!r}; expected one of {', '.join(VIOLATIONS)}")
        return value

    @field_validator("attributes")
    @classmethod
    def _attributes(cls, value: dict) -> dict:
        for task, labels in value.items():
            if task not in TASKS or task in ("verdict", "violation"):
                attributes = [t for t in TASKS if t not in ("verdict", "violation")]
                raise ValueError(f"unknown attribute {task!r}; expected one of {', '.join(attributes)}")
            for label in labels:
                if label not in TASKS[task]:
                    raise ValueError(f"{task}: unknown label {label!r}; expected one of {', '.join(TASKS[task])}")
        return value


@dataclass(frozen=True)
class LoadedPolicy:
    """A checked policy with its term lists read and compiled into one matcher."""

    policy: Policy
    matcher: TermMatcher
    source: str  # the file it came from (messages, GET /v1/policies)

    @property
    def name(self) -> str:
        return self.policy.name

    def summary(self) -> dict:
        return {"name": self.policy.name, "version": self.policy.version, "description": self.policy.description,
                "source": self.source, "violations": {k: v.model_dump() for k, v in self.policy.violations.items()},
                "terms": self.matcher.sizes}


def error_text(error: ValidationError) -> str:
    """`key.path: problem` for the first few problems of a pydantic error."""
    parts = []
    for item in error.errors()[:3]:
        where = ".".join(str(part) for part in item["loc"]) or "policy"
        parts.append(f"{where}: {item['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


def parse_policy(data, where: str) -> Policy:
    if not isinstance(data, dict):
        raise PolicyError(f"{where}: a policy is a YAML mapping (name, version, violations, ...)")
    try:
        return Policy.model_validate(data)
    except ValidationError as error:
        raise PolicyError(f"{where}: {error_text(error)}") from None


def term_lists(policy: Policy, folder: Path, where: str) -> dict[str, list[str]]:
    """The policy's lists, each checked (inline) or read (a file beside the YAML, never outside it)."""
    lists: dict[str, list[str]] = {}
    if policy.terms is None:
        return lists
    for name in LISTS:
        value = getattr(policy.terms, name)
        key = f"{where}: terms.{name}"
        if value is None:
            continue
        if isinstance(value, list):
            lists[name] = check_terms(value, key)
            continue
        path = (folder / value).resolve()
        if path.parent != folder.resolve() or not path.is_file():
            raise PolicyError(f"{key}: no term file {value!r} beside the policy (a file name in {folder})")
        lists[name] = read_term_file(path, key)
    return lists


def load_policy(path: Path) -> LoadedPolicy:
    """One policy file, checked, with its term lists compiled; PolicyError naming the file and key."""
    path = Path(path)
    where = path.name
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise PolicyError(f"{where}: cannot read the file: {error}") from None
    except yaml.YAMLError as error:
        raise PolicyError(f"{where}: not valid YAML: {str(error).splitlines()[0]}") from None
    policy = parse_policy(data, where)
    try:
        lists = term_lists(policy, path.parent, where)
    except TermListError as error:
        raise PolicyError(str(error)) from None
    return LoadedPolicy(policy, TermMatcher(lists), str(path))


def load_policies(folder: Path | None = None) -> dict[str, LoadedPolicy]:
    """Every `*.yaml` in `folder` (default: the shipped policies), by name; the whole set or a PolicyError."""
    folder = Path(folder) if folder is not None else SHIPPED
    if not folder.is_dir():
        raise PolicyError(f"policy folder {folder} not found")
    loaded: dict[str, LoadedPolicy] = {}
    for path in sorted(folder.glob("*.yaml")):
        policy = load_policy(path)
        if policy.name in loaded:
            raise PolicyError(f"{path.name}: name: policy {policy.name!r} is also defined in "
                              f"{Path(loaded[policy.name].source).name}")
        loaded[policy.name] = policy
    if not loaded:
        raise PolicyError(f"policy folder {folder} holds no *.yaml policy")
    return loaded
