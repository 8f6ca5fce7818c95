"""`adaudit data import`: a platform's own table of ads into a data set folder.

A platform holds its ads as an export: a CSV or Parquet table, one row per ad, with a column naming
the picture (a path relative to the table's folder, or absolute), a column of copy and one column
per label. `import_table` turns it into the folder `data/dataset.py` reads (train.jsonl,
validation.jsonl, test.jsonl, images/) plus `import_report.json`, the validation report a user reads
before training on the data.

Everything is checked before anything is written, so a bad table leaves nothing behind:

- a missing column, an empty or unreadable table, a label outside the taxonomy, an empty copy, a
  duplicate id: a `TableError` (one line naming the row or the column), nothing written;
- a picture that is missing or does not decode (each is decoded once, the way training decodes it):
  refused like the above by default, since a silent drop can shift the class balance; with
  `skip_bad_images` the row is dropped and named in the report;
- the same ad twice (the same picture bytes and the same copy): the first row is kept, the others
  are dropped and named in the report, so one ad cannot sit on both sides of a split.

Splits are drawn by a seeded shuffle of groups (a group column, e.g. the advertiser, or else each ad
on its own): every ad of a group lands in one split, so a model is tested on advertisers it never
saw, as it will be in production. The pictures are copied byte for byte (their format kept) to
`images/<id>.<format>`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import re
import shutil
import statistics
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from PIL import Image

from adaudit.core.files import atomic_folder, refuse_existing_folder
from adaudit.models.labels import DEFAULT_TAXONOMY, LABELS_FILE, Taxonomy, write_taxonomy
from adaudit.models.preprocessing import decode_picture

from .dataset import SPLITS, DatasetError

REPORT_NAME = "import_report.json"
_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif"}
_SHOWN_DROPPED = 20  # rows listed in the printed report; the JSON report lists them all


class TableError(DatasetError):
    """A table, column, row or picture that cannot be imported; one readable line."""


@dataclass(frozen=True)
class Columns:
    """Which column of the table holds what. `labels` maps each task of the taxonomy to its column."""

    image: str
    text: str
    labels: dict[str, str]
    id: str | None = None
    group: str | None = None

    def named(self) -> list[tuple[str, str]]:
        """(column, the option that named it) for every column the import reads."""
        named = [(self.image, "--image-column"), (self.text, "--text-column")]
        named += [(column, f"--label-columns {task}={column}") for task, column in self.labels.items()]
        named += [(column, option) for column, option in ((self.id, "--id-column"), (self.group, "--group-column"))
                  if column is not None]
        return named


@dataclass
class TableAd:
    """One row of the table, validated; `digest` and `suffix` are filled when its picture is checked."""

    row: int  # 1-based, the header not counted
    id: str
    image: str  # as written in the table
    source: Path
    text: str
    labels: dict[str, str]
    group: str
    digest: str = ""
    suffix: str = ""
    split: str = "train"

    def named(self) -> str:
        return f"row {self.row} (id {self.id!r})"


def parse_label_columns(spec: str, taxonomy: Taxonomy = DEFAULT_TAXONOMY) -> dict[str, str]:
    """`verdict=col1,violation=col2,...` as {task: column}; a bare `industry` means a column of that name.

    Every task of the taxonomy must be given: training reads every task of every ad
    (`read_split(require_all_tasks=True)`), so a folder with a task left out could not be trained on."""
    tasks = taxonomy.tasks
    mapping: dict[str, str] = {}
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        task, _, column = (piece.strip() for piece in item.partition("="))
        column = column or task
        if task not in tasks:
            raise TableError(f"--label-columns: {task!r} is not a task; tasks are {', '.join(tasks)}")
        if task in mapping:
            raise TableError(f"--label-columns: task {task!r} is given twice")
        mapping[task] = column
    missing = [task for task in tasks if task not in mapping]
    if missing:
        raise TableError(f"--label-columns gives no column for task(s) {', '.join(missing)}: training needs a "
                         f"label for every task ({', '.join(tasks)}); write TASK=COLUMN, comma-separated")
    return mapping


# ---------------------------------------------------------------- reading the table


def read_table(path: Path) -> tuple[list[str], list[dict]]:
    """(the column names, the rows as dicts) of a .csv (UTF-8, with or without BOM) or .parquet table."""
    path = Path(path)
    if not path.is_file():
        raise TableError(f"table {path} not found")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        columns, rows = _read_csv(path)
    elif suffix in (".parquet", ".pq"):
        columns, rows = _read_parquet(path)
    else:
        raise TableError(f"table {path}: expected a .csv or .parquet file")
    repeated = sorted(name for name, count in Counter(columns).items() if count > 1)
    if repeated:
        raise TableError(f"table {path} has more than one column named {', '.join(map(repr, repeated))}")
    if not rows:
        raise TableError(f"table {path} holds no rows" + (f" (columns: {', '.join(columns)})" if columns else ""))
    return columns, rows


def _read_csv(path: Path) -> tuple[list[str], list[dict]]:
    try:
        with path.open(encoding="utf-8-sig", newline="") as stream:
            reader = csv.DictReader(stream)
            rows = list(reader)
            columns = list(reader.fieldnames or [])
    except UnicodeDecodeError as error:
        raise TableError(f"table {path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except csv.Error as error:
        raise TableError(f"table {path} is not a readable CSV table (line {reader.line_num}: {error})") from None
    except OSError as error:
        raise TableError(f"table {path} cannot be read ({error.strerror or error})") from None
    for number, row in enumerate(rows, start=1):
        if None in row:  # DictReader keeps the cells past the header under the key None
            raise TableError(f"table {path} row {number} has more cells than the header's {len(columns)} columns")
    return columns, rows


def _read_parquet(path: Path) -> tuple[list[str], list[dict]]:
    import pyarrow
    import pyarrow.parquet

    try:
        table = pyarrow.parquet.read_table(path)
    except (pyarrow.ArrowException, OSError) as error:
        raise TableError(f"table {path} is not a readable Parquet file ({str(error).splitlines()[0]})") from None
    return list(table.column_names), table.to_pylist()


def _cell(row: dict, column: str) -> str | None:
    """The cell as a string, surrounding spaces removed; None when it is empty or null."""
    value = row.get(column)
    if value is None:
        return None
    value = str(value).strip()
    return value or None


def _has_words(text: str) -> bool:
    """Copy made only of spaces and control or format characters carries nothing to audit."""
    return any(not character.isspace() and unicodedata.category(character)[0] != "C" for character in text)


def check_columns(path: Path, header: Sequence[str], columns: Columns) -> None:
    """Every column the import reads is in the table; else one line naming each missing one and the table's."""
    missing = [f"{column!r} ({option})" for column, option in columns.named() if column not in header]
    if missing:
        raise TableError(f"table {path} has no column {', '.join(missing)}; its columns are "
                         f"{', '.join(header) or 'none'}")


def check_labels(labels: Mapping[str, str], columns: Mapping[str, str] | None = None,
                 taxonomy: Taxonomy = DEFAULT_TAXONOMY) -> None:
    """An ad's labels against the taxonomy (`--labels`, else the default): each label one of its task's
    classes (naming its column), and the verdict agreeing with the reason as data/dataset.py demands."""
    columns = columns or {}
    for task, value in labels.items():
        if value not in taxonomy.tasks[task]:
            where = f" (column {columns[task]!r})" if task in columns else ""
            raise TableError(f"{task} label {value!r}{where} is not in the taxonomy; "
                             f"expected one of {', '.join(taxonomy.tasks[task])}")
    try:
        taxonomy.check_labels(labels, require_all_tasks=False)
    except ValueError as error:
        raise TableError(str(error)) from None


def table_ads(rows: list[dict], columns: Columns, table_dir: Path,
              taxonomy: Taxonomy = DEFAULT_TAXONOMY) -> list[TableAd]:
    """The rows as ads, each validated (id, picture path, copy, labels, group); TableError on the first bad row."""
    ads: list[TableAd] = []
    first_row_of: dict[str, int] = {}
    for number, row in enumerate(rows, start=1):
        ad_id = _cell(row, columns.id) if columns.id else f"row-{number:06d}"
        where = f"row {number}" + (f" (id {ad_id!r})" if columns.id and ad_id else "")
        try:
            ad = _table_ad(number, ad_id, row, columns, table_dir, taxonomy)
        except TableError as error:
            raise TableError(f"{where}: {error}") from None
        if ad.id in first_row_of:
            raise TableError(f"{where}: id {ad.id!r} is also the id of row {first_row_of[ad.id]}; "
                             f"ids (column {columns.id!r}) must be distinct")
        first_row_of[ad.id] = number
        ads.append(ad)
    return ads


def _table_ad(number: int, ad_id: str | None, row: dict, columns: Columns, table_dir: Path,
              taxonomy: Taxonomy) -> TableAd:
    def required(column: str, what: str) -> str:
        value = _cell(row, column)
        if value is None:
            raise TableError(f"no {what} (column {column!r} is empty)")
        return value

    if ad_id is None:
        raise TableError(f"no id (column {columns.id!r} is empty)")
    image = required(columns.image, "picture path")
    text = row.get(columns.text)
    text = "" if text is None else str(text)
    if not _has_words(text):
        raise TableError(f"the copy (column {columns.text!r}) is empty or only spaces and control characters")
    labels = {task: required(column, f"{task} label") for task, column in columns.labels.items()}
    check_labels(labels, columns.labels, taxonomy)
    group = required(columns.group, "group") if columns.group else ad_id
    return TableAd(number, ad_id, image, table_dir / image, text, labels, group)


# ---------------------------------------------------------------- pictures and duplicates


def check_picture(ad: TableAd) -> str | None:
    """Read and decode the ad's picture once (as training decodes it); set its digest and file suffix.
    The problem in words, or None when it is fine."""
    try:
        data = ad.source.read_bytes()
    except FileNotFoundError:
        return f"picture {ad.image} not found"
    except OSError as error:
        return f"picture {ad.image} cannot be read ({error.strerror or error})"
    try:
        with Image.open(io.BytesIO(data)) as image:
            picture_format = image.format
            decode_picture(image, None)
    except Exception as error:  # Pillow raises many kinds (OSError, SyntaxError, ValueError, ...) on a corrupt file
        return f"picture {ad.image} cannot be decoded ({type(error).__name__}: {str(error) or 'no detail'})"
    ad.digest = hashlib.sha256(data).hexdigest()
    ad.suffix = _EXTENSIONS.get(picture_format or "", f".{(picture_format or 'img').lower()}")
    return None


def check_pictures(ads: list[TableAd], skip_bad_images: bool) -> tuple[list[TableAd], list[dict]]:
    """(the ads whose picture decodes, the others as report entries). Without `skip_bad_images` any bad
    picture is a TableError naming the first and counting them all."""
    good, bad = [], []
    for ad in ads:
        problem = check_picture(ad)
        if problem is None:
            good.append(ad)
        else:
            bad.append({"row": ad.row, "id": ad.id, "image": ad.image, "reason": problem})
    if bad and not skip_bad_images:
        first = bad[0]
        raise TableError(f"row {first['row']} (id {first['id']!r}): {first['reason']} ({len(bad)} bad "
                         f"picture(s) in all; --skip-bad-images drops them and lists them in {REPORT_NAME})")
    return good, bad


def drop_duplicates(ads: list[TableAd]) -> tuple[list[TableAd], list[dict]]:
    """(the first of each ad, the later copies as report entries): the same picture bytes and the same copy."""
    first_of: dict[tuple[str, str], TableAd] = {}
    kept, duplicates = [], []
    for ad in ads:
        original = first_of.setdefault((ad.digest, ad.text), ad)
        if original is ad:
            kept.append(ad)
            continue
        duplicates.append({"row": ad.row, "id": ad.id, "duplicate_of_row": original.row,
                           "duplicate_of_id": original.id, "labels_differ": ad.labels != original.labels,
                           "reason": f"duplicate of {original.named()}"
                                     + (" with other labels" if ad.labels != original.labels else "")})
    return kept, duplicates


# ---------------------------------------------------------------- splits


def assign_splits(ads: list[TableAd], test_fraction: float, validation_fraction: float, seed: int) -> None:
    """Set each ad's split. Groups are taken in a seeded shuffle (of their sorted names, so the table's row
    order does not matter); each goes to the first of test and validation that it brings closer to its
    share of the ads (the first group of each always), else to train. A group is never split; without a
    group column each ad is its own group and the shares are met exactly."""
    if not 0 < test_fraction < 1 or not 0 <= validation_fraction < 1 or test_fraction + validation_fraction >= 1:
        raise TableError(f"test fraction {test_fraction} and validation fraction {validation_fraction} must "
                         "each be in [0, 1) (test above 0) and together below 1")
    sizes = Counter(ad.group for ad in ads)
    order = sorted(sizes)
    random.Random(seed).shuffle(order)
    targets = {"test": max(1, round(len(ads) * test_fraction)), "validation": round(len(ads) * validation_fraction)}
    filled = {"test": 0, "validation": 0, "train": 0}
    split_of = {}
    for group in order:
        split_of[group] = next((split for split, target in targets.items() if target and (
            filled[split] == 0 or filled[split] + sizes[group] / 2 <= target)), "train")
        filled[split_of[group]] += sizes[group]
    for ad in ads:
        ad.split = split_of[ad.group]
    if not any(ad.split == "train" for ad in ads):
        kind = "groups" if len(sizes) < len(ads) else "ads"
        raise TableError(f"the {len(ads)} ads in {len(sizes)} {kind} leave no training ads after test "
                         f"({test_fraction}) and validation ({validation_fraction}); lower the fractions or "
                         "bring more ads or groups")


# ---------------------------------------------------------------- the report and the folder


def build_report(table: Path, out: Path, n_rows: int, ads: list[TableAd], bad: list[dict], duplicates: list[dict],
                 columns: Columns, seed: int, taxonomy: Taxonomy = DEFAULT_TAXONOMY) -> dict:
    """What a user checks before training: ads and groups per split, class counts per task and split, copy
    lengths, every dropped row and why, and warnings (a class no training ad has)."""
    tasks = taxonomy.tasks
    splits = [split for split in SPLITS if any(ad.split == split for ad in ads)]
    counts = {task: {split: {name: 0 for name in names} for split in splits} for task, names in tasks.items()}
    for ad in ads:
        for task, name in ad.labels.items():
            counts[task][ad.split][name] += 1
    lengths = [len(ad.text) for ad in ads]
    warnings = [f"class {name!r} of task {task!r} has no training ads"
                for task, names in tasks.items() for name in names if counts[task]["train"][name] == 0]
    return {
        "table": str(table), "out_dir": str(out), "rows": n_rows, "seed": seed,
        "ads": {split: sum(ad.split == split for ad in ads) for split in splits},
        "group_column": columns.group,
        "groups": ({split: len({ad.group for ad in ads if ad.split == split}) for split in splits}
                   if columns.group else None),
        "label_columns": dict(columns.labels),
        "class_counts": counts,
        "copy_length": {"min": min(lengths), "median": statistics.median(lengths), "max": max(lengths)},
        "bad_images": bad,
        "duplicates": duplicates,
        "dropped": {"bad_image": len(bad), "duplicate": len(duplicates)},
        "warnings": warnings,
    }


def _file_names(ads: list[TableAd]) -> dict[str, str]:
    """images/<id>.<format> for each ad; characters a file name cannot hold become '_', and a name taken
    (also by case, for case-insensitive file systems) gets its row number."""
    names, taken = {}, set()
    for ad in ads:
        stem = re.sub(r"[^0-9A-Za-z._-]", "_", ad.id).lstrip(".") or "ad"
        name = f"images/{stem}{ad.suffix}"
        if name.lower() in taken:
            name = f"images/{stem}-row{ad.row}{ad.suffix}"
        taken.add(name.lower())
        names[ad.id] = name
    return names


def write_folder(out: Path, ads: list[TableAd], report: dict, taxonomy: Taxonomy = DEFAULT_TAXONOMY) -> None:
    """The data set folder, written beside `out` and renamed into place: all of it or nothing; a taxonomy
    other than the default goes with it as labels.yaml, so every later step reads the same one."""
    names = _file_names(ads)
    with atomic_folder(out) as staging:
        (staging / "images").mkdir()
        lines: dict[str, list[str]] = {split: [] for split in report["ads"]}
        for ad in ads:
            shutil.copyfile(ad.source, staging / names[ad.id])
            record = {"id": ad.id, "image": names[ad.id], "text": ad.text, "labels": ad.labels}
            lines[ad.split].append(json.dumps(record, ensure_ascii=False) + "\n")
        for split, rows in lines.items():
            (staging / f"{split}.jsonl").write_text("".join(rows), encoding="utf-8")
        (staging / REPORT_NAME).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        if taxonomy != DEFAULT_TAXONOMY:
            (staging / LABELS_FILE).write_text(write_taxonomy(taxonomy), encoding="utf-8")


def import_table(table: Path, out: Path, columns: Columns, test_fraction: float = 0.2,
                 validation_fraction: float = 0.1, seed: int = 0, skip_bad_images: bool = False,
                 taxonomy: Taxonomy = DEFAULT_TAXONOMY) -> dict:
    """Import `table` into the data set folder `out` (refused if it exists and is not empty); the report.

    Every check runs before the first file is written; any problem is a TableError and `out` is left
    as it was."""
    table, out = Path(table), Path(out)
    refuse_existing_folder(out)
    header, rows = read_table(table)
    check_columns(table, header, columns)
    ads = table_ads(rows, columns, table.parent, taxonomy)
    ads, bad = check_pictures(ads, skip_bad_images)
    ads, duplicates = drop_duplicates(ads)
    if not ads:
        raise TableError(f"table {table}: no row has a picture that decodes ({len(bad)} bad)")
    assign_splits(ads, test_fraction, validation_fraction, seed)
    report = build_report(table, out, len(rows), ads, bad, duplicates, columns, seed, taxonomy)
    write_folder(out, ads, report, taxonomy)
    return report


def format_report(report: dict) -> str:
    """The report as lines for a terminal: splits, copy lengths, dropped rows, class counts, warnings."""
    ads, groups = report["ads"], report["groups"]
    lines = [f"imported {sum(ads.values())} of {report['rows']} rows of {report['table']} into {report['out_dir']}: "
             + ", ".join(f"{split} {count}" for split, count in ads.items())
             + (f" (groups of {report['group_column']!r}: " + ", ".join(f"{s} {n}" for s, n in groups.items()) + ")"
                if groups else "")]
    length = report["copy_length"]
    lines.append(f"copy length (characters): min {length['min']}, median {length['median']:g}, max {length['max']}")
    dropped = report["bad_images"] + report["duplicates"]
    lines.append(f"dropped {len(dropped)} row(s): {report['dropped']['bad_image']} bad picture(s), "
                 f"{report['dropped']['duplicate']} duplicate(s)")
    for entry in sorted(dropped, key=lambda entry: entry["row"])[:_SHOWN_DROPPED]:
        lines.append(f"  row {entry['row']} (id {entry['id']!r}): {entry['reason']}")
    if len(dropped) > _SHOWN_DROPPED:
        lines.append(f"  ... and {len(dropped) - _SHOWN_DROPPED} more (all in {REPORT_NAME})")
    splits = list(ads)
    for task, by_split in report["class_counts"].items():
        lines.append(f"{task:<22}" + "".join(f"{split:>12}" for split in splits))
        for name in next(iter(by_split.values())):
            lines.append(f"  {name:<20}" + "".join(f"{by_split[split][name]:>12}" for split in splits))
    lines += [f"warning: {warning}" for warning in report["warnings"]]
    lines.append(f"report written to {Path(report['out_dir']) / REPORT_NAME}")
    return "\n".join(lines)
