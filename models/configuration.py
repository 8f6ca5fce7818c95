"""The one config object that fully describes an audit model, teacher or pruned student.

Hugging Face configs hold one global head count and FFN width per tower. A pruned student
has different widths in every block, so each tower here lists its blocks with their own
shape. `AuditModel(config)` builds exactly the tensors the config describes, which is what
lets a pruned student reload from its folder alone.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .labels import DEFAULT_TAXONOMY, TASKS, Taxonomy, TaxonomyError, parse_taxonomy

CONFIG_FILE = "config.json"
TOWERS = ("vision", "qformer", "text")


class ConfigError(ValueError):
    """A config that cannot describe a model (zero width, unknown field, bad JSON)."""


@dataclass
class BlockShape:
    """The prunable widths of one transformer block."""

    heads: int  # self-attention heads (each `head_dim` wide)
    intermediate_size: int  # FFN neurons
    cross_attention_heads: int = 0  # Q-Former blocks only: heads attending to the image (0: none)


@dataclass
class TowerConfig:
    hidden_size: int
    head_dim: int
    blocks: list[BlockShape]

    @classmethod
    def uniform(cls, hidden_size, depth, heads, intermediate_size, cross_attention_heads=0):
        if hidden_size % heads:
            raise ConfigError(f"hidden size {hidden_size} is not a multiple of {heads} heads")
        blocks = [BlockShape(heads, intermediate_size, cross_attention_heads) for _ in range(depth)]
        return cls(hidden_size, hidden_size // heads, blocks)


@dataclass
class AuditModelConfig:
    vision: TowerConfig
    qformer: TowerConfig
    text: TowerConfig
    vocab_size: int
    image_size: int = 96
    patch_size: int = 16
    num_query_tokens: int = 8
    max_text_length: int = 48
    # how a picture becomes image_size x image_size (models/preprocessing.py IMAGE_FITS): "squash" resizes it
    # whatever its aspect (every config before fits existed), "letterbox" keeps its aspect and pads
    image_fit: str = "squash"
    tasks: dict[str, list[str]] = field(default_factory=lambda: {k: list(v) for k, v in TASKS.items()})
    # the roles of the tasks (models/labels.Taxonomy): which task decides and which of its classes reject, which
    # task says why and its class for nothing wrong, and the reason class of an image-text mismatch (None: the
    # taxonomy has none). A config written before taxonomies has none of these fields and gets today's roles.
    verdict_task: str = DEFAULT_TAXONOMY.verdict_task
    reject_classes: list[str] = field(default_factory=lambda: list(DEFAULT_TAXONOMY.reject_classes))
    reason_task: str = DEFAULT_TAXONOMY.reason_task
    clean_class: str = DEFAULT_TAXONOMY.clean_class
    mismatch_class: str | None = DEFAULT_TAXONOMY.mismatch_class
    # the verdict and violation heads also read how far the picture's industry (its image head) and the
    # copy's (the industry head) disagree: an image-text mismatch made explicit (models/modeling.py)
    industry_agreement: bool = False
    # the teacher preset this model (or the teacher it was compressed from) was built from
    # (training/presets.py); None for a config written before presets were recorded
    preset: str | None = None
    # task -> the temperature its logits are divided by where they are served (models/serving.py), fitted on
    # held-out ads (training/calibration.py) so that softmax scores are calibrated probabilities; a task not
    # listed (every task of a config written before calibration) is served at 1.0, its logits unchanged
    temperatures: dict[str, float] = field(default_factory=dict)
    model_type: str = "adaudit-blip2"

    def tower(self, name: str) -> TowerConfig:
        return getattr(self, name)

    @property
    def taxonomy(self) -> Taxonomy:
        """The label space this model predicts, with its roles; ConfigError if the fields do not make one."""
        fields = {"tasks": self.tasks, "verdict_task": self.verdict_task, "reject_classes": self.reject_classes,
                  "reason_task": self.reason_task, "clean_class": self.clean_class,
                  "mismatch_class": self.mismatch_class}
        try:
            return parse_taxonomy(fields, "config")
        except TaxonomyError as error:
            raise ConfigError(str(error)) from None

    def with_taxonomy(self, taxonomy: Taxonomy) -> "AuditModelConfig":
        """This config predicting `taxonomy`'s tasks and classes (a new teacher for a data set's own labels):
        temperatures are dropped (fitted for other heads) and the industry agreement kept only with an
        industry task."""
        return replace(self, **taxonomy.as_config(), temperatures={},
                       industry_agreement=self.industry_agreement and "industry" in taxonomy.tasks).validate()

    def validate(self) -> "AuditModelConfig":
        if self.image_size % self.patch_size:
            raise ConfigError(f"image size {self.image_size} is not a multiple of patch size {self.patch_size}")
        if self.image_fit not in ("squash", "letterbox"):
            raise ConfigError(f"image_fit must be squash or letterbox, not {self.image_fit!r}")
        for name in TOWERS:
            tower = self.tower(name)
            if tower.hidden_size < 1 or tower.head_dim < 1:
                raise ConfigError(f"{name}: hidden size and head_dim must be positive")
            if not tower.blocks:
                raise ConfigError(f"{name}: a tower needs at least one block")
            for index, block in enumerate(tower.blocks):
                if block.heads < 1 or block.intermediate_size < 1:
                    raise ConfigError(f"{name} block {index}: heads and FFN width must be at least 1")
        if not any(block.cross_attention_heads for block in self.qformer.blocks):
            raise ConfigError("qformer: at least one block must attend to the image")
        self.taxonomy  # noqa: B018 (checks the tasks and their roles)
        if self.industry_agreement and "industry" not in self.tasks:
            raise ConfigError("industry_agreement needs the industry task")
        for task, temperature in self.temperatures.items():
            if task not in self.tasks:
                raise ConfigError(f"temperature for unknown task {task!r} (tasks: {', '.join(self.tasks)})")
            number = isinstance(temperature, (int, float)) and not isinstance(temperature, bool)
            if not number or not math.isfinite(temperature) or temperature <= 0:
                raise ConfigError(f"{task}: a temperature must be a finite number above 0, not {temperature!r}")
        return self

    # --- JSON -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "AuditModelConfig":
        try:
            towers = {
                name: TowerConfig(
                    hidden_size=data[name]["hidden_size"],
                    head_dim=data[name]["head_dim"],
                    blocks=[BlockShape(**block) for block in data[name]["blocks"]],
                )
                for name in TOWERS
            }
            rest = {k: v for k, v in data.items() if k not in TOWERS}
            return cls(**towers, **rest).validate()
        except (KeyError, TypeError) as error:
            raise ConfigError(f"config is missing or has an unknown field: {error}") from None

    def save(self, folder: Path) -> None:
        (Path(folder) / CONFIG_FILE).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> "AuditModelConfig":
        path = Path(folder) / CONFIG_FILE
        if not path.is_file():
            raise ConfigError(f"{path} is missing: not a model folder")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path} is not valid JSON ({error.msg}, line {error.lineno})") from None
        return cls.from_dict(data)

