"""Teacher presets in one table: each row says everything a preset decides.

A preset names a teacher's shape (its config), where its weights come from (random, or the
pretrained towers of models/pretrained.py), how it trains (its schedule, frozen blocks,
recombined pairs) and which packaged compression recipe was written for its shape. Nothing
else in adaudit compares a preset's name: code reads the row. The name is recorded in the
model's config.json (`preset`), so compression finds the recipe from the teacher folder alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from adaudit.models.configuration import AuditModelConfig, ConfigError, TowerConfig
from adaudit.models.modeling import AuditModel
from adaudit.models.tokenizer import build_vocabulary

from .loop import Schedule


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    config: Callable[[int], AuditModelConfig]  # the vocabulary size -> the teacher's shape
    schedule: Schedule
    recipe: str = "default"  # the packaged compression recipe written for this shape (compression/recipes/)
    # the weight loader: a model with pretrained towers (and its own tokenizer); None: random weights
    # over the generated vocabulary
    weights: Callable[[], AuditModel] | None = None
    frozen_blocks: int = 0  # pretrained towers: their embeddings and this many lower blocks keep their weights
    # extra training rows of one ad's copy over another's picture (data/recombination.py), as a
    # fraction of the training ads
    recombined: float = 0.0
    # extra training rows whose copy holds a clause of real writing (training/real_copy.py), as a fraction
    # of the training ads
    real_copy: float = 0.0
    # the share of each training batch's pictures re-framed: another aspect, zoom, shift, light
    # (training/reframing.py)
    reframed: float = 0.0
    # the decay of the moving average of the weights written as the teacher; 0: the last step's weights
    # (training/averaging.py)
    weight_average: float = 0.0

    @property
    def pretrained(self) -> bool:
        return self.weights is not None

    def new_model(self) -> AuditModel:
        """A fresh teacher of this preset, its name recorded in the config."""
        model = self.weights() if self.weights else AuditModel(self.config(len(build_vocabulary())))
        model.config.preset = self.name
        return model


def _tiny(vocab_size: int) -> AuditModelConfig:
    return AuditModelConfig(
        vision=TowerConfig.uniform(64, 3, 4, 128),
        qformer=TowerConfig.uniform(64, 2, 4, 128, cross_attention_heads=4),
        text=TowerConfig.uniform(64, 3, 4, 128),
        vocab_size=vocab_size, image_size=32, patch_size=8, num_query_tokens=4, max_text_length=48,
        preset="tiny",
    ).validate()


def _small(vocab_size: int) -> AuditModelConfig:
    return AuditModelConfig(
        vision=TowerConfig.uniform(256, 4, 4, 1024),
        qformer=TowerConfig.uniform(256, 2, 4, 1024, cross_attention_heads=4),
        text=TowerConfig.uniform(256, 4, 4, 1024),
        vocab_size=vocab_size, preset="small",
    ).validate()


def _base(vocab_size: int) -> AuditModelConfig:
    return AuditModelConfig(
        vision=TowerConfig.uniform(384, 8, 6, 1536),
        qformer=TowerConfig.uniform(384, 4, 6, 1536, cross_attention_heads=6),
        text=TowerConfig.uniform(384, 8, 6, 1536),
        vocab_size=vocab_size, preset="base",
    ).validate()


def _pretrained(vocab_size: int) -> AuditModelConfig:
    from adaudit.models.pretrained import pretrained_config

    config = pretrained_config(vocab_size=vocab_size)
    config.preset = "pretrained"
    return config


def _pretrained_weights() -> AuditModel:
    from adaudit.models.pretrained import pretrained_model  # needs the `pretrained` extra's packages

    return pretrained_model()


PRESETS: dict[str, Preset] = {preset.name: preset for preset in (
    Preset("tiny", "seconds to train: tests and the `make run` demo", _tiny,
           Schedule(epochs=6, batch_size=32, learning_rate=2e-3), recipe="tiny"),
    Preset("small", "the base layout at a quarter of the cost: the modality ablations", _small,
           Schedule(epochs=6, batch_size=32, learning_rate=5e-4)),
    Preset("base", "the benchmark teacher", _base,
           Schedule(epochs=12, batch_size=32, learning_rate=4e-4)),
    # DINOv2-small + multilingual-e5-small: a few epochs at a fine-tuning learning rate; the Q-Former,
    # projector and heads around the towers start from random weights and learn faster. Without
    # recombined pairs the pretrained towers learn every class but image_text_mismatch.
    Preset("pretrained", "DINOv2-small + multilingual-e5-small towers (pip install '.[pretrained]')", _pretrained,
           Schedule(epochs=4, batch_size=32, learning_rate=2e-4, fresh_learning_rate=1e-3,
                    fresh_modules=("qformer", "query_tokens", "projector", "heads", "image_heads",
                                   "agreement_heads")),
           recipe="pretrained", weights=_pretrained_weights, frozen_blocks=6, recombined=0.5),
)}


def preset(name: str) -> Preset:
    """The preset's row; a readable ConfigError naming the presets for an unknown name."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; presets are {', '.join(PRESETS)}")
    return PRESETS[name]


def preset_config(name: str, vocab_size: int) -> AuditModelConfig:
    """The shape of preset `name` over a vocabulary of `vocab_size` tokens."""
    return preset(name).config(vocab_size)
