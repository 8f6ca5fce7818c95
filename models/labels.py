"""The audit label space: every task the model predicts, the names of its classes, and their roles.

A `Taxonomy` is that label space. One task is the verdict-like decision (`verdict_task`, some of whose
classes reject: `reject_classes`), one says why (`reason_task`, whose `clean_class` means nothing is
wrong), the others are attributes; `mismatch_class`, when the reason task has one, is the class of an
ad whose copy sells one thing while its picture shows another (recombined training pairs make it).
A data set declares its own in `DIR/labels.yaml` (docs/data.md); without that file it has today's,
`DEFAULT_TAXONOMY`. A model carries the taxonomy it was trained on in its config.json
(models/configuration.py), and from there every later step reads it: compression, export (Triton's
outputs), the gateway's answers and feedback, decisions and metrics. The order of a task's class
names is the order of its logits.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

TASKS: dict[str, tuple[str, ...]] = {
    # approve or reject: reject exactly when there is a violation.
    "verdict": ("approve", "reject"),
    # why an ad is rejected ("none" when it is approved).
    "violation": (
        "none",
        "exaggeration",  # 极限词 / 虚假宣传: absolute or exaggerated claims
        "medical_claim",  # medical efficacy claims
        "financial_promise",  # promises of financial return
        "gambling",
        "vulgar",
        "prohibited_goods",
        "image_text_mismatch",  # the copy sells one thing, the picture shows another
    ),
    # the industry of the product the copy advertises.
    "industry": (
        "food_beverage",
        "pets",
        "vehicles",
        "toys",
        "education",
        "home",
        "finance",
        "electronics",
        "travel",
        "flowers",
    ),
    "background_colour": ("white", "red", "yellow", "blue", "green", "black"),
    # overlay degree of stickers and badges pasted over the ad (牛皮癣).
    "clutter": ("none", "light", "heavy"),
    "logo": ("absent", "present"),
}

TASK_NAMES: tuple[str, ...] = tuple(TASKS)
LABELS_FILE = "labels.yaml"  # a data set's own taxonomy, beside its split files
# the config.pbtxt parameter carrying an exported model's taxonomy as JSON: Triton's outputs give only each
# task's name and width, and the gateway answers with class names (export/repository.py, service/backends.py)
TAXONOMY_PARAMETER = "taxonomy"
# a task name becomes a Triton output, a JSON key and a Prometheus label value: a plain identifier
TASK_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
CLASS_LENGTH = 64


class TaxonomyError(ValueError):
    """A taxonomy (labels.yaml or a config's) that cannot be used; one line naming the file and key."""


def _check_class(task: str, name) -> None:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"tasks.{task}: a class name is a non-empty string, not {name!r}")
    if len(name) > CLASS_LENGTH or name != name.strip() or any(ord(c) < 32 or c in '"\\' for c in name):
        raise ValueError(f"tasks.{task}: class {name!r} must be at most {CLASS_LENGTH} characters without "
                         "surrounding spaces, control characters, quotes or backslashes")


class Taxonomy(BaseModel):
    """Tasks and their classes, and which task decides, which classes reject, which task says why."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    tasks: dict[str, tuple[str, ...]]
    verdict_task: str = "verdict"
    reject_classes: tuple[str, ...] = ("reject",)
    reason_task: str = "violation"
    clean_class: str = "none"
    mismatch_class: str | None = None

    @field_validator("tasks", mode="before")
    @classmethod
    def _tasks(cls, value):
        if not isinstance(value, Mapping) or not value:
            raise ValueError("tasks: a mapping of at least one task to its list of classes")
        for task, names in value.items():
            if not isinstance(task, str) or not TASK_PATTERN.match(task):
                raise ValueError(f"tasks: task name {task!r} must match {TASK_PATTERN.pattern}")
            if not isinstance(names, (list, tuple)) or len(names) < 2:
                raise ValueError(f"tasks.{task}: a task needs a list of at least two classes")
            for name in names:
                _check_class(task, name)
            repeated = sorted({name for name in names if list(names).count(name) > 1})
            if repeated:
                raise ValueError(f"tasks.{task}: class {repeated[0]!r} is listed twice")
        return {task: tuple(names) for task, names in value.items()}

    @model_validator(mode="after")
    def _roles(self) -> "Taxonomy":
        for key in ("verdict_task", "reason_task"):
            if getattr(self, key) not in self.tasks:
                raise ValueError(f"{key}: {getattr(self, key)!r} is not a task (tasks: {', '.join(self.tasks)})")
        if self.verdict_task == self.reason_task:
            raise ValueError(f"reason_task: {self.reason_task!r} is also the verdict_task; the reason is another task")
        verdicts = self.tasks[self.verdict_task]
        if not self.reject_classes:
            raise ValueError(f"reject_classes: the verdict task {self.verdict_task!r} needs a rejecting class")
        for name in self.reject_classes:
            if name not in verdicts:
                raise ValueError(f"reject_classes: {name!r} is not a class of {self.verdict_task} "
                                 f"({', '.join(verdicts)})")
        if set(verdicts) <= set(self.reject_classes):
            raise ValueError(f"reject_classes: every class of {self.verdict_task} rejects; one must approve")
        reasons = self.tasks[self.reason_task]
        for key in ("clean_class", "mismatch_class"):
            name = getattr(self, key)
            if name is not None and name not in reasons:
                raise ValueError(f"{key}: {name!r} is not a class of {self.reason_task} ({', '.join(reasons)})")
        if self.mismatch_class == self.clean_class:
            raise ValueError(f"mismatch_class: {self.mismatch_class!r} is the clean_class")
        return self

    @classmethod
    def default(cls) -> "Taxonomy":
        return DEFAULT_TAXONOMY

    # --- roles ---------------------------------------------------------------------------
    @property
    def approve_class(self) -> str:
        """The verdict answered when nothing rejects: the verdict task's first class that does not reject."""
        return next(name for name in self.tasks[self.verdict_task] if name not in self.reject_classes)

    @property
    def reject_class(self) -> str:
        """The verdict answered when an ad is rejected (the first rejecting class)."""
        return self.reject_classes[0]

    @property
    def violations(self) -> tuple[str, ...]:
        """The reason task's classes that say something is wrong (every class but the clean one)."""
        return tuple(name for name in self.tasks[self.reason_task] if name != self.clean_class)

    @property
    def attributes(self) -> tuple[str, ...]:
        """The tasks other than the verdict and the reason."""
        return tuple(task for task in self.tasks if task not in (self.verdict_task, self.reason_task))

    def rejects(self, verdict: str) -> bool:
        return verdict in self.reject_classes

    def as_config(self) -> dict:
        """The fields a model's config.json stores (models/configuration.py), JSON-ready."""
        return {"tasks": {task: list(names) for task, names in self.tasks.items()},
                "verdict_task": self.verdict_task, "reject_classes": list(self.reject_classes),
                "reason_task": self.reason_task, "clean_class": self.clean_class,
                "mismatch_class": self.mismatch_class}

    # --- checking labels -----------------------------------------------------------------
    def label_index(self, task: str, name: str) -> int:
        """Index of class `name` in task `task`; ValueError naming the valid tasks or classes otherwise."""
        if task not in self.tasks:
            raise ValueError(f"unknown task {task!r}; tasks are {', '.join(self.tasks)}")
        try:
            return self.tasks[task].index(name)
        except ValueError:
            raise ValueError(f"unknown label {name!r} for task {task!r}; expected one of "
                             f"{', '.join(self.tasks[task])}") from None

    def check_labels(self, labels: Mapping[str, str], require_all_tasks: bool = True) -> None:
        """ValueError (one line) unless every label is a class of its task, every task is labelled (with
        `require_all_tasks`) and the verdict rejects exactly when the reason is not the clean class."""
        for task, name in labels.items():
            self.label_index(task, name)
        missing = [task for task in self.tasks if task not in labels]
        if require_all_tasks and missing:
            raise ValueError(f"missing labels for task(s) {', '.join(missing)}")
        verdict, reason = labels.get(self.verdict_task), labels.get(self.reason_task)
        if verdict is not None and reason is not None and self.rejects(verdict) != (reason != self.clean_class):
            raise ValueError(f"{self.verdict_task} {verdict!r} contradicts {self.reason_task} {reason!r}: an ad is "
                             f"rejected exactly when its {self.reason_task} is not {self.clean_class!r}")


DEFAULT_TAXONOMY = Taxonomy(tasks=TASKS, mismatch_class="image_text_mismatch")


def label_index(task: str, name: str) -> int:
    """Index of class `name` in task `task` of the default taxonomy; ValueError naming the valid classes."""
    return DEFAULT_TAXONOMY.label_index(task, name)


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key given twice (PyYAML keeps the last one silently)."""


def _unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise TaxonomyError(f"line {key_node.start_mark.line + 1}: key {key!r} is given twice")
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def taxonomy_error(error: ValidationError) -> str:
    """`key: problem` for the first problem of a pydantic error (the validators name their own keys)."""
    item = error.errors()[0]
    message = item["msg"].removeprefix("Value error, ")
    where = ".".join(str(part) for part in item["loc"])
    return message if not where or message.startswith(where.split(".")[0]) else f"{where}: {message}"


def parse_taxonomy(data, where: str) -> Taxonomy:
    """A Taxonomy from parsed YAML or JSON; TaxonomyError `where: key: problem` otherwise."""
    if not isinstance(data, dict):
        raise TaxonomyError(f"{where}: a taxonomy is a mapping with tasks, verdict_task, reject_classes, "
                            "reason_task and clean_class")
    try:
        return Taxonomy.model_validate(data)
    except ValidationError as error:
        raise TaxonomyError(f"{where}: {taxonomy_error(error)}") from None


def read_taxonomy(path: Path) -> Taxonomy:
    """The taxonomy in a labels.yaml file; TaxonomyError naming the file and the key."""
    path = Path(path)
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except TaxonomyError as error:
        raise TaxonomyError(f"{path}: {error}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise TaxonomyError(f"{path}: cannot read the file: {error}") from None
    except yaml.YAMLError as error:
        raise TaxonomyError(f"{path}: not valid YAML: {str(error).splitlines()[0]}") from None
    return parse_taxonomy(data, str(path))


def load_taxonomy(data_dir: Path) -> Taxonomy:
    """A data set's taxonomy: DIR/labels.yaml, or the default when the folder has none."""
    path = Path(data_dir) / LABELS_FILE
    return read_taxonomy(path) if path.is_file() else DEFAULT_TAXONOMY


def taxonomy_json(taxonomy: Taxonomy) -> str:
    """The taxonomy as one line of ASCII JSON (the TAXONOMY_PARAMETER's value; `parse_taxonomy` reads it)."""
    import json

    return json.dumps(taxonomy.as_config(), separators=(",", ":"))


def write_taxonomy(taxonomy: Taxonomy) -> str:
    """labels.yaml text for `taxonomy` (what read_taxonomy reads back)."""
    return yaml.safe_dump(taxonomy.as_config(), allow_unicode=True, sort_keys=False)
