"""One decision per ad: the model's probabilities + term hits + a policy -> pass / review / block.

The rule (docs/decisions.md), applied the same way everywhere:

1. Reasons. Each violation class the policy lists fires at `block` when its probability reaches
   `block_at`, else at `review` when it reaches `review_at` (rule `violation.<class>.block_at` or
   `.review_at`). Each block or review term found (term_hits, allow exceptions already dropped) fires
   at its list's level (rule `terms.block: 最佳`). Each attribute rule fires at `review` when the label's
   probability reaches its `review_at` (rule `attributes.clutter.heavy.review_at`).
2. Suggestion: `block` if any reason fired at block, else `review` if any fired, else `pass`.
3. Verdict and violation, never contradicting each other (reject exactly when violation is not none):
   - block: reject; violation = the highest-scoring class among the model's block reasons, else (a
     term alone blocked) the policy's term class;
   - review: reject when the model's most likely violation class is not `none`; violation = the
     highest-scoring class among the model's review reasons, else that most likely class. Otherwise
     approve with violation none;
   - pass: approve, violation none.

Under another taxonomy (models/labels.py) the roles keep their meaning: `verdict` is the taxonomy's
verdict task (its first rejecting class on reject, its first other class on approve), `violation` its
reason task, and `none` its clean class.

Why this rule: the old answer read two heads independently (verdict: reject, violation: none); a
client that acts on `verdict` must get a reason it can show, and a reviewer must see the model's lean
when an ad is sent to them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from adaudit.models.labels import DEFAULT_TAXONOMY, Taxonomy

from .policy import Policy
from .terms import TermHit

LEVELS = ("pass", "review", "block")


@dataclass(frozen=True)
class Reason:
    rule: str  # the policy rule that fired: violation.gambling.block_at, terms.block: 最佳, attributes...
    suggestion: str  # the level it fired at: review or block
    violation: str | None  # the violation class it stands for (None for an attribute)
    score: float | None  # the model's probability (None for a term hit)
    threshold: float | None  # the threshold it reached (None for a term hit)

    def as_dict(self) -> dict:
        return {"rule": self.rule, "suggestion": self.suggestion, "violation": self.violation,
                "score": self.score, "threshold": self.threshold}


@dataclass(frozen=True)
class Decision:
    suggestion: str
    verdict: str
    violation: str
    reasons: list[Reason]
    policy: dict  # {name, version}
    term_hits: list[TermHit] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"suggestion": self.suggestion, "verdict": self.verdict, "violation": self.violation,
                "reasons": [reason.as_dict() for reason in self.reasons], "policy": dict(self.policy),
                "term_hits": [hit.as_dict() for hit in self.term_hits]}


def model_reasons(probabilities: dict[str, dict[str, float]], policy: Policy,
                  taxonomy: Taxonomy = DEFAULT_TAXONOMY) -> list[Reason]:
    reasons = []
    violation = probabilities.get(taxonomy.reason_task, {})
    for name, thresholds in policy.violations.items():
        score = float(violation.get(name, 0.0))
        if score >= thresholds.block_at:
            reasons.append(Reason(f"violation.{name}.block_at", "block", name, score, thresholds.block_at))
        elif score >= thresholds.review_at:
            reasons.append(Reason(f"violation.{name}.review_at", "review", name, score, thresholds.review_at))
    for task, labels in policy.attributes.items():
        for label, rule in labels.items():
            score = float(probabilities.get(task, {}).get(label, 0.0))
            if score >= rule.review_at:
                reasons.append(Reason(f"attributes.{task}.{label}.review_at", "review", None, score, rule.review_at))
    return reasons


def term_reasons(hits: list[TermHit], policy: Policy) -> list[Reason]:
    """One reason per distinct (list, term) found; allow hits are exceptions, never reasons."""
    seen, reasons = set(), []
    violation = policy.terms.violation if policy.terms is not None else "exaggeration"
    for hit in hits:
        if hit.list == "allow" or (hit.list, hit.term) in seen:
            continue
        seen.add((hit.list, hit.term))
        reasons.append(Reason(f"terms.{hit.list}: {hit.term}", hit.list, violation, None, None))
    return reasons


def most_likely_violation(probabilities: dict[str, dict[str, float]], taxonomy: Taxonomy = DEFAULT_TAXONOMY) -> str:
    clean = taxonomy.clean_class
    violation = probabilities.get(taxonomy.reason_task) or {clean: 1.0}
    return max(violation, key=lambda name: (violation[name], name == clean))  # a tie goes to the clean class


def verdict_and_violation(suggestion: str, reasons: list[Reason], probabilities: dict, policy: Policy,
                          taxonomy: Taxonomy = DEFAULT_TAXONOMY) -> tuple[str, str]:
    """Step 3 of the rule in the module's docstring."""
    approved = taxonomy.approve_class, taxonomy.clean_class
    if suggestion == "pass":
        return approved
    scored = [r for r in reasons if r.suggestion == suggestion and r.score is not None and r.violation]
    top = max(scored, key=lambda r: r.score).violation if scored else None
    if suggestion == "block":
        return taxonomy.reject_class, top or (policy.terms.violation if policy.terms is not None else "exaggeration")
    lean = most_likely_violation(probabilities, taxonomy)
    if lean == taxonomy.clean_class:
        return approved
    return taxonomy.reject_class, top or lean


def decide(probabilities: dict[str, dict[str, float]], hits: list[TermHit], policy: Policy,
           taxonomy: Taxonomy = DEFAULT_TAXONOMY) -> Decision:
    """`probabilities`: task -> class -> the model's probability (the class names of `taxonomy`, the model's);
    `hits`: the copy's term hits under this policy's lists (TermMatcher.find). The policy must fit the
    taxonomy (decisions/policy.check_policy)."""
    reasons = model_reasons(probabilities, policy, taxonomy) + term_reasons(hits, policy)
    levels = {reason.suggestion for reason in reasons}
    suggestion = "block" if "block" in levels else "review" if reasons else "pass"
    reasons.sort(key=lambda r: (LEVELS.index(r.suggestion), r.score if r.score is not None else 2.0), reverse=True)
    verdict, violation = verdict_and_violation(suggestion, reasons, probabilities, policy, taxonomy)
    return Decision(suggestion, verdict, violation, reasons, {"name": policy.name, "version": policy.version},
                    list(hits))
