"""More training ads, the same validation and test ads: does data, not thresholds, raise automation? (issue 28)

Automation at 99% precision stays near half because some violations (gambling drawn in the picture above
all) score as clean as clean ads do (docs/decisions.md). Pairs that reuse the 165 training pictures with
drawn gambling taught the picture and hurt clean ads (results/picture-pairs.md). A platform has more
distinct ads than that, so this joins the training split of a second generated data set (another seed, the
same generator) to the benchmark's own, keeping its validation and test splits, and a teacher is trained on
the union (benchmarks/more_ads.sh).

    python -m benchmarks.more_ads --data runs/bench-v/data --extra runs/bench-v-pool --out runs/more-ads/data

`--extra` may be given more than once. The extra ads keep their pictures where they are (links); the ids of
the k-th extra data set gain the prefix `extra<k>-`, so none collides.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from adaudit.core.files import atomic_folder
from adaudit.data.dataset import DatasetError, data_taxonomy, read_split

def prefix(number: int) -> str:
    """The id prefix of the `number`-th extra data set (from 1)."""
    return f"extra{number}-"


def join(data: Path, extras: list[Path], out: Path) -> dict:
    """`out`: data's splits, with each extra data set's training ads added to its train split."""
    for extra in extras:
        if data_taxonomy(data) != data_taxonomy(extra):
            raise DatasetError(f"{extra} labels its ads with another taxonomy than {data} (labels.yaml)")
    train = read_split(data, "train")
    added = [read_split(extra, "train") for extra in extras]
    for split in ("validation", "test"):
        read_split(data, split, require_all_tasks=False)  # a readable error now, not after hours of training
    with atomic_folder(out) as staging:
        (staging / "images").mkdir()
        rows = []
        sources = [("", train)] + [(prefix(number), records) for number, records in enumerate(added, 1)]
        for start, records in sources:
            for record in records:
                name = start + record.image_path.name
                os.symlink(record.image_path.resolve(), staging / "images" / name)
                rows.append({"id": start + record.id, "image": f"images/{name}", "text": record.text,
                             "labels": record.labels})
        (staging / "train.jsonl").write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows),
                                             encoding="utf-8")
        for split in ("validation", "test"):
            for line in (data / f"{split}.jsonl").read_text(encoding="utf-8").splitlines():
                image = json.loads(line)["image"]
                link = staging / image
                if not link.exists():
                    os.symlink((data / image).resolve(), link)
            shutil.copyfile(data / f"{split}.jsonl", staging / f"{split}.jsonl")
        if (data / "labels.yaml").is_file():
            shutil.copyfile(data / "labels.yaml", staging / "labels.yaml")
        made = {"joined_from": [{"folder": str(folder), "generator": provenance(folder)} for folder in (data, *extras)],
                "train": len(train), "extra_train": [len(records) for records in added], "joined_train": len(rows)}
        (staging / "joined.json").write_text(json.dumps(made, indent=2) + "\n", encoding="utf-8")
    return made


def provenance(folder: Path) -> dict | None:
    """What generated `folder` (its generator.json), or None for data brought by a user."""
    path = folder / "generator.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the benchmark's data folder")
    parser.add_argument("--extra", type=Path, required=True, action="append",
                        help="a data folder whose train split is added (repeatable)")
    parser.add_argument("--out", type=Path, required=True)
    arguments = parser.parse_args()
    if arguments.out.exists():
        sys.exit(f"error: {arguments.out} exists; remove it or choose another --out")
    try:
        print(json.dumps(join(arguments.data, arguments.extra, arguments.out)))
    except DatasetError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
