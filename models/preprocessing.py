"""Turning an ad (a PIL image and its copy) into the model's input tensors.

One implementation, used by training, evaluation, benchmarks and the gateway, so that every
path feeds the model exactly the same numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .configuration import AuditModelConfig
from .tokenizer import load_tokenizer, make_tokenizer

IMAGE_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGE_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


class AuditProcessor:
    def __init__(self, config: AuditModelConfig, tokenizer=None):
        self.image_size = config.image_size
        self.max_text_length = config.max_text_length
        self.tokenizer = tokenizer or make_tokenizer()

    @classmethod
    def from_folder(cls, config: AuditModelConfig, model_folder: Path) -> "AuditProcessor":
        return cls(config, load_tokenizer(model_folder))

    def image_bytes(self, images: list[Image.Image]) -> torch.Tensor:
        """uint8 (batch, 3, size, size): compact enough to keep a whole data set in memory."""
        size = (self.image_size, self.image_size)
        arrays = [np.asarray((image if image.mode == "RGB" else image.convert("RGB")).resize(size, Image.BILINEAR))
                  for image in images]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()

    @staticmethod
    def normalise(image_bytes: torch.Tensor) -> torch.Tensor:
        return (image_bytes.float() / 255.0 - IMAGE_MEAN) / IMAGE_STD

    def texts(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        encoded = self.tokenizer(texts, padding="max_length", truncation=True,
                                 max_length=self.max_text_length, return_tensors="np")  # numpy: cheaper than "pt"
        return (torch.from_numpy(encoded["input_ids"].astype(np.int64, copy=False)),
                torch.from_numpy(encoded["attention_mask"].astype(np.int64, copy=False)))

    def __call__(self, images: list[Image.Image], texts: list[str]) -> dict[str, torch.Tensor]:
        input_ids, attention_mask = self.texts(texts)
        return {"pixel_values": self.normalise(self.image_bytes(images)),
                "input_ids": input_ids, "attention_mask": attention_mask}
