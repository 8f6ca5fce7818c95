"""Scoring what to prune: block influence, Taylor importance of units, soft masks.

- Blocks: block influence (ShortGPT), BI = 1 - cos(block input, block output), averaged over
  tokens and calibration ads. A block that barely changes its input matters least.
- Heads and FFN neurons: first-order Taylor importance. Each unit's output is multiplied by
  a mask m (all ones); |dL/dm| summed over calibration batches estimates how much the
  distillation loss would change if the unit were removed (as in AntGMM).
- Hidden channels: |sum(grad * W)| per channel, summed over every tensor of the tower that
  has that channel (one score shared by all blocks, embeddings and norms, as in AntGMM).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from adaudit.data.encoding import EncodedSplit
from adaudit.models.modeling import BLOCK_ANATOMY, AuditModel

from .distillation import TeacherCache, distillation_loss
from .recipe import DistillationSettings
from .structure import dimension_roles, hidden


@torch.inference_mode()
def block_influence(model: AuditModel, split: EncodedSplit, towers, batch_size: int = 64) -> dict[str, torch.Tensor]:
    model.eval()
    totals = {tower: torch.zeros(len(model.blocks(tower))) for tower in towers}
    for index in split.batches(batch_size):
        states = model(**split.inputs(index), output_hidden_states=True).hidden_states
        for tower in towers:
            for block in range(len(model.blocks(tower))):
                before, after = states[tower][block], states[tower][block + 1]
                totals[tower][block] += (1 - F.cosine_similarity(before, after, dim=-1)).mean(-1).sum()
    return {tower: total / len(split) for tower, total in totals.items()}


class UnitMasks:
    """Multiplicative masks over every block's heads, FFN neurons and cross-attention heads.

    Forward pre-hooks scale the input of the layer that reads those units (attention output
    projection, FFN output projection), so a mask of 0 is exactly the unit removed.
    """

    def __init__(self, model: AuditModel, requires_grad: bool = False):
        self.heads: dict[str, list[torch.Tensor]] = {}
        self.neurons: dict[str, list[torch.Tensor]] = {}
        self.cross_heads: list[torch.Tensor | None] = []
        self._hooks = []
        device = next(model.parameters()).device  # the masks multiply the model's activations where they are
        for tower, anatomy in BLOCK_ANATOMY.items():
            head_dim = model.config.tower(tower).head_dim
            self.heads[tower], self.neurons[tower] = [], []
            for block, shape in zip(model.blocks(tower), model.config.tower(tower).blocks):
                heads = torch.ones(shape.heads, requires_grad=requires_grad, device=device)
                neurons = torch.ones(shape.intermediate_size, requires_grad=requires_grad, device=device)
                self.heads[tower].append(heads)
                self.neurons[tower].append(neurons)
                self._hook(block.get_submodule(anatomy.attention_output), heads, head_dim)
                self._hook(block.get_submodule(anatomy.ffn_output), neurons, 1)
                if tower == "qformer":
                    cross = None
                    if shape.cross_attention_heads:
                        cross = torch.ones(shape.cross_attention_heads, requires_grad=requires_grad, device=device)
                        self._hook(block.get_submodule(f"{anatomy.cross_attention}.output.dense"), cross, head_dim)
                    self.cross_heads.append(cross)

    def _hook(self, layer: torch.nn.Module, mask: torch.Tensor, repeat: int) -> None:
        def scale_input(module, inputs):
            return (inputs[0] * mask.repeat_interleave(repeat),)
        self._hooks.append(layer.register_forward_pre_hook(scale_input))

    def all_masks(self):
        for tower in self.heads:
            yield from self.heads[tower]
            yield from self.neurons[tower]
        yield from (mask for mask in self.cross_heads if mask is not None)

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()


def calibration_backward(model: AuditModel, split: EncodedSplit, cache: TeacherCache,
                          settings: DistillationSettings, batch_size: int = 32) -> None:
    """Accumulate gradients of the distillation loss over the calibration split (eval mode: no dropout)."""
    model.eval()
    model.zero_grad(set_to_none=True)
    for index in split.batches(batch_size):
        distillation_loss(model, split, cache, index, settings).backward()


def taylor_unit_scores(model: AuditModel, split: EncodedSplit, cache: TeacherCache,
                       settings: DistillationSettings) -> UnitMasks:
    """Masks whose `.grad` holds |dL/dm| per unit: the Taylor importance of each head and neuron."""
    masks = UnitMasks(model, requires_grad=True)
    try:
        calibration_backward(model, split, cache, settings)
    finally:
        masks.remove()
        model.zero_grad(set_to_none=True)
    for mask in masks.all_masks():
        mask.grad = mask.grad.abs().cpu()  # scores on the CPU, wherever the model ran
    return masks


def taylor_hidden_scores(model: AuditModel, split: EncodedSplit, cache: TeacherCache,
                         settings: DistillationSettings, towers) -> dict[str, torch.Tensor]:
    calibration_backward(model, split, cache, settings)
    scores = {tower: torch.zeros(model.config.tower(tower).hidden_size) for tower in towers}
    roles = {hidden(tower): tower for tower in towers}
    for name, parameter in model.named_parameters():
        if parameter.grad is None:
            continue
        contribution = (parameter.grad * parameter).detach()
        for dim, role in enumerate(dimension_roles(name, parameter.ndim)):
            if role in roles:
                other = [d for d in range(parameter.ndim) if d != dim]
                per_channel = contribution.sum(dim=other) if other else contribution
                scores[roles[role]] += per_channel.abs().cpu()
    model.zero_grad(set_to_none=True)
    return scores


def top_indices(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the `keep` highest scores, in ascending index order (ties: lower index first)."""
    order = torch.argsort(scores, descending=True, stable=True)
    return order[:keep].sort().values
