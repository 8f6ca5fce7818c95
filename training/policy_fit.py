"""`adaudit policy fit`: a model run over held-out ads, thresholds fitted on its scores, a policy written.

The thresholds are chosen on the data folder's validation split, never on test.jsonl: the test split
must stay the place where a chosen threshold's precision is measured, not tuned (benchmarks/decisions.py
measures there). The fitted policy keeps the base policy's term lists (written inline, so the YAML is
one self-contained file that works wherever it is copied) and gives every violation class the fitted
`block_at` and `review_at` (decisions/fit.py explains why one pair serves every class), or with `per_class`
one pair per class (decisions/fit.py `fit_class_thresholds`).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
import yaml

from adaudit.core.files import atomic_write_bytes, atomic_write_text
from adaudit.data.dataset import DatasetError
from adaudit.data.encoding import EncodedSplit, encode_split, encode_validation
from adaudit.decisions.fit import (ClassThresholds, FittedThresholds, fit_class_thresholds, fit_thresholds,
                                   precision_automation_curve)
from adaudit.decisions.policy import SHIPPED, check_policy, load_policy, parse_policy
from adaudit.decisions.scores import probabilities as served_probabilities
from adaudit.models.labels import DEFAULT_TAXONOMY, Taxonomy
from adaudit.models.configuration import AuditModelConfig
from adaudit.models.modeling import AuditModel
from adaudit.models.preprocessing import AuditProcessor

from .evaluation import predict_logits


def held_out_split(data_dir: Path, processor: AuditProcessor, tasks: dict[str, list[str]]) -> EncodedSplit:
    """The validation split thresholds are fitted on; DatasetError when the data set has none."""
    encoded = encode_validation(data_dir, processor, tasks)
    if encoded is None:
        raise DatasetError(f"{Path(data_dir) / 'validation.jsonl'} not found: thresholds are fitted on "
                           "held-out ads (`adaudit data make --validation-fraction`), never on the test split")
    return encoded


def splits_scores(model_dir: Path, splits: list[tuple[Path, str]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(risk scores, whether each ad truly violates) for each (data folder, split), the model loaded once: the
    risk is read from the model's reason task, clean class excluded (its taxonomy, models/labels.py)."""
    return [(probabilities.max(axis=1), violating)
            for probabilities, violating in splits_class_probabilities(model_dir, splits)[1]]


def splits_class_probabilities(model_dir: Path, splits: list[tuple[Path, str]]) \
        -> tuple[list[str], list[tuple[np.ndarray, np.ndarray]]]:
    """The model's violation classes (clean class left out) and, for each (data folder, split), each ad's
    (classes,) probabilities and whether it truly violates: what per-class thresholds are fitted on."""
    model = AuditModel.from_pretrained(model_dir)
    processor = AuditProcessor.from_folder(model.config, model_dir)
    tasks = model.config.tasks
    results = []
    for data_dir, split in splits:
        if split == "validation":
            encoded = held_out_split(data_dir, processor, tasks)
        else:
            encoded = encode_split(data_dir, split, processor, tasks)
        results.append(class_probabilities(model.config, predict_logits(model, encoded), encoded))
    return violation_classes(model.config), results


def violation_classes(config: AuditModelConfig) -> list[str]:
    """The reason task's classes other than the clean one, in the order of class_probabilities' columns."""
    taxonomy = config.taxonomy
    return [name for name in config.tasks[taxonomy.reason_task] if name != taxonomy.clean_class]


def class_probabilities(config: AuditModelConfig, logits: dict[str, torch.Tensor],
                        encoded: EncodedSplit) -> tuple[np.ndarray, np.ndarray]:
    """((ads, violation classes) probabilities, whether each ad truly violates) from a model's logits."""
    taxonomy = config.taxonomy
    reason = taxonomy.reason_task
    # as the gateway computes them (decisions/scores.py), so a fitted threshold decides served ads alike
    probabilities = np.array([served_probabilities(row) for row in logits[reason].float().numpy().tolist()])
    truth = encoded.labels[:, encoded.tasks.index(reason)].numpy()
    none_index = list(config.tasks[reason]).index(taxonomy.clean_class)
    return np.delete(probabilities, none_index, axis=1), truth != none_index


def logits_scores(config: AuditModelConfig, logits: dict[str, torch.Tensor],
                  encoded: EncodedSplit) -> tuple[np.ndarray, np.ndarray]:
    """(risk scores, whether each ad truly violates) from a model's logits over `encoded`: for callers that
    already hold the logits (or the model in memory), the same reading as splits_scores."""
    probabilities, violating = class_probabilities(config, logits, encoded)
    return probabilities.max(axis=1), violating


def fitted_policy(fit: FittedThresholds | ClassThresholds, name: str, base: Path | None = None,
                  taxonomy: Taxonomy = DEFAULT_TAXONOMY) -> dict:
    """The base policy (default: the shipped default.yaml) with the fitted thresholds and inline term lists.
    A base that names classes the model's `taxonomy` lacks (the shipped one, under a data set's own labels)
    gives only its shape: every violation class of the taxonomy, no attributes and no term lists."""
    loaded = load_policy(base or SHIPPED / "default.yaml", None)
    policy = loaded.policy.model_dump(exclude_none=True)
    try:
        check_policy(loaded.policy, taxonomy)
    except ValueError:
        policy.update(violations=dict.fromkeys(taxonomy.violations), attributes={})
        policy.pop("terms", None)
    if isinstance(fit, ClassThresholds):
        pairs = {v: (fit.block_at[fit.classes.index(v)], fit.review_at[fit.classes.index(v)])
                 for v in policy["violations"]}
    else:
        pairs = dict.fromkeys(policy["violations"], (fit.block_at, fit.review_at))
    # written exactly, not rounded: a rounded block_at or review_at decides other ads than the fit did (where
    # probabilities crowd near a threshold, rounding to 6 places halved a pass precision); a policy never has
    # review_at above block_at
    violations = {v: {"block_at": float(block), "review_at": float(min(review, block))}
                  for v, (block, review) in pairs.items()}
    policy.update(name=name, version="1", violations=violations,
                  description=f"fitted by adaudit policy fit: automatic blocks and passes at precision "
                              f"{fit.target_precision} on the validation split, automation rate "
                              f"{fit.automation_rate:.4f} there")
    if "terms" in policy:
        policy["terms"].update(loaded.matcher.lists)
    parse_policy(policy, name, taxonomy)  # what is written must load
    return policy


def policy_yaml(policy: dict) -> str:
    """A fitted policy as its YAML file holds it (keys in the policy's own order, Chinese terms as written)."""
    return yaml.safe_dump(policy, allow_unicode=True, sort_keys=False)


def plot_curve(curve: list[dict], chosen: FittedThresholds, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot([p["target_precision"] for p in curve], [p["automation_rate"] for p in curve], marker="o")
    axis.axvline(chosen.target_precision, color="grey", linestyle="--", linewidth=1)
    axis.set_xlabel("target precision of automatic blocks and passes")
    axis.set_ylabel("automation rate (share decided without a reviewer)")
    axis.set_ylim(0, 1.02)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())


def fit_policy(model_dir: Path, data_dir: Path, target: float, out: Path, name: str = "fitted",
               base: Path | None = None, per_class: bool = False) -> dict:
    """Fit, write OUT (the policy YAML) and OUT's curve PNG beside it (the common pair's curve); returns the fit
    and the curve. `per_class`: one pair per violation class."""
    if not 0.0 < target < 1.0:
        raise ValueError(f"--target-precision {target} is not between 0 and 1")
    classes, [(probabilities, violating)] = splits_class_probabilities(model_dir, [(data_dir, "validation")])
    scores = probabilities.max(axis=1)
    fit = (fit_class_thresholds(probabilities, violating, target, classes) if per_class
           else fit_thresholds(scores, violating, target))
    curve = precision_automation_curve(scores, violating)
    policy = fitted_policy(fit, name, base, AuditModelConfig.load(model_dir).taxonomy)
    out = Path(out)
    atomic_write_text(out, policy_yaml(policy))
    plot = out.with_suffix(".curve.png")
    plot_curve(curve, fit, plot)
    written = policy["violations"]  # the thresholds as written
    if not per_class:
        written = next(iter(written.values()))
    else:
        written = {key: {v: pair[key] for v, pair in written.items()} for key in ("block_at", "review_at")}
    return {"fit": fit.as_dict() | written, "curve": curve, "ads": int(len(scores)), "policy": str(out),
            "plot": str(plot)}
