"""Audit metrics: per-task accuracy, violation macro-F1 and agreement with the teacher.

The headline keys name roles, not tasks, so every report reads the same under any taxonomy
(models/labels.py): `accuracy` is the verdict task's, `violation_macro_f1` and `violation_recall`
the reason task's, `agreement` and `violation_agreement` the same two tasks' agreement with the teacher.
"""

from __future__ import annotations

import torch
from sklearn.metrics import f1_score

from adaudit.data.encoding import EncodedSplit
from adaudit.models.labels import DEFAULT_TAXONOMY, Taxonomy
from adaudit.models.modeling import AuditModel


@torch.inference_mode()
def predict_logits(model: AuditModel, split: EncodedSplit, batch_size: int = 64) -> dict[str, torch.Tensor]:
    model.eval()
    chunks: dict[str, list[torch.Tensor]] = {task: [] for task in split.tasks}
    for index in split.batches(batch_size):
        logits = model(**split.inputs(index)).logits
        for task in split.tasks:
            chunks[task].append(logits[task].float())
    return {task: torch.cat(parts) for task, parts in chunks.items()}


def audit_metrics(predictions: dict[str, torch.Tensor], split: EncodedSplit,
                  teacher_predictions: dict[str, torch.Tensor] | None = None,
                  taxonomy: Taxonomy = DEFAULT_TAXONOMY) -> dict:
    """`predictions` maps task -> predicted class indices (n,)."""
    labels = {task: split.labels[:, i] for i, task in enumerate(split.tasks)}
    per_task = {task: (predictions[task] == labels[task]).float().mean().item() for task in split.tasks}
    verdict, reason = taxonomy.verdict_task, taxonomy.reason_task
    metrics = {
        "accuracy": per_task[verdict],  # verdict accuracy: the headline number
        "violation_macro_f1": f1_score(labels[reason].numpy(), predictions[reason].numpy(),
                                       average="macro", zero_division=0),
        "task_accuracy": per_task,
        "violation_recall": violation_recall(predictions[reason], labels[reason], taxonomy.tasks[reason]),
        "samples": len(split),
    }
    if teacher_predictions is not None:
        metrics["agreement"] = (predictions[verdict] == teacher_predictions[verdict]).float().mean().item()
        metrics["violation_agreement"] = (
            predictions[reason] == teacher_predictions[reason]).float().mean().item()
    return metrics


def violation_recall(predicted: torch.Tensor, actual: torch.Tensor,
                     names: tuple[str, ...] = DEFAULT_TAXONOMY.tasks[DEFAULT_TAXONOMY.reason_task]) -> dict[str, float]:
    """Share of each reason class found (which violations a model catches and which it misses)."""
    return {name: (predicted[actual == i] == i).float().mean().item() for i, name in enumerate(names)
            if (actual == i).any()}


def evaluate(model: AuditModel, split: EncodedSplit, teacher_predictions=None) -> dict:
    predictions = {task: logits.argmax(-1) for task, logits in predict_logits(model, split).items()}
    return audit_metrics(predictions, split, teacher_predictions, model.config.taxonomy)
