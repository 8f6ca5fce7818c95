"""A data split decoded and tokenised once, read as tensors a batch at a time.

`encode_split` reads a split's pack (data/packing.py: the decoded pictures and token ids in memory-mapped
`.npy` files under DATA/.packs/, built on first use): the tensors share the maps, so only the pages of the
ads a batch takes are read, and `inputs` lets go of them again, so no command holds a whole split in memory.
`encode_records` encodes records in memory (a few ads; the reference the packs are tested against).

Batches are index tensors gathered in the training process, not a DataLoader with workers: a batch of
the `tiny` preset is 32 rows of 3 KiB copied from the page cache, about 2% of the time of one `tiny`
training step (measured on the 2-core machine), and a worker would add a process per core competing with
training for the same cores and a copy of every batch through shared memory. Decoding JPEGs is where
workers pay: packing uses them (data/packing.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from adaudit.models.preprocessing import AuditProcessor
from adaudit.models.serving import model_inputs

from .dataset import AdRecord, load_image, read_split
from .packing import MappedPages, packed_arrays


@dataclass
class EncodedSplit:
    ids: list[str]
    image_bytes: torch.Tensor  # uint8 (n, 3, size, size)
    input_ids: torch.Tensor  # (n, length)
    attention_mask: torch.Tensor
    labels: torch.Tensor  # (n, tasks), class indices in the config's task order
    tasks: list[str]
    # the memory maps the tensors read from a pack (None: tensors in memory); not compared, not printed
    pages: MappedPages | None = field(default=None, compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    def inputs(self, index: torch.Tensor, pictures=None) -> dict[str, torch.Tensor]:
        """Model inputs for these ads, the copy trimmed to the longest one in the batch; read from the pack's
        maps, whose pages are then let go (MappedPages.release), so reading a split keeps no more of it.
        `pictures` (uint8 pictures -> uint8 pictures), when given, changes the pictures first (augmentation)."""
        image_bytes = self.image_bytes[index]
        batch = model_inputs(image_bytes if pictures is None else pictures(image_bytes), self.input_ids[index],
                             self.attention_mask[index])
        self.release()
        return batch

    def release(self) -> None:
        """Drop the pages of the pack this split reads that were read so far (nothing for one in memory)."""
        if self.pages is not None:
            self.pages.release()

    def subset(self, index: torch.Tensor) -> "EncodedSplit":
        """These ads, copied into memory (as many as `index` names: distillation or search ads)."""
        subset = EncodedSplit([self.ids[i] for i in index.tolist()], self.image_bytes[index],
                              self.input_ids[index], self.attention_mask[index], self.labels[index], self.tasks)
        self.release()
        return subset

    def joined(self, other: "EncodedSplit") -> "EncodedSplit":
        """This split's rows followed by `other`'s (the same tasks, the copy padded to the same length): in
        memory, except that joining nothing (no recombined pairs, no views) keeps this split as it is."""
        if other.tasks != self.tasks or other.input_ids.shape[1] != self.input_ids.shape[1]:
            raise ValueError("splits to join need the same tasks and the same padded copy length")
        if len(other) == 0:
            return replace(self)  # a new split over the same tensors: nothing copied
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
                 limit: int | None = None, log=None) -> EncodedSplit:
    """`split` (its first `limit` ads) as tensors over its pack for this preprocessing (data/packing.py),
    built first when there is none; `log` hears when one is built."""
    ids, arrays, pages = packed_arrays(Path(data_dir), split, processor, tasks, log)
    if limit:
        ids, arrays = ids[:limit], {name: array[:limit] for name, array in arrays.items()}
    return EncodedSplit(ids, arrays["image_bytes"], arrays["input_ids"], arrays["attention_mask"], arrays["labels"],
                        list(tasks), pages)


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
