"""A moving average of the teacher's weights over its training steps (`teacher train --weight-average D`).

Why: the `base` teacher learns the generator's layouts and wording so well that on the shifted split
(layouts and phrasings it never saw) it rejects 7-8% of clean ads with near-certain scores, more than its
student, which distils on soft scores. Averaging the weights along the path of training finds a flatter
minimum than the last step's, and flat minima hold up better under a shift of data: weight averaging is what
most improves domain generalisation in Cha et al., "SWAD", NeurIPS 2021 (after Izmailov et al., "Averaging
weights leads to wider optima", UAI 2018). Here an exponential average with decay D (0.999: about the last
thousand steps, four epochs of the base teacher) is kept beside the model by torch's own
`AveragedModel`, updated after every optimizer step, saved with each checkpoint and, at the end, written as
the teacher; the last step's weights are written beside it (`unaveraged/`) so that one run measures both.
"""

from __future__ import annotations

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from adaudit.models.modeling import AuditModel

UNAVERAGED_FOLDER = "unaveraged"  # inside the teacher folder: the last step's weights, for comparison


class WeightAverage:
    """The exponential moving average of a model's parameters; `follow` starts it (from `state`, a checkpoint's
    tensors, when resuming) once the model sits on the device it trains on."""

    def __init__(self, decay: float, state: dict[str, torch.Tensor] | None = None):
        if not 0 < decay < 1:
            raise ValueError(f"the weight average's decay must be between 0 and 1 (exclusive), got {decay}")
        self.decay, self.state = decay, state
        self.averaged: AveragedModel | None = None

    def follow(self, model: AuditModel) -> None:
        self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(self.decay))
        if self.state is not None:
            self.averaged.load_state_dict({name: tensor.to(self.averaged.n_averaged.device)
                                           for name, tensor in self.state.items()})

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """After an optimizer step; `model` may be the DDP wrapper (its every rank holds the same weights)."""
        self.averaged.update_parameters(getattr(model, "module", model))

    def tensors(self) -> dict[str, torch.Tensor]:
        """What a checkpoint keeps (the averaged weights and the count of steps averaged), on the CPU."""
        return {name: tensor.detach().cpu().contiguous() for name, tensor in self.averaged.state_dict().items()}

    def copy_into(self, model: AuditModel) -> None:
        """Replace the model's parameters by their average (its buffers stay its own)."""
        model.load_state_dict(dict(self.averaged.module.named_parameters()), strict=False)
