"""Pasted ads (data/pasting.py): a violation picture library pasted on clean training ads' pictures.

Real files throughout: the generator's data set, the library drawn as PNGs, the new data set read back by
the same reader training uses, and the command line as a subprocess.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from adaudit.data.dataset import DatasetError, read_split
from adaudit.data.pasting import draw_library, load_crop, paste, paste_data, read_library

VIOLATIONS = ("exaggeration", "gambling")


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    folder = tmp_path_factory.mktemp("library") / "drawn"
    draw_library(folder, count=12, seed=3)
    return folder


def test_the_drawn_library_holds_the_generators_gambling_crops(library):
    crops = read_library(library, VIOLATIONS)
    assert list(crops) == ["gambling"] and len(crops["gambling"]) == 12
    crop = load_crop(crops["gambling"][0])
    assert crop.mode == "RGBA" and crop.getchannel("A").getbbox() == (0, 0, *crop.size)  # trimmed to the imagery
    assert json.loads((library / "library.json").read_text())["count"] == 12
    with pytest.raises(FileExistsError):
        draw_library(library, count=1)


def test_a_paste_changes_one_region_of_the_picture_and_keeps_its_size(library):
    picture = Image.new("RGB", (160, 120), (40, 90, 200))
    crop = load_crop(read_library(library, VIOLATIONS)["gambling"][0])
    pasted = paste(picture, crop, np.random.default_rng(0))
    assert pasted.size == picture.size and pasted.mode == "RGB"
    changed = (np.asarray(pasted).astype(int) - np.asarray(picture).astype(int)).any(axis=-1)
    assert 0.02 < changed.mean() < 0.6  # the imagery and its shadow, not the whole picture
    assert not changed[:2].any() and not changed[:, :2].any()  # the bare border stays bare


def test_pasted_ads_are_counterfactuals_of_clean_training_ads(dataset, library, tmp_path):
    out = tmp_path / "pasted"
    made = paste_data(dataset, library, out, share=0.1, seed=1)
    train = read_split(dataset, "train")
    joined = read_split(out, "train")  # the reader training uses accepts the new folder
    assert made["pasted"] == round(0.1 * len(train)) == len(joined) - len(train)
    assert [r.id for r in joined[:len(train)]] == [r.id for r in train]
    by_id = {r.id: r for r in train}
    rows = [json.loads(line) for line in (out / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    pasted = rows[len(train):]
    assert len({row["pasted_on"] for row in pasted}) == len(pasted)  # each on a different clean ad
    for row in pasted:
        source = by_id[row["pasted_on"]]
        assert source.labels["violation"] == "none" and row["text"] == source.text
        assert row["labels"] == {**source.labels, "violation": "gambling", "verdict": "reject"}
        with Image.open(out / row["image"]) as image, Image.open(source.image_path) as original:
            assert image.format == "JPEG" and image.quantization == original.quantization
            assert image.size == original.size
            assert (np.asarray(image.convert("RGB")).astype(int) - np.asarray(original.convert("RGB"))).any()
    for split in ("validation", "test"):
        assert (out / f"{split}.jsonl").read_text() == (dataset / f"{split}.jsonl").read_text()
        assert all(r.image_path.is_file() for r in read_split(out, split))
    assert json.loads((out / "pasted.json").read_text())["classes"] == {"gambling": len(pasted)}


def test_the_same_seed_pastes_the_same_ads(dataset, library, tmp_path):
    first, second = (paste_data(dataset, library, tmp_path / name, share=0.05, seed=4) for name in "ab")
    assert first == {**second, "pasted_from": first["pasted_from"]}
    for name in (tmp_path / "a" / "images").glob("pasted-*"):
        assert name.read_bytes() == (tmp_path / "b" / "images" / name.name).read_bytes()


@pytest.mark.parametrize("layout, message", [
    ({"tiger": ["crop.png"]}, "not a violation class"),
    ({"gambling": []}, "no .png crops"),
    ({}, "no class folders"),
])
def test_a_library_that_does_not_fit_the_taxonomy_is_refused(tmp_path, library, layout, message):
    folder = tmp_path / "library"
    folder.mkdir()
    for name, files in layout.items():
        (folder / name).mkdir()
        for file in files:
            (folder / name / file).write_bytes((library / "gambling" / "00000.png").read_bytes())
    with pytest.raises(DatasetError, match=message):
        read_library(folder, VIOLATIONS)


def test_a_crop_that_is_not_a_picture_or_is_blank_is_refused(tmp_path):
    (tmp_path / "text.png").write_text("not a picture")
    Image.new("RGBA", (20, 20), (0, 0, 0, 0)).save(tmp_path / "blank.png")
    with pytest.raises(DatasetError, match="cannot be decoded"):
        load_crop(tmp_path / "text.png")
    with pytest.raises(DatasetError, match="fully transparent"):
        load_crop(tmp_path / "blank.png")


def test_the_command_line_pastes_and_refuses_bad_input_in_one_line(dataset, library, tmp_path):
    cli = [sys.executable, "-m", "adaudit.cli", "data"]
    run = lambda *args: subprocess.run([*cli, *map(str, args)], capture_output=True, text=True, timeout=300)  # noqa: E731
    done = run("paste", "--data", dataset, "--library", library, "--out", tmp_path / "ok", "--share", "0.02")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["pasted"] == len(read_split(tmp_path / "ok", "train")) - len(read_split(dataset, "train"))
    (tmp_path / "bad" / "tiger").mkdir(parents=True)
    refused = run("paste", "--data", dataset, "--library", tmp_path / "bad", "--out", tmp_path / "none")
    assert refused.returncode == 1
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "tiger" in lines[0], refused.stderr
    assert not (tmp_path / "none").exists()  # nothing half-written
    zero = run("paste", "--data", dataset, "--library", library, "--out", tmp_path / "zero", "--share", "0")
    assert zero.returncode == 1 and "share 0.0 is not in (0, 1]" in zero.stderr
