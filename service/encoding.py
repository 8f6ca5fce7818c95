"""Model inputs from checked ads, and audit labels from model logits: both sides of one backend call.

Inputs come from `models.preprocessing.AuditProcessor`, the one preprocessing implementation
(training, evaluation and the gateway feed the model the same numbers), sized by the model's
`ModelSpec` (image size, padded text length) and turned into the numpy arrays a backend takes:
image_bytes uint8 [B,3,S,S] (resized, normalised by the backend: a quarter of float32's bytes to
send), input_ids and attention_mask int64 [B,L]. One processor per
distinct spec, so the primary and a shadow of the same shape share the tensors.

Outputs: per task the argmax label and its softmax probability.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from adaudit.decisions.scores import probabilities as class_probabilities
from adaudit.models.labels import DEFAULT_TAXONOMY, Taxonomy
from adaudit.models.preprocessing import AuditProcessor

from .intake import Ad


@dataclass(frozen=True)
class ModelSpec:
    """What the gateway must know to feed a model and read its answer."""

    name: str
    version: str
    image_size: int
    max_text_length: int
    tasks: dict[str, tuple[str, ...]] = field(hash=False)
    vocabulary_folder: Path | None = None  # a model folder's vocab.txt; None: the generated vocabulary
    max_batch_size: int = 0  # the most ads one backend call may carry (Triton's max_batch_size); 0: no limit
    # the model's tasks and their roles (models/labels.py): which task is the verdict, which the reason
    taxonomy: Taxonomy = field(default=DEFAULT_TAXONOMY, hash=False, compare=False)
    image_fit: str = "squash"  # how a picture is fitted to the square (models/preprocessing.py fit_picture)

    @property
    def input_key(self) -> tuple:
        return (self.image_size, self.max_text_length, str(self.vocabulary_folder or ""), self.image_fit)


@dataclass
class Prediction:
    labels: dict[str, str]
    scores: dict[str, float]
    probabilities: dict[str, dict[str, float]] = field(default_factory=dict)  # task -> class -> softmax (decisions)

    def as_dict(self) -> dict:
        return {"labels": self.labels, "scores": self.scores}

    def answered(self, verdict: str, violation: str, taxonomy: Taxonomy = DEFAULT_TAXONOMY) -> "Prediction":
        """This prediction with the verdict and violation a decision answered (decisions/decide.py) as the labels
        of `taxonomy`'s verdict and reason tasks, each scored by the model's probability of it: what the gateway
        would have answered with these scores."""
        decided = {taxonomy.verdict_task: verdict, taxonomy.reason_task: violation}
        labels, scores = {**self.labels}, {**self.scores}
        for task, label in decided.items():
            if task in labels:
                labels[task] = label
            if task in self.probabilities:  # a class the model does not have (a term list's): probability 0
                scores[task] = self.probabilities[task].get(label, 0.0)
        return Prediction(labels, scores, self.probabilities)


class Encoder:
    def __init__(self):
        self._processors: dict[tuple, AuditProcessor] = {}
        self._lock = threading.Lock()

    def processor(self, spec: ModelSpec) -> AuditProcessor:
        with self._lock:
            if spec.input_key not in self._processors:
                if spec.vocabulary_folder is not None:
                    processor = AuditProcessor.from_folder(spec, spec.vocabulary_folder)
                else:
                    processor = AuditProcessor(spec)
                self._processors[spec.input_key] = processor
            return self._processors[spec.input_key]

    def encode(self, ads: list[Ad], spec: ModelSpec) -> dict[str, np.ndarray]:
        processor = self.processor(spec)  # numpy all the way: no torch call on the request path
        input_ids, attention_mask = processor.text_arrays([ad.text for ad in ads])
        return {"image_bytes": processor.image_array([ad.image for ad in ads]),
                "input_ids": input_ids, "attention_mask": attention_mask}


def select(inputs: dict[str, np.ndarray], index: int) -> dict[str, np.ndarray]:
    """One ad's inputs, batch dimension kept."""
    return {name: array[index:index + 1] for name, array in inputs.items()}


def predictions(logits: dict[str, np.ndarray], tasks: dict[str, tuple[str, ...]]) -> list[Prediction]:
    """Per ad and task: the argmax label and its probability, the probabilities as every policy reads them
    (decisions/scores.py: the threshold fit reads them the same way)."""
    rows = {task: logits[task].tolist() for task in tasks}
    answers = []
    for i in range(len(next(iter(rows.values())))):
        labels, scores, probabilities = {}, {}, {}
        for task, names in tasks.items():
            row = rows[task][i]
            top = row.index(max(row))
            task_probabilities = class_probabilities(row)
            labels[task], scores[task] = names[top], task_probabilities[top]
            probabilities[task] = dict(zip(names, task_probabilities))
        answers.append(Prediction(labels, scores, probabilities))
    return answers
