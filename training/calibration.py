"""Temperature scaling: one temperature per audit task, so that served scores are probabilities.

A trained classifier's softmax is usually over- or under-confident; a threshold such as "block above
0.9" (decisions/) only means what it says on calibrated scores. Temperature scaling (Guo et al., 2017)
divides each task's logits by one scalar T fitted by minimising the negative log-likelihood on held-out
ads. One scalar per head cannot change any argmax, so accuracy is untouched.

What is read for what (issue 29: choices read the validation split, never test):

- the temperature is fitted on the data set's validation split (`validation.jsonl`) only;
- the expected calibration error (ECE: 15 equal-width bins over the top label's confidence) is
  reported before and after on validation and on the test split, the test figures being the
  reported ones; the reliability diagram (before/after, verdict and violation) is drawn on test.

`fit_calibration` returns the temperatures and the record written under "calibration" in a teacher's
metrics.json and in compression's report.json; `apply` stores the temperatures in the model's config,
where models/serving.served_logits divides by them in every backend. A data set without a validation
split gets no temperatures and `skipped(reason)` in place of the record, so the omission is visible.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from adaudit.core.files import atomic_write_bytes
from adaudit.data.encoding import EncodedSplit
from adaudit.models.modeling import AuditModel
from adaudit.training.evaluation import predict_logits

BINS = 15
DIAGRAM_FILE = "reliability.png"
DIAGRAM_TASKS = ("verdict", "violation")  # today's verdict and reason tasks; a model's own: its taxonomy's
# the search range of T: wide enough for any head met so far, bounded so that a validation split the model
# gets entirely right (whose NLL keeps falling as T -> 0) still gives a finite, recorded temperature
LOWEST_TEMPERATURE, HIGHEST_TEMPERATURE = 0.05, 20.0
NO_VALIDATION = ("the data folder has no validation.jsonl, the only split temperatures are fitted on (never test):"
                 " the model is served at temperature 1.0")


def negative_log_likelihood(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    return torch.nn.functional.cross_entropy(logits.double() / temperature, labels).item()


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T in [LOWEST_TEMPERATURE, HIGHEST_TEMPERATURE] minimising the NLL of softmax(logits / T).

    The NLL is convex in 1/T, hence unimodal in log T: a golden-section search on log T finds the
    minimum without a learning rate or a starting point to tune."""
    if len(logits) == 0:
        raise ValueError("fitting a temperature needs at least one ad")
    logits = logits.detach().double()
    low, high = math.log(LOWEST_TEMPERATURE), math.log(HIGHEST_TEMPERATURE)
    ratio = (math.sqrt(5) - 1) / 2

    def loss(log_t: float) -> float:
        return negative_log_likelihood(logits, labels, math.exp(log_t))

    a, b = high - ratio * (high - low), low + ratio * (high - low)
    loss_a, loss_b = loss(a), loss(b)
    while high - low > 1e-6:
        if loss_a <= loss_b:
            high, b, loss_b = b, a, loss_a
            a = high - ratio * (high - low)
            loss_a = loss(a)
        else:
            low, a, loss_a = a, b, loss_b
            b = low + ratio * (high - low)
            loss_b = loss(b)
    return math.exp((low + high) / 2)


def at_search_bound(temperature: float) -> bool:
    """Whether the fit stopped at an end of the search range: a head that gets every validation ad right
    (lowest) or one no better than chance (highest); the record flags it rather than hide it."""
    return not LOWEST_TEMPERATURE * 1.001 < temperature < HIGHEST_TEMPERATURE / 1.001


def reliability_bins(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0,
                     bins: int = BINS) -> list[dict]:
    """Top-label confidence in `bins` equal-width bins over [0, 1]: each non-empty bin's ads, mean
    confidence and accuracy (what the ECE sums and the reliability diagram draws)."""
    probabilities = torch.softmax(logits.double() / temperature, dim=-1)
    confidence, predicted = probabilities.max(-1)
    correct = (predicted == labels).double()
    # bin i holds confidences in (i/bins, (i+1)/bins]; a confidence of exactly 0 cannot occur (>= 1/classes)
    index = (confidence * bins).ceil().long().clamp(1, bins) - 1
    rows = []
    for i in range(bins):
        members = index == i
        if members.any():
            rows.append({"bin": i, "ads": int(members.sum()), "confidence": confidence[members].mean().item(),
                         "accuracy": correct[members].mean().item()})
    return rows


def expected_calibration_error(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0,
                               bins: int = BINS) -> float:
    """Sum over bins of |accuracy - confidence| weighted by the bin's share of the ads (top label)."""
    rows = reliability_bins(logits, labels, temperature, bins)
    total = sum(row["ads"] for row in rows)
    return sum(row["ads"] * abs(row["accuracy"] - row["confidence"]) for row in rows) / total


def split_labels(split: EncodedSplit) -> dict[str, torch.Tensor]:
    return {task: split.labels[:, i] for i, task in enumerate(split.tasks)}


def task_figures(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> dict:
    return {"ece_before": expected_calibration_error(logits, labels),
            "ece_after": expected_calibration_error(logits, labels, temperature),
            "nll_before": negative_log_likelihood(logits, labels),
            "nll_after": negative_log_likelihood(logits, labels, temperature),
            "samples": len(labels)}


@dataclass
class Calibration:
    """Fitted temperatures, the record for metrics.json / report.json, and the test split's raw logits
    and labels (what the reliability diagram draws)."""
    temperatures: dict[str, float]
    record: dict
    test_logits: dict[str, torch.Tensor]
    test_labels: dict[str, torch.Tensor]
    diagram_tasks: tuple[str, ...] = DIAGRAM_TASKS  # the model's verdict and reason tasks (models/labels.py)

    def apply(self, model: AuditModel) -> AuditModel:
        model.config.temperatures = dict(self.temperatures)
        return model


def fit_calibration(model: AuditModel, validation: EncodedSplit, test: EncodedSplit) -> Calibration:
    """One temperature per task of `model`, fitted on `validation`; ECE and NLL before and after on
    both splits. Reads the model's raw logits (its forward, not the served ones), so a model that
    already carries temperatures (a student cut from a calibrated teacher) is fitted afresh."""
    raw = {"validation": predict_logits(model, validation), "test": predict_logits(model, test)}
    labels = {"validation": split_labels(validation), "test": split_labels(test)}
    temperatures = {task: fit_temperature(raw["validation"][task], labels["validation"][task])
                    for task in validation.tasks}
    tasks = {task: {"temperature": temperature, "at_search_bound": at_search_bound(temperature),
                    **{name: task_figures(raw[name][task], labels[name][task], temperature) for name in raw}}
             for task, temperature in temperatures.items()}
    record = {"fitted_on": "validation", "bins": BINS, "validation_samples": len(validation),
              "test_samples": len(test), "tasks": tasks, "reliability_diagram": DIAGRAM_FILE}
    taxonomy = model.config.taxonomy
    return Calibration(temperatures, record, raw["test"], labels["test"], (taxonomy.verdict_task, taxonomy.reason_task))


def skipped(reason: str) -> dict:
    """What metrics.json and report.json hold when no temperature was fitted."""
    return {"calibration": None, "calibration_skipped": reason}


def summary(record: dict) -> str:
    """One log line: each task's temperature and its test ECE before -> after."""
    parts = []
    for task, row in record["tasks"].items():
        bound = " (at the search bound)" if row["at_search_bound"] else ""
        parts.append(f"{task} T={row['temperature']:.3f}{bound} test ECE {100 * row['test']['ece_before']:.2f}% "
                     f"-> {100 * row['test']['ece_after']:.2f}%")
    return "; ".join(parts)


def plot_reliability(calibration: Calibration, folder: Path, title: str) -> Path:
    """DIAGRAM_FILE in `folder`: for the verdict and reason tasks, accuracy against confidence on the test split
    before and after temperature scaling (a calibrated model lies on the diagonal), written atomically."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [task for task in calibration.diagram_tasks if task in calibration.temperatures]
    figure, axes = plt.subplots(1, len(tasks), figsize=(4.6 * len(tasks), 4.4), squeeze=False)
    for axis, task in zip(axes[0], tasks):
        logits, labels = calibration.test_logits[task], calibration.test_labels[task]
        temperature = calibration.temperatures[task]
        axis.plot([0, 1], [0, 1], color="grey", linestyle=":", label="calibrated")
        for name, t, marker in (("before", 1.0, "o"), (f"after (T={temperature:.2f})", temperature, "s")):
            rows = reliability_bins(logits, labels, t)
            ece = expected_calibration_error(logits, labels, t)
            axis.plot([r["confidence"] for r in rows], [r["accuracy"] for r in rows], marker=marker,
                      label=f"{name}: ECE {100 * ece:.2f}%")
        axis.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top label)", ylabel="accuracy",
                 title=f"{task} ({len(labels)} test ads, {BINS} bins)")
        axis.legend(loc="upper left", fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    path = Path(folder) / DIAGRAM_FILE
    atomic_write_bytes(path, buffer.getvalue())
    return path
