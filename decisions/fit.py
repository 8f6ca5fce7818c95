"""Thresholds from held-out scores: automatic blocks and automatic passes each at a target precision.

The score of an ad is its riskiest violation class's probability (`risk_scores`: the highest
probability over the non-`none` classes). With one `block_at` and one `review_at` for every class, the
policy blocks an ad exactly when its risk reaches `block_at` and passes it exactly when its risk is
below `review_at`; the ads in between go to a reviewer. `fit_thresholds` picks the lowest `block_at`
whose blocked ads are violations at least `target` of the time, and the highest `review_at` whose
passed ads are clean at least `target` of the time: the most ads decided without a reviewer at that
precision. The automation rate is the share of ads blocked or passed.

Pure numpy on held-out (validation) scores: choosing thresholds on the test split would report a
precision the thresholds were tuned to reach.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CURVE_TARGETS = (0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999)


@dataclass(frozen=True)
class FittedThresholds:
    block_at: float
    review_at: float
    block_precision: float | None  # measured on the scores it was fitted on; None: nothing blocked
    pass_precision: float | None
    blocked: float  # share of ads blocked automatically
    passed: float
    target_precision: float

    @property
    def automation_rate(self) -> float:
        return self.blocked + self.passed

    def as_dict(self) -> dict:
        return {"target_precision": self.target_precision, "block_at": self.block_at, "review_at": self.review_at,
                "block_precision": self.block_precision, "pass_precision": self.pass_precision,
                "blocked": self.blocked, "passed": self.passed, "automation_rate": self.automation_rate}


def risk_scores(violation_probabilities: np.ndarray, none_index: int = 0) -> np.ndarray:
    """(n,) the highest probability over the non-`none` violation classes of (n, classes) probabilities."""
    probabilities = np.asarray(violation_probabilities, dtype=np.float64)
    return np.delete(probabilities, none_index, axis=1).max(axis=1)


def _block_threshold(scores: np.ndarray, violating: np.ndarray, target: float) -> float:
    """The lowest score t such that the ads scoring >= t are violations at least `target` of the time."""
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], np.cumsum(violating[order])
    last_of_value = np.r_[ranked[1:] != ranked[:-1], True]  # ads tied at a score are blocked together
    counts = np.arange(1, len(ranked) + 1)
    good = last_of_value & (hits / counts >= target)
    return float(ranked[np.flatnonzero(good).max()]) if good.any() else np.inf


def _pass_threshold(scores: np.ndarray, clean: np.ndarray, target: float, cap: float) -> float:
    """The highest t <= cap such that the ads scoring < t are clean at least `target` of the time (0: none
    pass). A candidate t is the next higher score than a prefix of the ads sorted by score."""
    order = np.argsort(scores, kind="stable")
    ranked, hits = scores[order], np.cumsum(clean[order])
    following = np.r_[ranked[1:], np.nextafter(ranked[-1], np.inf)]  # t that passes ranked[:i + 1]
    last_of_value = following != ranked
    counts = np.arange(1, len(ranked) + 1)
    good = np.flatnonzero(last_of_value & (hits / counts >= target) & (following <= cap))
    return float(following[good.max()]) if len(good) else 0.0


def fit_thresholds(scores, violating, target: float = 0.99) -> FittedThresholds:
    """`scores` (n,) risk scores, `violating` (n,) whether each ad truly violates; thresholds in [0, 1]
    with review_at <= block_at."""
    scores = np.asarray(scores, dtype=np.float64)
    violating = np.asarray(violating, dtype=bool)
    if scores.ndim != 1 or scores.shape != violating.shape or not len(scores):
        raise ValueError("scores and violating must be two non-empty vectors of one length")
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target precision {target} is not in (0, 1]")
    lowest_block = _block_threshold(scores, violating, target)
    nothing_blocked = np.isinf(lowest_block)
    block_at = 1.0 if nothing_blocked else lowest_block
    review_at = min(_pass_threshold(scores, ~violating, target, block_at), 1.0)
    blocked = np.zeros(len(scores), dtype=bool) if nothing_blocked else scores >= block_at
    passed = scores < review_at
    return FittedThresholds(block_at, review_at,
                            float(violating[blocked].mean()) if blocked.any() else None,
                            float((~violating[passed]).mean()) if passed.any() else None,
                            float(blocked.mean()), float(passed.mean()), target)


def precision_automation_curve(scores, violating, targets=CURVE_TARGETS) -> list[dict]:
    """The fitted thresholds and automation rate at each target precision (the plot of `adaudit policy fit`)."""
    return [fit_thresholds(scores, violating, target).as_dict() for target in targets]


def apply_thresholds(scores, violating, block_at: float, review_at: float) -> dict:
    """What given thresholds do on other ads (the test split): shares blocked and passed, the automation
    rate and the precision each automatic side reaches there (None where it decides nothing)."""
    scores = np.asarray(scores, dtype=np.float64)
    violating = np.asarray(violating, dtype=bool)
    blocked, passed = scores >= block_at, scores < review_at
    return {"block_at": block_at, "review_at": review_at, "blocked": float(blocked.mean()),
            "passed": float(passed.mean()), "automation_rate": float((blocked | passed).mean()),
            "block_precision": float(violating[blocked].mean()) if blocked.any() else None,
            "pass_precision": float((~violating[passed]).mean()) if passed.any() else None, "ads": int(len(scores))}
