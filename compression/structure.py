"""The dependency view of an audit model, and the one operation that cuts it.

Every tensor dimension of the model plays a *role*: a tower's hidden size
(`text.hidden`), the attention channels of one block (`text.3.attention`), its FFN neurons
(`text.3.ffn`) or the Q-Former's image-attention channels (`qformer.1.cross_attention`).
Tensors that share a role must be cut together: that is the dependency graph, written down
once in `dimension_roles`.

`cut` is the only operation that shrinks a model. It builds a fresh `AuditModel` from the
smaller config and copies every tensor of the old model into it, keeping for each role the
indices it is given (and, for removed blocks, copying only the blocks that stay). Because the
result is literally `AuditModel(new_config)` with weights loaded, a student always reloads
from its folder; and because every new tensor must receive a tensor of exactly its shape, a
cut that forgot a dependency fails loudly instead of producing a broken model.
"""

from __future__ import annotations

import copy
import re

import torch

from adaudit.models.configuration import AuditModelConfig, BlockShape
from adaudit.models.modeling import BLOCK_ANATOMY, AuditModel

BLOCK_PARAMETER = re.compile(r"^(vision|qformer|text)\.encoder\.layer\.(\d+)\.(.+)\.(weight|bias|lambda1)$")


VOCABULARY = "text.vocabulary"  # the rows of the word embeddings: one per token of the tokenizer


def hidden(tower: str) -> str:
    return f"{tower}.hidden"


def attention(tower: str, block: int) -> str:
    return f"{tower}.{block}.attention"


def ffn(tower: str, block: int) -> str:
    return f"{tower}.{block}.ffn"


def cross_attention(block: int) -> str:
    return f"qformer.{block}.cross_attention"


def _block_linear_roles(tower: str, block: int, module: str) -> tuple[str, str] | None:
    """(output role, input role) of a linear layer inside a block, or None for norms and scales."""
    anatomy = BLOCK_ANATOMY[tower]
    own = hidden(tower)
    if module in (anatomy.query, anatomy.key, anatomy.value):
        return attention(tower, block), own
    if module == anatomy.attention_output:
        return own, attention(tower, block)
    if module == anatomy.ffn_input:
        return ffn(tower, block), own
    if module == anatomy.ffn_output:
        return own, ffn(tower, block)
    if anatomy.cross_attention and module.startswith(anatomy.cross_attention + "."):
        part = module[len(anatomy.cross_attention) + 1:]
        if part == "attention.query":
            return cross_attention(block), own
        if part in ("attention.key", "attention.value"):
            return cross_attention(block), hidden("vision")
        if part == "output.dense":
            return own, cross_attention(block)
    return None


def dimension_roles(name: str, ndim: int) -> tuple[str | None, ...]:
    """The role of each dimension of parameter `name` (None: a dimension no cut touches)."""
    match = BLOCK_PARAMETER.match(name)
    if match:
        tower, block, module, kind = match.group(1), int(match.group(2)), match.group(3), match.group(4)
        roles = _block_linear_roles(tower, block, module)
        if roles is None:  # LayerNorm and layer-scale vectors live on the hidden size
            return (hidden(tower),)
        return roles if kind == "weight" else roles[:1]
    if name == "vision.embeddings.patch_embeddings.projection.weight":
        return (hidden("vision"), None, None, None)
    if name == "text.embeddings.word_embeddings.weight":
        return (VOCABULARY, hidden("text"))
    if name.startswith("projector."):
        return (hidden("text"), hidden("qformer"))[:ndim]
    if name.startswith("agreement_heads."):  # read one number, industry_disagreement: nothing to cut
        return (None,) * ndim
    if name.startswith(("heads.", "image_heads.")):
        return (None, hidden("text")) if name.endswith("weight") else (None,)
    tower = "qformer" if name == "query_tokens" else name.split(".")[0]
    return (None,) * (ndim - 1) + (hidden(tower),)  # embeddings and final norms: last dim is hidden


def head_channels(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Channel indices of whole heads: head h owns channels h*head_dim ... (h+1)*head_dim-1."""
    return (heads.view(-1, 1) * head_dim + torch.arange(head_dim)).flatten()


def cut(model: AuditModel, config: AuditModelConfig, keep: dict[str, torch.Tensor] | None = None,
        kept_blocks: dict[str, list[int]] | None = None) -> AuditModel:
    """A new model of `config` holding the kept part of `model`.

    keep: role -> indices (into the old tensors) to keep; roles not named keep everything.
    kept_blocks: tower -> old block numbers that become new blocks 0, 1, ...
    """
    keep = keep or {}
    kept_blocks = kept_blocks or {}
    old_state = model.state_dict()
    new_model = AuditModel(config)
    new_state = {}
    for name, target in new_model.state_dict().items():
        old_name = name
        match = BLOCK_PARAMETER.match(name)
        if match and match.group(1) in kept_blocks:
            old_block = kept_blocks[match.group(1)][int(match.group(2))]
            old_name = name.replace(f".layer.{match.group(2)}.", f".layer.{old_block}.", 1)
        tensor = old_state[old_name]
        for dim, role in enumerate(dimension_roles(name, tensor.ndim)):
            if role in keep:
                tensor = tensor.index_select(dim, keep[role].to(tensor.device))  # decisions may come as CPU indices
        if tensor.shape != target.shape:
            raise RuntimeError(f"cut left {name} with shape {tuple(tensor.shape)}, config needs {tuple(target.shape)}")
        new_state[name] = tensor.clone()
    new_model.load_state_dict(new_state)
    new_model.train(model.training)
    new_model.tokenizer = model.tokenizer  # a cut that changes the vocabulary replaces it (vocabulary.py)
    return new_model


# --- the three kinds of cut, expressed as (new config, keep, kept_blocks) ------------------
def remove_blocks(model: AuditModel, kept_blocks: dict[str, list[int]]) -> AuditModel:
    config = copy.deepcopy(model.config)
    for tower, blocks in kept_blocks.items():
        config.tower(tower).blocks = [config.tower(tower).blocks[i] for i in blocks]
    return cut(model, config, kept_blocks=kept_blocks)


def shrink_widths(model: AuditModel, kept_heads: dict[str, list[torch.Tensor]],
                  kept_neurons: dict[str, list[torch.Tensor]],
                  kept_cross_heads: list[torch.Tensor] | None = None) -> AuditModel:
    """Keep, per tower and block, the given heads and FFN neurons (sorted index tensors)."""
    config = copy.deepcopy(model.config)
    keep = {}
    for tower, per_block in kept_heads.items():
        head_dim = config.tower(tower).head_dim
        for block, heads in enumerate(per_block):
            keep[attention(tower, block)] = head_channels(heads, head_dim)
            config.tower(tower).blocks[block].heads = len(heads)
    for tower, per_block in kept_neurons.items():
        for block, neurons in enumerate(per_block):
            keep[ffn(tower, block)] = neurons
            config.tower(tower).blocks[block].intermediate_size = len(neurons)
    for block, heads in enumerate(kept_cross_heads or []):
        shape: BlockShape = config.qformer.blocks[block]
        if shape.cross_attention_heads:
            keep[cross_attention(block)] = head_channels(heads, config.qformer.head_dim)
            shape.cross_attention_heads = len(heads)
    return cut(model, config, keep=keep)


def shrink_hidden(model: AuditModel, kept_channels: dict[str, torch.Tensor]) -> AuditModel:
    """Keep the given hidden channels of each named tower, in every tensor that reads or writes them."""
    config = copy.deepcopy(model.config)
    for tower, channels in kept_channels.items():
        config.tower(tower).hidden_size = len(channels)
    return cut(model, config, keep={hidden(tower): channels for tower, channels in kept_channels.items()})
