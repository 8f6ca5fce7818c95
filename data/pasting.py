"""Pasted ads: a clean training ad's picture with a piece of violating imagery pasted on it, labelled.

A teacher misses most ads whose violation is drawn in the picture while the copy is clean (gambling chips,
cards and dice: docs/decisions.md), and misses them with confidence, which is what keeps automatic passes
rare. The training split holds few such pictures (about 3.7% of ads), each a different scene, so the
picture tower learns scenes rather than the objects. A pasted ad is a counterfactual: the same picture and
copy as a clean training ad, plus the objects, labelled as the objects' violation. The only difference
between the pair is the objects, so that is what the labels teach (copy-paste augmentation, Ghiasi et al.,
CVPR 2021).

The objects come from a *violation picture library*: a folder with one sub-folder per violation class of
the data set's taxonomy, each holding transparent PNG crops of that class's imagery. A platform cuts them
from pictures its reviewers rejected (as content-moderation services keep custom image libraries);
`draw_library` draws one with the generator's own gambling imagery (data/drawing.py), for the generated
data sets. Pasted pictures keep their source's JPEG quantisation tables, so the compression of a picture
never tells a pasted ad from its clean original.

`paste_data` writes a new data set folder: every split of the source (pictures linked, not copied), with
the pasted ads added to its train split only. Validation and test are untouched, so figures measured on
them stay comparable with the source's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from adaudit.core.files import atomic_folder, refuse_existing_folder

from .dataset import DatasetError, data_taxonomy, link_picture, read_split, write_rows
from .drawing import BORDER, IMAGE_SIZE, _gambling_cluster, _paste_inside

LIBRARY_FILE = "library.json"
# the pasted imagery's longer side, as a share of the picture's shorter side (the generator's own clusters
# span about 0.45-0.7 of its 128 px canvas)
SIZE_RANGE = (0.35, 0.7)
MAX_CROP_PIXELS = 4096 * 4096


def draw_library(out: Path, count: int, seed: int = 0) -> dict:
    """`count` crops of the generator's gambling imagery (dice, chips, cards) in out/gambling/, and
    out/library.json. The generator draws no other violation in its pictures. Refuses a non-empty `out`."""
    out = Path(out)
    if count < 1:
        raise DatasetError(f"a library needs at least one crop, got {count}")
    refuse_existing_folder(out)
    with atomic_folder(out) as staging:
        (staging / "gambling").mkdir()
        for index in range(count):
            rng = np.random.default_rng([seed, index, 0x11B])  # 0x11B: apart from the ads' own draws
            _gambling_cluster(rng).save(staging / "gambling" / f"{index:05d}.png")
        made = {"drawn_by": "adaudit data library (data/drawing.py)", "count": count, "seed": seed,
                "classes": {"gambling": count}}
        (staging / LIBRARY_FILE).write_text(json.dumps(made, indent=2) + "\n", encoding="utf-8")
    return made


def read_library(folder: Path, violations: tuple[str, ...]) -> dict[str, list[Path]]:
    """{violation class: its PNG crops} of a library folder, checked against the taxonomy's `violations`;
    DatasetError naming the folder or file at fault."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"picture library {folder} not found")
    library: dict[str, list[Path]] = {}
    for entry in sorted(folder.iterdir()):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        if entry.name not in violations:
            raise DatasetError(f"picture library {folder}: folder {entry.name!r} is not a violation class of the "
                               f"data set; expected one of {', '.join(violations)}")
        crops = sorted(path for path in entry.iterdir() if path.suffix.lower() == ".png")
        if not crops:
            raise DatasetError(f"picture library {entry}: no .png crops")
        library[entry.name] = crops
    if not library:
        raise DatasetError(f"picture library {folder}: no class folders (one per violation class, holding .png crops)")
    return library


def load_crop(path: Path) -> Image.Image:
    """A library crop as RGBA; DatasetError if it does not decode, is empty or is unreasonably large."""
    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_CROP_PIXELS:
                raise DatasetError(f"picture library crop {path} is {image.width}x{image.height}: too large")
            crop = image.convert("RGBA")
    except (UnidentifiedImageError, OSError) as error:
        raise DatasetError(f"picture library crop {path} cannot be decoded: {error}") from None
    box = crop.getchannel("A").getbbox()
    if box is None:
        raise DatasetError(f"picture library crop {path} is fully transparent")
    return crop.crop(box)


def paste(picture: Image.Image, crop: Image.Image, rng: np.random.Generator) -> Image.Image:
    """`picture` with `crop` pasted at a random place and size (SIZE_RANGE) with a soft shadow, as the
    generator pastes its own imagery; the picture's size is kept, its mode becomes RGB."""
    canvas = picture.convert("RGB")
    side = min(canvas.size) * rng.uniform(*SIZE_RANGE)
    factor = side / max(crop.size)
    scale = min(canvas.size) / IMAGE_SIZE
    border = max(1, round(BORDER * scale))
    room = (canvas.width - 2 * border, canvas.height - 2 * border)
    factor = min(factor, room[0] / crop.width, room[1] / crop.height)
    tile = crop.resize((max(1, round(crop.width * factor)), max(1, round(crop.height * factor))),
                       Image.Resampling.LANCZOS)
    _paste_inside(canvas, rng, tile, shadow=True, border=border, scale=scale)
    return canvas


def _save_like(source: Path, picture: Image.Image, target: Path) -> str:
    """Save `picture` as `source` was saved: a JPEG with its quantisation tables and chroma subsampling,
    anything else as PNG. Returns the file name written."""
    with Image.open(source) as original:
        if original.format == "JPEG":
            target = target.with_suffix(".jpg")
            picture.save(target, format="JPEG", qtables=original.quantization,
                         subsampling=_subsampling(original))
            return target.name
    target = target.with_suffix(".png")
    picture.save(target, format="PNG")
    return target.name


def _subsampling(jpeg) -> int:
    """PIL's subsampling code (0: 4:4:4, 1: 4:2:2, 2: 4:2:0) of an open JPEG."""
    from PIL import JpegImagePlugin

    return max(JpegImagePlugin.get_sampling(jpeg), 0)


def paste_data(data: Path, library: Path, out: Path, share: float, seed: int = 0) -> dict:
    """`out`: `data`'s splits, with round(share x training ads) pasted ads added to its train split, each
    on a different clean training ad (at most all of them). Returns what was made (also out/pasted.json)."""
    data, out = Path(data), Path(out)
    if not 0.0 < share <= 1.0:
        raise DatasetError(f"share {share} is not in (0, 1]: pasted ads as a share of the training ads")
    refuse_existing_folder(out)
    taxonomy = data_taxonomy(data)
    crops = read_library(library, tuple(v for v in taxonomy.tasks[taxonomy.reason_task] if v != taxonomy.clean_class))
    train = read_split(data, "train", taxonomy=taxonomy)
    clean = [record for record in train if record.labels.get(taxonomy.reason_task) == taxonomy.clean_class]
    if not clean:
        raise DatasetError(f"{data}/train.jsonl holds no clean ({taxonomy.clean_class}) ad to paste on")
    held = {split: read_split(data, split, require_all_tasks=False, taxonomy=taxonomy)
            for split in ("validation", "test", "test_shifted") if (data / f"{split}.jsonl").is_file()}
    rng = np.random.default_rng(seed)
    count = min(round(share * len(train)), len(clean))
    chosen = [clean[int(k)] for k in rng.choice(len(clean), size=count, replace=False)]
    classes = sorted(crops)
    loaded: dict[Path, Image.Image] = {}
    made = {"pasted_from": str(data), "library": str(library), "share": share, "seed": seed,
            "train": len(train), "pasted": count, "classes": {name: 0 for name in classes}}
    with atomic_folder(out) as staging:
        (staging / "images").mkdir()
        rows = [_linked_row(record, data, staging) for record in train]
        for index, record in enumerate(chosen):
            violation = classes[int(rng.integers(len(classes)))]
            path = crops[violation][int(rng.integers(len(crops[violation])))]
            if path not in loaded:
                loaded[path] = load_crop(path)
            with Image.open(record.image_path) as image:
                picture = paste(image, loaded[path], rng)
            name = _save_like(record.image_path, picture, staging / "images" / f"pasted-{index:06d}")
            labels = dict(record.labels)
            labels[taxonomy.reason_task], labels[taxonomy.verdict_task] = violation, taxonomy.reject_class
            rows.append({"id": f"pasted-{index:06d}", "image": f"images/{name}", "text": record.text,
                         "labels": labels, "pasted_on": record.id, "pasted": path.relative_to(library).as_posix()})
            made["classes"][violation] += 1
        write_rows(staging / "train.jsonl", rows)
        for split, records in held.items():
            write_rows(staging / f"{split}.jsonl", [_linked_row(record, data, staging) for record in records])
        for name in ("labels.yaml", "generator.json"):
            if (data / name).is_file():
                shutil.copyfile(data / name, staging / name)
        (staging / "pasted.json").write_text(json.dumps(made, indent=2) + "\n", encoding="utf-8")
    return made


def _linked_row(record, data: Path, staging: Path) -> dict:
    """The record as a JSON row of the new folder, its picture a link to the source's file."""
    return {"id": record.id, "image": link_picture(record, data, staging), "text": record.text,
            "labels": record.labels}
