"""A data split decoded and tokenised once, held in memory as tensors.

Training, distillation and evaluation loop over these tensors; nothing is decoded twice.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from adaudit.models.preprocessing import AuditProcessor
from adaudit.models.serving import model_inputs

from .dataset import AdRecord, load_image, read_split


@dataclass
class EncodedSplit:
    ids: list[str]
    image_bytes: torch.Tensor  # uint8 (n, 3, size, size)
    input_ids: torch.Tensor  # (n, length)
    attention_mask: torch.Tensor
    labels: torch.Tensor  # (n, tasks), class indices in the config's task order
    tasks: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    def inputs(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """Model inputs for these ads, the copy trimmed to the longest one in the batch."""
        return model_inputs(self.image_bytes[index], self.input_ids[index], self.attention_mask[index])

    def subset(self, index: torch.Tensor) -> "EncodedSplit":
        return EncodedSplit([self.ids[i] for i in index.tolist()], self.image_bytes[index],
                            self.input_ids[index], self.attention_mask[index], self.labels[index], self.tasks)

    def joined(self, other: "EncodedSplit") -> "EncodedSplit":
        """This split's rows followed by `other`'s (the same tasks, the copy padded to the same length)."""
        if other.tasks != self.tasks or other.input_ids.shape[1] != self.input_ids.shape[1]:
            raise ValueError("splits to join need the same tasks and the same padded copy length")
        return EncodedSplit(self.ids + other.ids, torch.cat([self.image_bytes, other.image_bytes]),
                            torch.cat([self.input_ids, other.input_ids]),
                            torch.cat([self.attention_mask, other.attention_mask]),
                            torch.cat([self.labels, other.labels]), self.tasks)

    def batches(self, batch_size: int, generator: torch.Generator | None = None):
        """Index tensors covering the split once; shuffled when a generator is given."""
        order = torch.randperm(len(self), generator=generator) if generator is not None else torch.arange(len(self))
        yield from order.split(batch_size)


def encode_records(records: list[AdRecord], processor: AuditProcessor, tasks: dict[str, list[str]]) -> EncodedSplit:
    images = [load_image(record.image_path, processor.image_size) for record in records]
    input_ids, attention_mask = processor.texts([record.text for record in records])
    labels = torch.tensor([[names.index(record.labels[task]) for task, names in tasks.items()]
                           for record in records], dtype=torch.long).view(len(records), len(tasks))
    return EncodedSplit([r.id for r in records], processor.image_bytes(images), input_ids, attention_mask,
                        labels, list(tasks))


def encode_split(data_dir: Path, split: str, processor: AuditProcessor, tasks: dict[str, list[str]],
                 limit: int | None = None) -> EncodedSplit:
    records = read_split(Path(data_dir), split)
    return encode_records(records[:limit] if limit else records, processor, tasks)


def encode_validation(data_dir: Path, processor: AuditProcessor, tasks: dict[str, list[str]]) -> EncodedSplit | None:
    """The data set's validation split (what choices are made on), or None for a data set without one."""
    if not (Path(data_dir) / "validation.jsonl").is_file():
        return None
    return encode_split(data_dir, "validation", processor, tasks)


def tokenised_for(model, split: EncodedSplit, data_dir: Path, name: str) -> EncodedSplit:
    """`split` (encoded for the teacher) with its copy tokenised by `model`'s own tokenizer: a student
    whose vocabulary was pruned takes other token ids. Unchanged for a model with the generated vocabulary."""
    if model.tokenizer is None:
        return split
    texts = {record.id: record.text for record in read_split(Path(data_dir), name)}
    input_ids, attention_mask = AuditProcessor(model.config, model.tokenizer).texts([texts[ad] for ad in split.ids])
    return replace(split, input_ids=input_ids, attention_mask=attention_mask)
