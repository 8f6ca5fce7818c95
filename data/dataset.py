"""Reading a dataset folder: the generator's output and the format users bring their own data in.

A dataset folder holds one JSON-lines file per split (`train.jsonl`, `test.jsonl`, ...) and
the images they name. Each line is one ad:

    {"id": "ad-000123", "image": "images/ad-000123.jpg", "text": "...",
     "labels": {"verdict": "reject", "violation": "gambling", "industry": "toys", ...}}

`image` is relative to the folder. Tasks and class names are those of the folder's own taxonomy,
`DIR/labels.yaml` (models/labels.py; today's `TASKS` when the folder has none).
Every problem is reported as a `DatasetError` with one readable line naming the file and
line, so a user can fix their data without reading a traceback.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from adaudit.models.labels import Taxonomy, TaxonomyError, load_taxonomy

_FIELDS = {"id": str, "image": str, "text": str, "labels": dict}


class DatasetError(Exception):
    """A dataset folder, file, record or image that cannot be used."""


@dataclass(frozen=True)
class AdRecord:
    id: str
    image_path: Path
    text: str
    labels: dict[str, str]


def data_taxonomy(data_dir: Path) -> Taxonomy:
    """The data set's taxonomy (DIR/labels.yaml, else the default); DatasetError naming the file and key."""
    try:
        return load_taxonomy(data_dir)
    except TaxonomyError as error:
        raise DatasetError(str(error)) from None


def read_split(data_dir: Path, split: str, require_all_tasks: bool = True,
               taxonomy: Taxonomy | None = None) -> list[AdRecord]:
    """The records of `data_dir/<split>.jsonl`, validated against `taxonomy` (default: the data set's own,
    `data_taxonomy`); DatasetError on the first problem.

    With `require_all_tasks` (training data) every task must be labelled; otherwise records
    may label a subset of the tasks. Images are checked to exist, not decoded.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DatasetError(f"dataset folder {data_dir} not found")
    taxonomy = taxonomy or data_taxonomy(data_dir)
    path = data_dir / f"{split}.jsonl"
    if not path.is_file():
        raise DatasetError(f"{path} not found: a dataset folder holds one <split>.jsonl per split")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise DatasetError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    records: list[AdRecord] = []
    first_line_of: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = _parse_record(line, data_dir, require_all_tasks, taxonomy)
            if record.id in first_line_of:
                raise DatasetError(f"duplicate id {record.id!r} (first on line {first_line_of[record.id]})")
        except DatasetError as error:
            raise DatasetError(f"{path} line {number}: {error}") from None
        first_line_of[record.id] = number
        records.append(record)
    if not records:
        raise DatasetError(f"{path} holds no records")
    return records


def _parse_record(line: str, data_dir: Path, require_all_tasks: bool, taxonomy: Taxonomy) -> AdRecord:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as error:
        raise DatasetError(f"not valid JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(data, dict):
        raise DatasetError("expected a JSON object with id, image, text and labels")
    for field, kind in _FIELDS.items():
        if field not in data:
            raise DatasetError(f"missing field {field!r}")
        if not isinstance(data[field], kind):
            raise DatasetError(f"field {field!r} must be a {'string' if kind is str else 'JSON object'}")
    if not data["id"]:
        raise DatasetError("field 'id' is empty")
    image_path = data_dir / data["image"]
    if not image_path.is_file():
        raise DatasetError(f"image {image_path} not found")
    return AdRecord(data["id"], image_path, data["text"], _check_labels(data["labels"], require_all_tasks, taxonomy))


def _check_labels(labels: dict, require_all_tasks: bool, taxonomy: Taxonomy) -> dict[str, str]:
    for task, name in labels.items():
        if not isinstance(name, str):
            raise DatasetError(f"label for task {task!r} must be a string, got {json.dumps(name)}")
    try:
        taxonomy.check_labels(labels, require_all_tasks)
    except ValueError as error:
        raise DatasetError(str(error)) from None
    return dict(labels)


def link_picture(record: AdRecord, data_dir: Path, folder: Path) -> str:
    """Link `record`'s picture (in `data_dir`) into the new data set `folder` at the same relative path,
    once; returns that path as a split file names it."""
    relative = record.image_path.relative_to(data_dir)
    link = folder / relative
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(record.image_path.resolve(), link)
    return relative.as_posix()


def write_rows(path: Path, rows: list[dict], before: str = "") -> None:
    """A split file: `before` (lines already written), then one JSON line per row, Chinese kept readable."""
    path.write_text(before + "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def load_image(path: Path, size: int | None = None) -> Image.Image:
    """The image at `path` as RGB; DatasetError if it is missing or cannot be decoded. `size`: the
    model's image size, decoded as the gateway decodes it (models.preprocessing.decode_picture)."""
    from adaudit.models.preprocessing import decode_picture

    try:
        with Image.open(path) as image:
            picture = decode_picture(image, size)
            return picture.copy() if picture is image else picture  # closing the file invalidates `image`
    except FileNotFoundError:
        raise DatasetError(f"image {path} not found") from None
    except (UnidentifiedImageError, OSError) as error:
        raise DatasetError(f"image {path} cannot be decoded: {error}") from None


SPLITS = ("train", "validation", "test")


def data_checksum(data_dir: Path) -> dict:
    """sha256 of each split file present and of every image the splits name: recorded beside a result,
    so a figure says exactly which ads it came from."""
    data_dir = Path(data_dir)
    checksums = {}
    for split in SPLITS:
        path = data_dir / f"{split}.jsonl"
        if not path.is_file():
            continue
        checksums[split] = hashlib.sha256(path.read_bytes()).hexdigest()
        images = hashlib.sha256()
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                images.update((data_dir / json.loads(line)["image"]).read_bytes())
        checksums[f"{split}_images"] = images.hexdigest()
    return checksums
