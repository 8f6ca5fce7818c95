"""Thresholds from held-out scores: automatic blocks and automatic passes each at a target precision.

The score of an ad is its riskiest violation class's probability (the highest probability over the
non-`none` classes; training/policy_fit.py reads it from a model). With one `block_at` and one `review_at`
for every class, the policy blocks an ad exactly when its risk reaches `block_at` and passes it exactly when its risk is
below `review_at`; the ads in between go to a reviewer. `fit_thresholds` picks the lowest `block_at`
whose blocked ads are violations at least `target` of the time, and the highest `review_at` whose
passed ads are clean at least `target` of the time: the most ads decided without a reviewer at that
precision. The automation rate is the share of ads blocked or passed.

`fit_class_thresholds` gives each violation class its own pair instead (the policy YAML holds one per class):
each class's probability is divided by a factor before the riskiest class is read, the factors searched one
class at a time, and a cut fitted on the divided scores multiplied back per class (kept on the same side of
every ad's score, `_class_cuts`). Where clean ads
score high on one class (the picture tower's gambling suspicion) and violations low on another, one common
pair cannot pass the first without passing the second; the factors can (docs/decisions.md). The two sides
get their own factors: which ads are blocked depends only on the `block_at` values and which are passed
(of those not blocked) only on the `review_at` values, and the high end of a class's scores (where blocks are
decided) separates clean ads from violations at another place than its low end (where passes are).

Pure numpy on held-out (validation) scores: choosing thresholds on the test split would report a
precision the thresholds were tuned to reach.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CURVE_TARGETS = (0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999)


@dataclass(frozen=True)
class Reached:
    """What fitted thresholds reach on the scores they were fitted on."""
    block_precision: float | None  # None: nothing blocked
    pass_precision: float | None
    blocked: float  # share of ads blocked automatically
    passed: float
    target_precision: float

    @property
    def automation_rate(self) -> float:
        return self.blocked + self.passed

    def reached(self) -> dict:
        return {"target_precision": self.target_precision, "block_precision": self.block_precision,
                "pass_precision": self.pass_precision, "blocked": self.blocked, "passed": self.passed,
                "automation_rate": self.automation_rate}


@dataclass(frozen=True)
class FittedThresholds(Reached):
    block_at: float
    review_at: float

    def as_dict(self) -> dict:
        return {"block_at": self.block_at, "review_at": self.review_at} | self.reached()


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


def decided(blocked: np.ndarray, passed: np.ndarray, violating: np.ndarray) -> dict:
    """Shares blocked and passed, the automation rate, and the precision each automatic side reaches (None where it
    decides nothing), from (n,) masks of the ads blocked and passed and whether each truly violates."""
    return {"blocked": float(blocked.mean()), "passed": float(passed.mean()),
            "automation_rate": float((blocked | passed).mean()),
            "block_precision": float(violating[blocked].mean()) if blocked.any() else None,
            "pass_precision": float((~violating[passed]).mean()) if passed.any() else None, "ads": int(len(blocked))}


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
    # with nothing to block at the target, block_at 1 still blocks scores of 1
    reached = decided(scores >= block_at, scores < review_at, violating)
    return FittedThresholds(reached["block_precision"], reached["pass_precision"], reached["blocked"],
                            reached["passed"], target, block_at=block_at, review_at=review_at)


def precision_automation_curve(scores, violating, targets=CURVE_TARGETS) -> list[dict]:
    """The fitted thresholds and automation rate at each target precision (the plot of `adaudit policy fit`)."""
    return [fit_thresholds(scores, violating, target).as_dict() for target in targets]


def apply_thresholds(scores, violating, block_at: float, review_at: float) -> dict:
    """What given thresholds do on other ads (the test split): shares blocked and passed, the automation
    rate and the precision each automatic side reaches there (None where it decides nothing)."""
    scores = np.asarray(scores, dtype=np.float64)
    violating = np.asarray(violating, dtype=bool)
    return {"block_at": block_at, "review_at": review_at} | decided(scores >= block_at, scores < review_at, violating)


FACTORS = tuple(2.0 ** np.arange(-4, 4.01, 0.25))  # per-class factors searched: 1/16 to 16, quarter powers of 2


@dataclass(frozen=True)
class ClassThresholds(Reached):
    classes: tuple[str, ...]  # the violation classes, in the order of the score columns
    block_at: tuple[float, ...]  # one per class, in [0, 1]
    review_at: tuple[float, ...]

    def as_dict(self) -> dict:
        return {"block_at": dict(zip(self.classes, self.block_at)),
                "review_at": dict(zip(self.classes, self.review_at))} | self.reached()


def apply_class_thresholds(scores, violating, block_at, review_at) -> dict:
    """apply_thresholds with one pair per class: `scores` (n, classes) probabilities of the violation classes; an ad
    is blocked when any class reaches its block_at, passed when every class is below its review_at (the policy's
    rule, decisions/decide.py)."""
    scores = np.asarray(scores, dtype=np.float64)
    violating = np.asarray(violating, dtype=bool)
    blocked = (scores >= np.asarray(block_at)).any(axis=1)
    passed = (scores < np.asarray(review_at)).all(axis=1) & ~blocked
    return {"block_at": [float(t) for t in block_at], "review_at": [float(t) for t in review_at]} | decided(
        blocked, passed, violating)


def _class_factors(scores: np.ndarray, share) -> np.ndarray:
    """Per-class divisors that raise `share(riskiest divided score)`: a greedy search, one class at a time over
    FACTORS, until a round improves nothing (a local best, not a proven maximum)."""
    scale = np.ones(scores.shape[1])
    best = share((scores / scale).max(axis=1))
    while True:
        improved = False
        for column in range(scores.shape[1]):
            for factor in FACTORS:
                trial = scale.copy()
                trial[column] = factor
                if (reached := share((scores / trial).max(axis=1))) > best + 1e-12:
                    best, scale, improved = reached, trial, True
        if not improved:
            return scale


def _class_cuts(scores: np.ndarray, scale: np.ndarray, threshold: float, ceiling: np.ndarray) -> np.ndarray:
    """Per class, a threshold on the real scores that splits the ads as `divided riskiest >= threshold` does: the
    cut multiplied back by the class's factor, moved into the gap between the class's highest score that does not
    reach the cut and its lowest that does where a float step put it outside (dividing by a positive factor keeps
    the order, so the gap exists; without the move, a boundary ad could change sides); at most `ceiling`."""
    cuts = np.empty(scores.shape[1])
    for column in range(scores.shape[1]):
        values = scores[:, column]
        reaches = values / scale[column] >= threshold
        cut = threshold * scale[column]
        if (~reaches).any():
            cut = max(cut, np.nextafter(values[~reaches].max(), np.inf))
        if reaches.any():
            cut = min(cut, values[reaches].min())
        cuts[column] = min(cut, ceiling[column])
    return cuts


def fit_class_thresholds(scores, violating, target: float = 0.99, classes: list[str] | None = None) \
        -> ClassThresholds:
    """One (block_at, review_at) per class from (n, classes) probabilities: the factor searches in the module's
    docstring, blocks first, then passes among the ads not blocked (the policy's rule, decisions/decide.py).
    Thresholds above 1 are written as 1, and a class's review_at as at most its block_at (an ad at or above a
    class's block_at is blocked, so that changes no decision)."""
    scores = np.asarray(scores, dtype=np.float64)
    violating = np.asarray(violating, dtype=bool)
    if scores.ndim != 2 or scores.shape[0] != violating.shape[0] or not len(scores):
        raise ValueError("scores and violating must be (ads, classes) probabilities and one truth per ad")
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target precision {target} is not in (0, 1]")
    classes = tuple(classes or (str(column) for column in range(scores.shape[1])))

    def block_threshold(risk):
        return _block_threshold(risk, violating, target)

    def blocked_share(risk):
        return float((risk >= threshold).mean()) if np.isfinite(threshold := block_threshold(risk)) else 0.0

    block_scale = _class_factors(scores, blocked_share)
    lowest_block = block_threshold((scores / block_scale).max(axis=1))
    ones = np.ones(scores.shape[1])
    block_at = ones if np.isinf(lowest_block) else _class_cuts(scores, block_scale, lowest_block, ones)
    open_ads = ~(scores >= block_at).any(axis=1)  # what passes are chosen from
    remaining, clean = scores[open_ads], ~violating[open_ads]

    def passed_share(risk):
        return float((risk < _pass_threshold(risk, clean, target, np.inf)).mean()) if len(risk) else 0.0

    pass_scale = _class_factors(remaining, passed_share)
    highest_pass = _pass_threshold((remaining / pass_scale).max(axis=1), clean, target, np.inf) if len(remaining) else 0
    review_at = (_class_cuts(remaining, pass_scale, highest_pass, block_at) if highest_pass > 0
                 else np.zeros(scores.shape[1]))
    reached = apply_class_thresholds(scores, violating, block_at, review_at)
    return ClassThresholds(reached["block_precision"], reached["pass_precision"], reached["blocked"],
                           reached["passed"], target, classes=classes, block_at=tuple(map(float, block_at)),
                           review_at=tuple(map(float, review_at)))
