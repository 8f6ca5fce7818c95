"""The probabilities a policy reads: one function for the gateway's answers and for the threshold fit.

A threshold fitted on the scores a model gave held-out ads decides new ads as it decided those only if the
gateway computes scores the same way. Both read a task's logits through `probabilities`: a float64 softmax
in plain Python, rounded to 6 places (what an answer carries). A fitted threshold is one of these 6-place
values, so the gateway's rounding cannot move an ad across it; a backend's own arithmetic (ONNX Runtime
against torch, in a logit's last bits) can still move an ad within about 1e-6 of one.
"""

from __future__ import annotations

import math

PLACES = 6


def probabilities(logits: list[float]) -> list[float]:
    """One task's class probabilities from its logits (plain Python floats: a few classes per task, where
    numpy's per-call cost would dominate the gateway's answer)."""
    top = max(logits)
    exponentials = [math.exp(value - top) for value in logits]
    total = sum(exponentials)
    return [round(value / total, PLACES) for value in exponentials]
