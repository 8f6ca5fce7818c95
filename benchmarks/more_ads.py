"""More training ads, the same validation and test ads: does data, not thresholds, raise automation? (issue 28)

Automation at 99% precision stays near half because some violations (gambling drawn in the picture above
all) score as clean as clean ads do (docs/decisions.md). Pairs that reuse the 165 training pictures with
drawn gambling taught the picture and hurt clean ads (results/picture-pairs.md). A platform has more
distinct ads than that, so this joins the training split of a second generated data set (another seed, the
same generator) to the benchmark's own, keeping its validation and test splits, and a teacher is trained on
the union (benchmarks/more_ads.sh).

    python -m benchmarks.more_ads --data runs/bench-v/data --extra runs/bench-v-pool --out runs/more-ads/data

The extra ads keep their pictures where they are (links), their ids gain a prefix so none collides.
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

PREFIX = "extra-"


def join(data: Path, extra: Path, out: Path) -> dict:
    """`out`: data's splits, with extra's training ads added to its train split. Returns the counts."""
    if data_taxonomy(data) != data_taxonomy(extra):
        raise DatasetError(f"{extra} labels its ads with another taxonomy than {data} (labels.yaml)")
    train, added = read_split(data, "train"), read_split(extra, "train")
    for split in ("validation", "test"):
        read_split(data, split, require_all_tasks=False)  # a readable error now, not after hours of training
    with atomic_folder(out) as staging:
        (staging / "images").mkdir()
        rows = []
        for folder, records, prefix in ((data, train, ""), (extra, added, PREFIX)):
            for record in records:
                name = prefix + record.image_path.name
                os.symlink(record.image_path.resolve(), staging / "images" / name)
                rows.append({"id": prefix + record.id, "image": f"images/{name}", "text": record.text,
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
        made = {"joined_from": {str(folder): provenance(folder) for folder in (data, extra)},
                "train": len(train), "extra_train": len(added), "joined_train": len(rows)}
        (staging / "joined.json").write_text(json.dumps(made, indent=2) + "\n", encoding="utf-8")
    return made


def provenance(folder: Path) -> dict | None:
    """What generated `folder` (its generator.json), or None for data brought by a user."""
    path = folder / "generator.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the benchmark's data folder")
    parser.add_argument("--extra", type=Path, required=True, help="a data folder whose train split is added")
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
