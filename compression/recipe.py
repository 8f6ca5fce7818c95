"""Compression recipes: targets and schedule of the AntGMM stages, read from YAML.

A recipe is a list of stages, run in order, each followed by distillation:

    blocks:  keep N blocks per tower, removing `per_step` of the least influential at a time;
             or keep a list of the teacher's block numbers (a searched policy, search.py)
    widths:  keep H heads and F FFN neurons in every block (first-order Taylor importance),
             shrinking the pruned units' soft masks `soft_steps` times by `mask_decay`
             before the hard cut; a list gives one width per block (a searched policy)
    hidden:  shrink a tower's hidden size in `steps` equal steps to `size`

`RecipeError` carries one readable line for a recipe that is malformed or cannot be applied
to the teacher (more blocks than exist, a zero width, a width larger than the teacher's).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from adaudit.models.configuration import TOWERS, AuditModelConfig, ConfigError
from adaudit.training.presets import PRESETS

DEFAULT_RECIPE = Path(__file__).parent / "recipes" / "default.yaml"
TINY_RECIPE = DEFAULT_RECIPE.with_name("tiny.yaml")  # for the `tiny` teacher: tests and the `make run` demo
NAMED_RECIPES = ("default", "tiny", "auto", "tiny-auto", "pretrained")  # `--recipe auto`: recipes/auto.yaml

Tower = Literal["vision", "qformer", "text"]
TowerCounts = dict[Tower, PositiveInt]
BlockNumbers = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
PerBlock = Annotated[list[PositiveInt], Field(min_length=1)]


class RecipeError(ValueError):
    pass


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DistillationSettings(Strict):
    samples: PositiveInt = Field(2000, le=2000, description="distillation samples drawn from the training split")
    batch_size: PositiveInt = 32
    learning_rate: float = Field(5e-4, gt=0)
    temperature: float = Field(2.0, gt=0)
    kl_weight: float = Field(1.0, ge=0)
    label_weight: float = Field(0.5, ge=0)
    pooled_weight: float = Field(0.0, ge=0)
    views: int = Field(0, ge=0, le=8, description="augmented views per distillation ad, labelled by the teacher once "
                                                  "(augmentation.py); every epoch covers the ads and their views")
    recombined_fraction: float = Field(0.5, ge=0, le=1, description="of the views, the share that pairs an ad's "
                                                                    "copy with another ad's picture")
    validation_samples: int = Field(0, ge=0, description="of `samples`, held out of distillation to keep the final "
                                                         "stage's best epoch (lowest held-out distillation loss)")

    @model_validator(mode="after")
    def _room_to_distil(self) -> "DistillationSettings":
        if self.validation_samples >= self.samples:
            raise ValueError(f"validation_samples ({self.validation_samples}) must be fewer than samples "
                             f"({self.samples})")
        return self

    def held_out_count(self, ads: int) -> int:
        """How many of `ads` distillation ads are held out (the last ones): at least one is distilled on."""
        return min(self.validation_samples, ads - 1)


class BlocksStage(Strict):
    kind: Literal["blocks"]
    keep: dict[Tower, PositiveInt | BlockNumbers]  # a count, or the teacher's block numbers to keep
    per_step: PositiveInt = 1
    epochs_per_step: int = Field(1, ge=0)


class WidthsStage(Strict):
    kind: Literal["widths"]
    heads: dict[Tower, PositiveInt | PerBlock] = {}  # one width for every block, or one per block
    ffn: dict[Tower, PositiveInt | PerBlock] = {}
    cross_attention_heads: PositiveInt | PerBlock | None = None  # a list: one per image-attending block
    soft_steps: int = Field(3, ge=0)
    mask_decay: float = Field(0.3, ge=0, lt=1)
    epochs_per_step: int = Field(1, ge=0)
    epochs_after_cut: int = Field(1, ge=0)


class HiddenStage(Strict):
    kind: Literal["hidden"]
    size: TowerCounts
    steps: PositiveInt = 1
    epochs_per_step: int = Field(1, ge=0)


Stage = Annotated[Union[BlocksStage, WidthsStage, HiddenStage], Field(discriminator="kind")]


class SearchSettings(Strict):
    """The per-layer policy search (search.py) that writes the blocks and widths stages."""
    strategy: Literal["evolution", "uniform"] = "evolution"  # uniform: one keep ratio everywhere (the baseline)
    samples: PositiveInt = 64  # search samples, from the training split
    held_out_samples: int = Field(256, ge=0)  # other training ads, only to report the generalization gap
    population: PositiveInt = 16
    generations: PositiveInt = 10
    elites: PositiveInt = 4
    mutations: PositiveInt = 2  # edits per child
    generalization_weight: float = Field(40.0, ge=0)  # eta in fitness = -loss - eta * complexity / sqrt(samples)
    projector_steps: int = Field(20, ge=0)  # projector + query tuning steps between generations (0: off)
    projector_learning_rate: float = Field(1e-3, gt=0)
    latency_band: float = Field(0.9, gt=0, le=1)  # candidates use between band x budget and the budget
    ffn_step: PositiveInt = 64  # FFN widths move in multiples of this
    calibration_models: int = Field(24, ge=12)  # random students timed to fit the latency model
    time_candidates: bool = True  # time each generation's elites and the choice, refitting the latency model


class VocabularySettings(Strict):
    """Input dimension: keep only the tokens of the training copy (and a character set); the student
    gets a tokenizer.json either way (the generated vocab.txt is converted first)."""

    prune: bool = True
    characters: Literal["gb2312", "common", "none"] = Field(
        "gb2312", description="also keep the single-character pieces of GB2312 (common: its punctuation, numerals and "
                              "3,755 common hanzi) + ASCII, so unseen copy is not <unk>")


class Recipe(Strict):
    search: SearchSettings | None = None  # present: `compress` first searches the blocks and widths stages
    distillation: DistillationSettings = DistillationSettings()
    vocabulary: VocabularySettings = VocabularySettings()  # runs first
    calibration_samples: PositiveInt = 256
    stages: list[Stage]
    final_epochs: int = Field(2, ge=0)
    seed: int = 0

    def check_against(self, config: AuditModelConfig) -> None:
        """Raise RecipeError if a stage asks for what this model cannot become."""
        depth = {tower: len(config.tower(tower).blocks) for tower in TOWERS}
        hidden = {tower: config.tower(tower).hidden_size for tower in TOWERS}
        for number, stage in enumerate(self.stages, 1):
            where = f"stage {number} ({stage.kind})"
            if isinstance(stage, BlocksStage):
                for tower, keep in stage.keep.items():
                    if isinstance(keep, list):
                        if len(set(keep)) != len(keep) or max(keep) >= depth[tower]:
                            raise RecipeError(f"{where} keeps {tower} blocks {keep}: block numbers must be distinct "
                                              f"and below the {depth[tower]} blocks the model has")
                        keep = len(keep)
                    if keep > depth[tower]:
                        raise RecipeError(f"{where} keeps {keep} {tower} blocks but the model has {depth[tower]}")
                    depth[tower] = keep
            elif isinstance(stage, WidthsStage):
                for field, counts in (("heads", stage.heads), ("ffn", stage.ffn)):
                    for tower, keep in counts.items():
                        blocks = config.tower(tower).blocks
                        widest = min(b.heads if field == "heads" else b.intermediate_size for b in blocks)
                        for width in per_block(keep, depth[tower], f"{where}: {tower} {field}"):
                            if width > widest:
                                raise RecipeError(f"{where} keeps {width} {field} in a {tower} block but a block "
                                                  f"has only {widest}: widths can only shrink")
                cross = [b.cross_attention_heads for b in config.qformer.blocks if b.cross_attention_heads]
                if stage.cross_attention_heads and max(per_block(stage.cross_attention_heads, None, where)) > min(cross):
                    raise RecipeError(f"{where} keeps {stage.cross_attention_heads} cross-attention heads but a "
                                      f"Q-Former block has only {min(cross)}")
            else:
                for tower, size in stage.size.items():
                    if size > hidden[tower]:
                        raise RecipeError(f"{where} asks for {tower} hidden size {size} but it is {hidden[tower]}: "
                                          "the target is unreachable by pruning")
                    hidden[tower] = size


def per_block(width: int | list[int], blocks: int | None, where: str) -> list[int]:
    """One width per block: a single width repeated, or a list that must have one entry per block."""
    if not isinstance(width, list):
        return [width] * (blocks or 1)
    if blocks is not None and len(width) != blocks:
        raise RecipeError(f"{where}: {len(width)} widths given for {blocks} blocks")
    return width


def default_recipe(teacher_dir: Path) -> str:
    """The packaged recipe `compress` uses when none is given: the one written for the teacher's
    preset (its config.json says which), else `default` (written for the `base` teacher)."""
    try:
        name = AuditModelConfig.load(teacher_dir).preset
    except ConfigError:
        name = None
    return PRESETS[name].recipe if name in PRESETS else "default"


def load_recipe(path: Path | str | None = None) -> Recipe:
    """A recipe from a YAML file, or one of the packaged ones by name (NAMED_RECIPES)."""
    if path is not None and str(path) in NAMED_RECIPES:
        path = DEFAULT_RECIPE.with_name(f"{path}.yaml")
    path = Path(path) if path else DEFAULT_RECIPE
    if not path.is_file():
        raise RecipeError(f"recipe {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise RecipeError(f"recipe {path} is not valid YAML: {str(error).splitlines()[0]}") from None
    try:
        return Recipe.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        location = ".".join(str(part) for part in first["loc"])
        raise RecipeError(f"recipe {path}: {location}: {first['msg']}") from None
