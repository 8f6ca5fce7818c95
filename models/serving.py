"""The one forward pass over prepared ads, shared by training, the Triton model and the gateway.

Every place that runs a model on the tensors preprocessing makes (the picture as uint8, the copy
padded to the model's text length) goes through `model_inputs`: the picture is normalised where
the model runs (on its device, in its dtype) and the copy is trimmed to the longest one in the
batch. Keeping this in one function is what makes the embedded backend, Triton and evaluation
answer with the same logits for the same ad.

The served logits are calibrated: each task's logits are divided by the temperature fitted on
held-out ads (the config's `temperatures`, training/calibration.py), so a softmax over them is a
probability a threshold can be set on. Dividing by a positive number keeps every argmax. Training
and distillation call the model itself and see its raw logits; only what is served is divided.
"""

from __future__ import annotations

import torch

from .modeling import AuditModel
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


def task_temperatures(model) -> dict[str, float]:
    """The temperatures to serve `model` at: an `AuditModel`'s config, or an engine's own `temperatures`
    (the ONNX Runtime model reads them from its graph); none (every task at 1.0) for anything else."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "temperatures"):
        return dict(config.temperatures)
    return dict(getattr(model, "temperatures", None) or {})


def calibrated(logits: dict[str, torch.Tensor], temperatures: dict[str, float]) -> dict[str, torch.Tensor]:
    """Each task's logits divided by its temperature; a task at 1.0 passes through untouched, so a model
    without temperatures serves (and exports) exactly the graph it did before calibration existed."""
    return {task: value / temperatures[task] if temperatures.get(task, 1.0) != 1.0 else value
            for task, value in logits.items()}


def distinct_pictures(image_bytes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The batch's pictures with each run of equal consecutive ones kept once, and each row's index among them;
    (the pictures, None) when no row repeats the one before it.

    Why consecutive runs: `explain` sends an ad's copy variants as consecutive rows over one picture
    (service/evidence.py), and comparing each row with the one before costs a pass over the bytes, far below a
    vision forward, where sorting every row (torch.unique) would cost more on a batch without repeats."""
    if len(image_bytes) < 2:
        return image_bytes, None
    repeats = (image_bytes[1:] == image_bytes[:-1]).flatten(1).all(1)
    if not bool(repeats.any()):
        return image_bytes, None
    starts = torch.cat([repeats.new_ones(1), ~repeats])
    return image_bytes[starts], torch.cumsum(starts.long(), 0) - 1


@torch.inference_mode()
def served_logits(model, image_bytes: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Each task's calibrated logits for a batch of prepared ads, as served (no gradients).

    `model` is an `AuditModel` or anything called the same way that returns raw logits (the ONNX
    Runtime model); the temperatures come from `task_temperatures(model)`. An `AuditModel` encodes a picture
    that consecutive rows share once (`distinct_pictures`): the same logits, less vision work."""
    picture_rows = None
    if isinstance(model, AuditModel):
        image_bytes, picture_rows = distinct_pictures(image_bytes)
    inputs = model_inputs(image_bytes, input_ids, attention_mask, dtype)
    if picture_rows is not None:
        inputs["picture_rows"] = picture_rows
    logits = model(**inputs).logits
    return calibrated(logits, task_temperatures(model))
