"""The one forward pass over prepared ads, shared by training, the Triton model and the gateway.

Every place that runs a model on the tensors preprocessing makes (the picture as uint8, the copy
padded to the model's text length) goes through `model_inputs`: the picture is normalised where
the model runs (on its device, in its dtype) and the copy is trimmed to the longest one in the
batch. Keeping this in one function is what makes the embedded backend, Triton and evaluation
answer with the same logits for the same ad.
"""

from __future__ import annotations

import torch

from .preprocessing import AuditProcessor


def model_inputs(image_bytes: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """uint8 pictures and padded copy -> the keyword arguments of the model's forward.

    The copy keeps at least one position, so a batch of empty copies still has a sequence."""
    length = max(int(attention_mask.sum(1).max()), 1)
    pixel_values = AuditProcessor.normalise(image_bytes)
    if dtype is not None:
        pixel_values = pixel_values.to(dtype)
    return {"pixel_values": pixel_values, "input_ids": input_ids[:, :length],
            "attention_mask": attention_mask[:, :length]}


@torch.inference_mode()
def served_logits(model, image_bytes: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Each task's logits for a batch of prepared ads, as served (no gradients).

    `model` is an `AuditModel` or anything called the same way (the ONNX Runtime model)."""
    return model(**model_inputs(image_bytes, input_ids, attention_mask, dtype)).logits
