"""Torch-Pruning as a peer: Taylor-importance structured pruning of the whole audit model.

Torch-Pruning (PyPI `torch-pruning`) traces the model once into a dependency graph and prunes
coupled channels together. Here it sees the whole AuditModel: every tower's hidden size (with
the DINOv2 position embeddings, class token and layer scales, the learned query tokens and the
projector, given to it as unwrapped parameters), each block's FFN neurons and whole attention
heads (self- and image-attention; `num_heads` tells it which linear layers carry heads, and
`prune_head_dims=False` keeps each tower's head width). The task heads' outputs are left alone.
Importance: `GroupTaylorImportance` (|weight x gradient| summed over each coupled group) of
the distillation loss on the calibration ads, recomputed before every step.

A model pruned in place still carries its old config, so it cannot be saved as an adaudit
folder as is (and DINOv2's unused mask token, outside the traced graph, keeps its old width): `config_from_shapes` reads the pruned tensors back into an `AuditModelConfig`
(hidden size per tower, heads and FFN width per block), and `as_audit_model` loads the pruned
weights into `AuditModel(config)` and checks that it computes the same logits.
"""

from __future__ import annotations

import copy

import torch
import torch_pruning as tp

from adaudit.compression.distillation import TeacherCache
from adaudit.compression.importance import calibration_backward
from adaudit.compression.recipe import DistillationSettings
from adaudit.data.encoding import EncodedSplit
from adaudit.models.configuration import TOWERS, BlockShape
from adaudit.models.modeling import BLOCK_ANATOMY, AuditModel


def head_layers(model: AuditModel) -> dict[torch.nn.Linear, int]:
    """Every query/key/value projection and the number of heads it holds."""
    layers = {}
    for tower, anatomy in BLOCK_ANATOMY.items():
        for block, shape in zip(model.blocks(tower), model.config.tower(tower).blocks):
            for path in (anatomy.query, anatomy.key, anatomy.value):
                layers[block.get_submodule(path)] = shape.heads
            if anatomy.cross_attention and shape.cross_attention_heads:
                for part in ("query", "key", "value"):
                    layers[block.get_submodule(f"{anatomy.cross_attention_module}.{part}")] = shape.cross_attention_heads
    return layers


def unwrapped_parameters(model: AuditModel) -> list[tuple[torch.nn.Parameter, int]]:
    """Parameters outside any nn.Linear/LayerNorm whose last dimension is a tower's hidden size."""
    embeddings = model.vision.embeddings
    parameters = [(model.query_tokens, 2), (embeddings.cls_token, 2), (embeddings.position_embeddings, 2)]
    for block in model.blocks("vision"):
        parameters += [(block.layer_scale1.lambda1, 0), (block.layer_scale2.lambda1, 0)]
    return parameters


# DINOv2's mask token (for masked-image pretraining) takes no part in an audit model's forward pass
UNTRACED = ("vision.embeddings.mask_token",)


def all_logits(output) -> list[torch.Tensor]:
    return list(output.logits.values()) + list(output.image_logits.values())


class TaylorPruner:
    """Torch-Pruning's MetaPruner over an AuditModel, pruned in `steps` equal steps up to `ratio` of the
    channels (and of the heads, down to one per attention at the last step)."""

    def __init__(self, model: AuditModel, calibration: EncodedSplit, cache: TeacherCache,
                 settings: DistillationSettings, ratio: float = 0.95, steps: int = 20):
        self.model, self.calibration, self.cache, self.settings = model, calibration, cache, settings
        example = calibration.inputs(torch.arange(min(2, len(calibration))))
        heads = head_layers(model)
        head_ratio = 1 - 1.5 / min(heads.values())  # at the last step every attention keeps one head
        self.pruner = tp.pruner.MetaPruner(
            model, example, importance=tp.importance.GroupTaylorImportance(), global_pruning=True,
            pruning_ratio=ratio, iterative_steps=steps, max_pruning_ratio=ratio,
            num_heads=heads, prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=head_ratio,
            ignored_layers=list(model.heads.values()) + list(model.image_heads.values())
            + list(getattr(model, "agreement_heads", {}).values()),
            unwrapped_parameters=unwrapped_parameters(model), output_transform=all_logits)
        self.steps, self.done = steps, 0

    def step(self) -> None:
        calibration_backward(self.model, self.calibration, self.cache, self.settings)  # gradients for Taylor
        self.pruner.step()
        self.model.zero_grad(set_to_none=True)
        self.done += 1


def config_from_shapes(model: AuditModel):
    """The AuditModelConfig that describes the tensors a pruned-in-place model now holds."""
    config = copy.deepcopy(model.config)
    hidden = {"vision": model.vision.embeddings.patch_embeddings.projection.out_channels,
              "qformer": model.query_tokens.shape[-1], "text": model.text.embeddings.word_embeddings.embedding_dim}
    for tower in TOWERS:
        shape = config.tower(tower)
        anatomy = BLOCK_ANATOMY[tower]
        shape.hidden_size = hidden[tower]
        blocks = []
        for block, old in zip(model.blocks(tower), shape.blocks):
            cross = 0
            if anatomy.cross_attention and old.cross_attention_heads:
                cross = block.get_submodule(f"{anatomy.cross_attention_module}.query").out_features // shape.head_dim
            blocks.append(BlockShape(block.get_submodule(anatomy.query).out_features // shape.head_dim,
                                     block.get_submodule(anatomy.ffn_input).out_features, cross))
        shape.blocks = blocks
    return config.validate()


def as_audit_model(pruned: AuditModel, check: EncodedSplit) -> AuditModel:
    """The pruned weights in a fresh AuditModel(config_from_shapes): saveable and reloadable.

    Raises if any tensor does not fit the config or the logits differ on `check`'s first ads."""
    model = AuditModel(config_from_shapes(pruned))
    state = pruned.state_dict()
    for name in UNTRACED:  # never in the traced graph, so Torch-Pruning left it at its old width
        state[name] = model.state_dict()[name]
    model.load_state_dict(state)
    model.eval(), pruned.eval()
    inputs = check.inputs(torch.arange(min(8, len(check))))
    with torch.inference_mode():
        for ours, theirs in zip(all_logits(model(**inputs)), all_logits(pruned(**inputs))):
            torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    return model
