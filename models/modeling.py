"""The ad-audit model: a BLIP-2-shaped classifier built from transformers blocks.

    image -> Dinov2Model (vision tower) -> Blip2QFormerModel (learned query tokens attend
    to the patches) -> projector -> BertModel (text tower reads the projected queries
    followed by the Chinese copy) -> one linear head per audit task.

Teacher and student are this same class; only the config differs. transformers builds
each tower with one global width, so after building, every block is reshaped to the
widths its `BlockShape` lists (`_shape_block`). `BLOCK_ANATOMY` names, for each tower, the
linear layers that carry heads and FFN neurons; compression/ reads it too, so the
knowledge of where the prunable tensors live is in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import BertConfig, BertModel, Blip2QFormerConfig, Blip2QFormerModel, Dinov2Config, Dinov2Model

from adaudit.core.files import atomic_folder

from .configuration import AuditModelConfig, BlockShape, ConfigError, TowerConfig
from .tokenizer import has_tokenizer, save_tokenizer, saved_tokenizer

WEIGHTS_FILE = "model.safetensors"
INITIALIZER_RANGE = 0.02


class ModelFolderError(ValueError):
    """A model folder that is missing, incomplete or corrupt."""


@dataclass(frozen=True)
class BlockAnatomy:
    """Module paths, inside one block of a tower, of the tensors that width pruning cuts."""

    attention: str  # the module that holds the head count
    query: str
    key: str
    value: str
    attention_output: str
    ffn_input: str
    ffn_output: str
    cross_attention: str | None = None  # Q-Former only
    cross_attention_module: str | None = None


BLOCK_ANATOMY = {
    "vision": BlockAnatomy(
        "attention", "attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj",
        "mlp.fc1", "mlp.fc2",
    ),
    "qformer": BlockAnatomy(
        "attention.attention", "attention.attention.query", "attention.attention.key",
        "attention.attention.value", "attention.output.dense", "intermediate_query.dense",
        "output_query.dense", cross_attention="crossattention",
        cross_attention_module="crossattention.attention",
    ),
    "text": BlockAnatomy(
        "attention.self", "attention.self.query", "attention.self.key", "attention.self.value",
        "attention.output.dense", "intermediate.dense", "output.dense",
    ),
}


# Tasks that the picture alone determines (industry: when the picture matches the copy).
# Heads for them read the mean of the projected query tokens, exactly what the text tower
# receives from the picture; training them grounds the vision tower, the Q-Former and the
# projector, so that the text tower is handed what the picture shows (which it must compare
# with the copy to find image-text mismatches).
IMAGE_TASKS = ("industry", "background_colour", "clutter", "logo")
# With `industry_agreement`, these heads also read `industry_disagreement`: how unlikely it is that the
# picture (image head) and the copy (industry head) name the same industry. Towers that read each modality
# well may still never learn to compare them (the pretrained teacher did not: docs/compression.md); the
# two industry heads each read their own modality reliably, and their disagreement states a mismatch
# outright. A learned Linear(1, classes) per task says what it means for that task.
AGREEMENT_TASKS = ("verdict", "violation")


def agreement_tasks(config: AuditModelConfig) -> tuple[str, ...]:
    """The heads that read the industry disagreement: the taxonomy's verdict and reason tasks (AGREEMENT_TASKS
    under today's names)."""
    return (config.verdict_task, config.reason_task)


def industry_disagreement(picture_logits: torch.Tensor, copy_logits: torch.Tensor) -> torch.Tensor:
    """-log P(picture and copy name the same industry), (batch, 1): about 0 when the two heads agree, up to
    13.8 when they do not. Read from the heads' distributions without a gradient into them, so the heads
    learn only from their own labels."""
    agreement = (picture_logits.detach().float().softmax(-1) * copy_logits.detach().float().softmax(-1)).sum(-1)
    return -torch.log(agreement.clamp_min(1e-6)).unsqueeze(-1)


@dataclass
class AuditOutput:
    logits: dict[str, torch.Tensor]  # task -> (batch, classes)
    pooled: torch.Tensor  # (batch, text hidden): the text tower's [CLS] state
    image_logits: dict[str, torch.Tensor]  # IMAGE_TASKS -> (batch, classes), from the picture alone
    hidden_states: dict[str, tuple[torch.Tensor, ...]] | None = None  # tower -> per-block states


def _new_linear(in_features: int, out_features: int) -> nn.Linear:
    layer = nn.Linear(in_features, out_features)
    nn.init.normal_(layer.weight, std=INITIALIZER_RANGE)
    nn.init.zeros_(layer.bias)
    return layer


def _set_module(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


def set_head_count(attention: nn.Module, heads: int, head_dim: int) -> None:
    """Tell a transformers attention module how many heads its projections now hold."""
    attention.num_attention_heads = heads
    attention.head_dim = head_dim  # Dinov2Attention
    attention.attention_head_size = head_dim  # BERT / Q-Former attention
    attention.all_head_size = heads * head_dim
    attention.scaling = head_dim**-0.5


def _shape_block(block: nn.Module, anatomy: BlockAnatomy, shape: BlockShape, tower: TowerConfig,
                 encoder_hidden_size: int = 0) -> None:
    hidden, width = tower.hidden_size, shape.heads * tower.head_dim
    for path in (anatomy.query, anatomy.key, anatomy.value):
        _set_module(block, path, _new_linear(hidden, width))
    _set_module(block, anatomy.attention_output, _new_linear(width, hidden))
    set_head_count(block.get_submodule(anatomy.attention), shape.heads, tower.head_dim)
    _set_module(block, anatomy.ffn_input, _new_linear(hidden, shape.intermediate_size))
    _set_module(block, anatomy.ffn_output, _new_linear(shape.intermediate_size, hidden))
    if anatomy.cross_attention is None:
        return
    if shape.cross_attention_heads == 0:
        delattr(block, anatomy.cross_attention)
        block.has_cross_attention = False
        return
    cross_width = shape.cross_attention_heads * tower.head_dim
    cross = anatomy.cross_attention
    _set_module(block, f"{cross}.attention.query", _new_linear(hidden, cross_width))
    _set_module(block, f"{cross}.attention.key", _new_linear(encoder_hidden_size, cross_width))
    _set_module(block, f"{cross}.attention.value", _new_linear(encoder_hidden_size, cross_width))
    _set_module(block, f"{cross}.output.dense", _new_linear(cross_width, hidden))
    set_head_count(block.get_submodule(anatomy.cross_attention_module), shape.cross_attention_heads, tower.head_dim)


def _build_vision(config: AuditModelConfig) -> Dinov2Model:
    tower = config.vision
    model = Dinov2Model(Dinov2Config(
        hidden_size=tower.hidden_size, num_hidden_layers=len(tower.blocks), num_attention_heads=1,
        mlp_ratio=1, image_size=config.image_size, patch_size=config.patch_size,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attn_implementation="sdpa",
    ))
    for block, shape in zip(model.encoder.layer, tower.blocks):
        _shape_block(block, BLOCK_ANATOMY["vision"], shape, tower)
    return model


def _build_qformer(config: AuditModelConfig) -> Blip2QFormerModel:
    tower = config.qformer
    model = Blip2QFormerModel(Blip2QFormerConfig(
        hidden_size=tower.hidden_size, num_hidden_layers=len(tower.blocks), num_attention_heads=1,
        intermediate_size=1, encoder_hidden_size=config.vision.hidden_size, cross_attention_frequency=1,
        use_qformer_text_input=False, attn_implementation="sdpa",
    ))
    for block, shape in zip(model.encoder.layer, tower.blocks):
        _shape_block(block, BLOCK_ANATOMY["qformer"], shape, tower, config.vision.hidden_size)
    return model


def _build_text(config: AuditModelConfig) -> BertModel:
    tower = config.text
    model = BertModel(BertConfig(
        vocab_size=config.vocab_size, hidden_size=tower.hidden_size, num_hidden_layers=len(tower.blocks),
        num_attention_heads=1, intermediate_size=1, type_vocab_size=1,
        max_position_embeddings=config.num_query_tokens + config.max_text_length, attn_implementation="sdpa",
    ), add_pooling_layer=False)
    for block, shape in zip(model.encoder.layer, tower.blocks):
        _shape_block(block, BLOCK_ANATOMY["text"], shape, tower)
    return model


def padding_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The text tower's attention mask as the bias its blocks add to their attention scores: 0 where a
    token may be read, the dtype's minimum at padding, shaped (batch, 1, length, length). What the ONNX
    export traces: three operations instead of transformers' general mask functions (a long chain of
    nodes in the graph), in the shape ONNX Runtime's fused attention takes (export/onnx_graph.py).
    Training and PyTorch serving keep transformers' own mask, which lets SDPA drop a mask of all ones
    and use its fastest kernels on a GPU; tests/test_model.py checks that both mask alike."""
    length = mask.shape[1]
    bias = (1.0 - mask.to(dtype)) * torch.finfo(dtype).min
    return bias[:, None, None, :].expand(-1, 1, length, -1)


def _make_unsaved_buffers(model: nn.Module) -> None:
    """The buffers a tower keeps out of its state dict (BERT's position and token-type ids) stay on the meta
    device after `from_pretrained` loads the file; each tower's own `_init_weights` makes them on the CPU, as
    transformers' own loading does. Anything still without data after that fails here, not in a forward."""
    for tower in (model.vision, model.qformer, model.text):
        for module in tower.modules():
            unsaved = [name for name, buffer in module.named_buffers(recurse=False) if buffer.is_meta]
            for name in unsaved:
                setattr(module, name, torch.empty_like(getattr(module, name), device="cpu"))
            if unsaved:
                tower._init_weights(module)
    left = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if left:
        raise RuntimeError(f"loading left {left[:3]} without data")


class AuditModel(nn.Module):
    def __init__(self, config: AuditModelConfig):
        super().__init__()
        self.config = config.validate()
        self.vision = _build_vision(config)
        self.query_tokens = nn.Parameter(torch.randn(1, config.num_query_tokens, config.qformer.hidden_size)
                                         * INITIALIZER_RANGE)
        self.qformer = _build_qformer(config)
        self.projector = _new_linear(config.qformer.hidden_size, config.text.hidden_size)
        self.text = _build_text(config)
        self.dropout = nn.Dropout(0.1)
        self.heads = nn.ModuleDict({
            task: _new_linear(config.text.hidden_size, len(names)) for task, names in config.tasks.items()
        })
        self.image_heads = nn.ModuleDict({
            task: _new_linear(config.text.hidden_size, len(config.tasks[task])) for task in IMAGE_TASKS
            if task in config.tasks  # a taxonomy of other tasks has no picture-only heads
        })
        if config.industry_agreement:
            self.agreement_heads = nn.ModuleDict({
                task: _new_linear(1, len(config.tasks[task])) for task in agreement_tasks(config)
            })
        self.tokenizer = None  # a tokenizer.json tokenizer (pretrained towers); None: the generated vocab.txt

    def tower(self, name: str) -> nn.Module:
        return getattr(self, name)

    def blocks(self, tower: str) -> nn.ModuleList:
        return self.tower(tower).encoder.layer

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                output_hidden_states: bool = False, picture_rows: torch.Tensor | None = None) -> AuditOutput:
        """`picture_rows` (serving.py): for each row of the copy, the index of its picture in `pixel_values`, so
        that rows sharing a picture (the copy variants of `explain`) encode it once; None: a picture per row."""
        vision = self.vision(pixel_values=pixel_values, output_hidden_states=output_hidden_states)
        queries = self.query_tokens.expand(pixel_values.shape[0], -1, -1)
        qformer = self.qformer(query_embeds=queries, encoder_hidden_states=vision.last_hidden_state,
                               output_hidden_states=output_hidden_states)
        visual_tokens = self.projector(qformer.last_hidden_state)
        if picture_rows is not None:
            visual_tokens = visual_tokens[picture_rows]
        word_embeddings = self.text.embeddings.word_embeddings(input_ids)
        query_mask = attention_mask.new_ones(attention_mask.shape[0], visual_tokens.shape[1])
        text_mask = torch.cat([query_mask, attention_mask], dim=1)
        if torch.onnx.is_in_onnx_export():  # elsewhere transformers' own mask (SDPA may then drop an all-ones one)
            text_mask = padding_bias(text_mask, word_embeddings.dtype)
        text = self.text(
            inputs_embeds=torch.cat([visual_tokens, word_embeddings], dim=1),
            attention_mask=text_mask,
            output_hidden_states=output_hidden_states,
        )
        # the copy's [CLS] token, copied out: FSDP2 warns of (and would mis-hook in-place ops on) a returned view
        pooled = text.last_hidden_state[:, visual_tokens.shape[1]].clone()
        features = self.dropout(pooled)
        logits = {task: head(features) for task, head in self.heads.items()}
        picture = visual_tokens.mean(dim=1)
        image_logits = {task: head(picture) for task, head in self.image_heads.items()}
        if self.config.industry_agreement:
            disagreement = industry_disagreement(image_logits["industry"], logits["industry"])
            for task, head in self.agreement_heads.items():
                logits[task] = logits[task] + head(disagreement.to(head.weight.dtype)).to(logits[task].dtype)
        hidden_states = None
        if output_hidden_states:
            hidden_states = {"vision": vision.hidden_states, "qformer": qformer.hidden_states,
                             "text": text.hidden_states}
        return AuditOutput(logits, pooled, image_logits, hidden_states)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # --- safetensors + JSON -----------------------------------------------------------
    def save_pretrained(self, folder: Path) -> None:
        """Write config.json, model.safetensors and the tokenizer; atomically (no half-written folder)."""
        with atomic_folder(folder) as staging:
            self.config.save(staging)
            state = {name: tensor.detach().contiguous() for name, tensor in self.state_dict().items()}
            save_file(state, str(staging / WEIGHTS_FILE), metadata={"format": "pt"})
            save_tokenizer(staging, self.tokenizer)

    @classmethod
    def from_pretrained(cls, folder: Path) -> "AuditModel":
        folder = Path(folder)
        if not folder.is_dir():
            raise ModelFolderError(f"model folder {folder} does not exist")
        if not (folder / WEIGHTS_FILE).is_file():
            raise ModelFolderError(f"{folder / WEIGHTS_FILE} is missing: not a complete model folder")
        if not has_tokenizer(folder):
            raise ModelFolderError(f"{folder} has neither vocab.txt nor tokenizer.json: not a complete model folder")
        try:
            config = AuditModelConfig.load(folder)
        except ConfigError as error:
            raise ModelFolderError(str(error)) from None
        with torch.device("meta"):  # no memory and no random initialisation for weights the file replaces
            model = cls(config)
        try:
            state = load_file(str(folder / WEIGHTS_FILE))
        except (SafetensorError, OSError) as error:
            raise ModelFolderError(f"{folder / WEIGHTS_FILE} is corrupt: {error}") from None
        expected = model.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
        if missing or unexpected or wrong:
            problem = (f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}" if unexpected
                       else f"shape mismatch in {wrong[:3]}")
            raise ModelFolderError(f"{folder / WEIGHTS_FILE} does not match its config.json: {problem}")
        return cls.from_state(config, state, saved_tokenizer(folder))

    @classmethod
    def from_state(cls, config: AuditModelConfig, state: dict[str, torch.Tensor], tokenizer=None) -> "AuditModel":
        """A model of `config` whose weights are `state`'s tensors themselves (one copy in memory): a file's,
        or the full weights gathered from the ranks of a sharded (FSDP) training."""
        with torch.device("meta"):
            model = cls(config)
        model.load_state_dict(state, assign=True)
        _make_unsaved_buffers(model)
        model.tokenizer = tokenizer
        return model.eval()

    def checkpoint_gradients(self, towers) -> None:
        """Recompute the named towers' block activations in backward instead of keeping them (transformers'
        gradient checkpointing): less memory for a teacher that does not fit, about a third more compute."""
        for tower in towers:
            self.tower(tower).activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
