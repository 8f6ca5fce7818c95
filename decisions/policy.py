"""Audit policies: versioned YAML files that turn the model's scores and term hits into decisions.

A policy names, per violation class, the score at which an ad is blocked (`block_at`) and the score at
which it goes to a reviewer (`review_at`, at most `block_at`); which attributes send an ad to review;
and its term lists (inline, or a file beside the YAML, one term a line). Several policies live side
by side in one folder (one YAML each, told apart by `name`); a request names the one it wants, as
Tencent's BizType does. The format is in docs/decisions.md.

Every problem is a `PolicyError` naming the file and the key (`violations.gambling.review_at: ...`),
so a broken policy is refused with a message the operator can act on, and never replaces one that
works (`load_policies` builds the whole set or raises).

The classes a policy names are those of a taxonomy (models/labels.py): `violations` the reason task's
classes other than the clean one, `attributes` the other tasks' classes. Which taxonomy is the model's
business, so the YAML is parsed on its own and checked against one (`check_policy`): today's by default,
a served model's own where the gateway decides (service/audit_policies.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from adaudit.models.labels import DEFAULT_TAXONOMY, Taxonomy

from .terms import LISTS, TermListError, TermMatcher, check_terms, read_term_file

SHIPPED = Path(__file__).resolve().parent / "policies"  # default.yaml, strict.yaml and their term lists
VIOLATIONS = DEFAULT_TAXONOMY.violations  # today's violation classes
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


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)
    name: str = Field(pattern=NAME_PATTERN)
    version: str = Field(min_length=1, max_length=32)
    description: str = ""
    violations: dict[str, Thresholds] = Field(min_length=1)
    attributes: dict[str, dict[str, AttributeRule]] = {}
    terms: TermLists | None = None


def check_policy(policy: Policy, taxonomy: Taxonomy) -> None:
    """ValueError `key: problem` unless every class the policy names is one of `taxonomy`'s: its violations
    the reason task's (not the clean class), its attributes the other tasks' labels, its term class a
    violation."""
    violations = taxonomy.violations
    unknown = sorted(set(policy.violations) - set(violations))
    if unknown:
        raise ValueError(f"violations: unknown violation class {unknown[0]!r}; expected one of {', '.join(violations)}")
    for task, labels in policy.attributes.items():
        if task not in taxonomy.attributes:
            raise ValueError(f"attributes: unknown attribute {task!r}; expected one of {', '.join(taxonomy.attributes)}")
        for label in labels:
            if label not in taxonomy.tasks[task]:
                raise ValueError(f"attributes: {task}: unknown label {label!r}; expected one of "
                                 f"{', '.join(taxonomy.tasks[task])}")
    if policy.terms is not None and policy.terms.violation not in violations:
        raise ValueError(f"terms.violation: unknown violation class {policy.terms.violation!r}; expected one of "
                         f"{', '.join(violations)}")


@dataclass(frozen=True)
class LoadedPolicy:
    """A checked policy with its term lists read and compiled into one matcher."""

    policy: Policy
    matcher: TermMatcher
    source: str  # the file it came from (messages, GET /v1/policies)

    @property
    def name(self) -> str:
        return self.policy.name

    def check(self, taxonomy: Taxonomy) -> None:
        """PolicyError naming the file and the key unless the policy fits `taxonomy` (`check_policy`)."""
        try:
            check_policy(self.policy, taxonomy)
        except ValueError as error:
            raise PolicyError(f"{Path(self.source).name}: {error}") from None

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


def parse_policy(data, where: str, taxonomy: Taxonomy | None = DEFAULT_TAXONOMY) -> Policy:
    """A checked Policy; with `taxonomy` (None: the shape alone) its classes are checked against it."""
    if not isinstance(data, dict):
        raise PolicyError(f"{where}: a policy is a YAML mapping (name, version, violations, ...)")
    try:
        policy = Policy.model_validate(data)
        if taxonomy is not None:
            check_policy(policy, taxonomy)
        return policy
    except ValidationError as error:
        raise PolicyError(f"{where}: {error_text(error)}") from None
    except ValueError as error:
        raise PolicyError(f"{where}: {error}") from None


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


def load_policy(path: Path, taxonomy: Taxonomy | None = DEFAULT_TAXONOMY) -> LoadedPolicy:
    """One policy file, checked (its classes against `taxonomy`, unless None), with its term lists compiled;
    PolicyError naming the file and key."""
    path = Path(path)
    where = path.name
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise PolicyError(f"{where}: cannot read the file: {error}") from None
    except yaml.YAMLError as error:
        raise PolicyError(f"{where}: not valid YAML: {str(error).splitlines()[0]}") from None
    policy = parse_policy(data, where, taxonomy)
    try:
        lists = term_lists(policy, path.parent, where)
    except TermListError as error:
        raise PolicyError(str(error)) from None
    return LoadedPolicy(policy, TermMatcher(lists), str(path))


def load_policies(folder: Path | None = None, taxonomy: Taxonomy | None = DEFAULT_TAXONOMY) -> dict[str, LoadedPolicy]:
    """Every `*.yaml` in `folder` (default: the shipped policies), by name, each checked against `taxonomy`
    (None: their shape alone); the whole set or a PolicyError."""
    folder = Path(folder) if folder is not None else SHIPPED
    if not folder.is_dir():
        raise PolicyError(f"policy folder {folder} not found")
    loaded: dict[str, LoadedPolicy] = {}
    for path in sorted(folder.glob("*.yaml")):
        policy = load_policy(path, taxonomy)
        if policy.name in loaded:
            raise PolicyError(f"{path.name}: name: policy {policy.name!r} is also defined in "
                              f"{Path(loaded[policy.name].source).name}")
        loaded[policy.name] = policy
    if not loaded:
        raise PolicyError(f"policy folder {folder} holds no *.yaml policy")
    return loaded
