"""Compression recipes: targets and schedule of the AntGMM stages, read from YAML.

A recipe is a list of stages, run in order, each followed by distillation:

    blocks:  keep N blocks per tower, removing `per_step` of the least influential at a time;
             or keep a list of the teacher's block numbers (a searched policy, search.py)
    widths:  keep H heads and F FFN neurons in every block (first-order Taylor importance),
             shrinking the pruned units' soft masks `soft_steps` times by `mask_decay`
             before the hard cut; a list gives one width per block (a searched policy)
    hidden:  shrink a tower's hidden size in `steps` equal steps to `size`

A target may also be relative to the teacher, so that one recipe fits teachers of any shape
(the packaged default does): a fraction of the teacher's value, written `1/3`, `0.25` or `all`
(a whole number is always absolute), and for blocks `spread N` (N of the teacher's blocks spread
evenly over the tower, the last always among them, the first too when N >= 2; all of them when
the teacher has fewer) or `spread 1/4` (that fraction of them, spread the same way). `resolve`
turns every relative target into the absolute one for a teacher's config, rounding to the nearest
whole number and keeping at least one; the student's recipe.json holds the resolved recipe.

`RecipeError` carries one readable line for a recipe that is malformed or cannot be applied
to the teacher (more blocks than exist, a zero width, a width larger than the teacher's).
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, PlainValidator, PositiveInt, ValidationError, model_validator

from adaudit.models.configuration import TOWERS, AuditModelConfig, ConfigError
from adaudit.training.presets import PRESETS

DEFAULT_RECIPE = Path(__file__).parent / "recipes" / "default.yaml"
TINY_RECIPE = DEFAULT_RECIPE.with_name("tiny.yaml")  # for the `tiny` teacher: tests
DEMO_RECIPE = DEFAULT_RECIPE.with_name("demo.yaml")  # for the `tiny` teacher of the `make run` demo
NAMED_RECIPES = ("default", "tiny", "demo", "auto", "tiny-auto", "pretrained", "more-ads")  # `--recipe auto`: recipes/auto.yaml

Tower = Literal["vision", "qformer", "text"]
SPREAD = "spread"


class RecipeError(ValueError):
    pass


def fraction_of(value: float | str) -> Fraction:
    """The fraction a relative target names (`1/3`, `0.25`, `all`); ValueError, readable, if it names none
    or lies outside (0, 1]."""
    text = str(value).strip()
    try:
        share = Fraction(1) if text == "all" else Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"{value!r} is neither a whole number nor a fraction of the teacher's value such as "
                         "1/3, 0.25 or all") from None
    if not 0 < share <= 1:
        raise ValueError(f"{value!r} is a fraction of the teacher's value: it must be greater than 0 and at most 1")
    return share


def _whole(value, least: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{value!r} {what} is not a whole number")
    if value < least:
        raise ValueError(f"{value} {what}: it must be greater than {least - 1}")
    return value


def _target(value, numbers: str | None, spread: bool):
    """Validate one target as written, returning it unchanged: a whole number (absolute), a fraction
    (relative), `spread X` (where `spread`), or a list of whole numbers (where `numbers` names them)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return _whole(value, 1, "as a count or width")
    if isinstance(value, list) and numbers:
        if not value:
            raise ValueError(f"a list of {numbers} needs at least one entry")
        return [_whole(v, 0 if numbers == "block numbers" else 1, f"in a list of {numbers}") for v in value]
    if isinstance(value, str) and spread and value.split()[:1] == [SPREAD]:
        words = value.split()
        if len(words) != 2:
            raise ValueError(f"{value!r}: write `spread N` or `spread 1/4`")
        if not (words[1].isdigit() and int(words[1]) >= 1):
            fraction_of(words[1])
        return value
    if isinstance(value, (float, str)) and not isinstance(value, bool):
        fraction_of(value)
        return value
    raise ValueError(f"{value!r} is not a count, a width or a fraction of the teacher's")


# A target as written: absolute (a whole number; a list) or relative to the teacher (a fraction; `spread X`)
Size = Annotated[int | float | str, PlainValidator(lambda v: _target(v, None, False))]
Width = Annotated[int | float | str | list[int], PlainValidator(lambda v: _target(v, "widths", False))]
Keep = Annotated[int | float | str | list[int], PlainValidator(lambda v: _target(v, "block numbers", True))]
TowerCounts = dict[Tower, Size]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DistillationSettings(Strict):
    samples: PositiveInt = Field(2000, description="distillation samples drawn from the training split; no upper cap "
                                                   "(the split is read from its pack; the ads drawn are held in memory)")
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
    real_copy: float | None = Field(None, ge=0, description="rows whose copy holds a clause of real writing "
                                    "(training/real_copy.py), as a fraction of the distillation ads, labelled by the "
                                    "teacher once; None: the fraction the teacher trained with (its metrics.json)")
    validation_samples: int = Field(0, ge=0, description="of `samples`, held out of distillation to keep the final "
                                                         "stage's best epoch (lowest held-out distillation loss)")
    gradient_checkpointing: list[Tower] = Field([], description="towers whose block activations are recomputed in "
                                                                "backward instead of kept: less memory, more compute")

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
    keep: dict[Tower, Keep]  # a count, the teacher's block numbers to keep, a fraction, or `spread X`
    per_step: PositiveInt = 1
    epochs_per_step: int = Field(1, ge=0)


class WidthsStage(Strict):
    kind: Literal["widths"]
    heads: dict[Tower, Width] = {}  # one width for every block (or a fraction of the teacher's), or one per block
    ffn: dict[Tower, Width] = {}
    cross_attention_heads: Width | None = None  # a list: one per image-attending block
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
    # alternating teacher / student rounds of the report's paired latency (training/measure.py): fewer is a
    # quicker, noisier figure (the tests' recipes, whose latency nobody reads, take 1)
    latency_rounds: PositiveInt = 5

    def resolve(self, config: AuditModelConfig) -> "Recipe":
        """This recipe for the teacher of `config`: every relative target replaced by the absolute one it
        means for that shape (an absolute recipe comes back equal), checked; RecipeError if the teacher
        cannot become what a stage asks."""
        stages = [resolve_stage(stage, config, f"stage {number} ({stage.kind})")
                  for number, stage in enumerate(self.stages, 1)]
        resolved = self.model_copy(update={"stages": stages})
        resolved.check_resolved(config)
        return resolved

    def check_against(self, config: AuditModelConfig) -> None:
        """Raise RecipeError if a stage asks for what this model cannot become."""
        self.resolve(config)

    def check_resolved(self, config: AuditModelConfig) -> None:
        """`check_against` for a recipe whose targets are all absolute."""
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


def of_teacher(value, teacher: int, where: str) -> int | list[int]:
    """An absolute target as it is; a fraction of the teacher's `teacher` as the nearest whole number (halves
    up), at least 1."""
    if isinstance(value, (int, list)):
        return value
    try:
        share = fraction_of(value)
    except ValueError as error:
        raise RecipeError(f"{where}: {error}") from None
    return max(1, math.floor(share * teacher + Fraction(1, 2)))


def spread(count: int, depth: int) -> list[int]:
    """`count` of `depth` block numbers spread evenly, the last among them, the first too when count >= 2:
    the ends of a tower carry what the middle blocks only refine (the search kept them)."""
    if count == 1:
        return [depth - 1]
    return [math.floor(Fraction(i * (depth - 1), count - 1) + Fraction(1, 2)) for i in range(count)]


def resolve_keep(value, depth: int, where: str) -> int | list[int]:
    """A blocks target for a tower of `depth` blocks: `spread X` becomes block numbers (at most `depth` of
    them), a fraction a count."""
    if isinstance(value, str) and value.split()[:1] == [SPREAD]:
        count = value.split()[-1]
        return spread(min(int(count), depth) if count.isdigit() else of_teacher(count, depth, where), depth)
    return of_teacher(value, depth, where)


def resolve_stage(stage: "Stage", config: AuditModelConfig, where: str) -> "Stage":
    """The stage with its relative targets made absolute for the teacher of `config`: block fractions of its
    depth, width fractions of its narrowest block's, hidden sizes of its hidden size."""
    def narrowest(tower: str, field: str) -> int:
        return min(getattr(block, field) for block in config.tower(tower).blocks if getattr(block, field))

    if isinstance(stage, BlocksStage):
        return stage.model_copy(update={"keep": {
            tower: resolve_keep(keep, len(config.tower(tower).blocks), f"{where}: {tower} blocks")
            for tower, keep in stage.keep.items()}})
    if isinstance(stage, WidthsStage):
        widths = {field: {tower: of_teacher(keep, narrowest(tower, attribute), f"{where}: {tower} {field}")
                          for tower, keep in getattr(stage, field).items()}
                  for field, attribute in (("heads", "heads"), ("ffn", "intermediate_size"))}
        if stage.cross_attention_heads is not None:
            widths["cross_attention_heads"] = of_teacher(stage.cross_attention_heads,
                                                         narrowest("qformer", "cross_attention_heads"),
                                                         f"{where}: cross-attention heads")
        return stage.model_copy(update=widths)
    return stage.model_copy(update={"size": {
        tower: of_teacher(size, config.tower(tower).hidden_size, f"{where}: {tower} hidden size")
        for tower, size in stage.size.items()}})


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
        message = first["msg"].removeprefix("Value error, ")
        raise RecipeError(f"recipe {path}: {location}: {message}") from None
