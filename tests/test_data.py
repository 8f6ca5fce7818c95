"""The synthetic ad generator and the dataset reader."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adaudit.data import generator
from adaudit.data.dataset import DatasetError, load_image, read_split
from adaudit.models.labels import TASKS

N = 160
SEED = 3


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ads") / "data"
    generator.make_dataset(out, n=N, seed=SEED)
    return out


@pytest.fixture(scope="module")
def records(dataset):
    return {split: read_split(dataset, split) for split in ("train", "validation", "test")}


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes_and_another_seed_does_not(dataset, tmp_path):
    generator.make_dataset(tmp_path / "again", n=N, seed=SEED)
    generator.make_dataset(tmp_path / "other", n=N, seed=SEED + 1)
    assert _files(tmp_path / "again") == _files(dataset)
    other = _files(tmp_path / "other")
    assert other["train.jsonl"] != _files(dataset)["train.jsonl"]
    assert other["images/ad-000000.jpg"] != _files(dataset)["images/ad-000000.jpg"]


def test_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        generator.make_dataset(tmp_path / "data", n=20)
    assert [p.name for p in tmp_path.iterdir()] == ["data"]


def test_splits_have_the_right_sizes_and_disjoint_ids(records):
    assert len(records["test"]) == round(N * 0.2)
    assert len(records["validation"]) == round(N * 0.1)
    assert len(records["train"]) == N - round(N * 0.2) - round(N * 0.1)
    ids = [r.id for split in records.values() for r in split]
    assert len(set(ids)) == N


def test_labels_are_valid_and_consistent(records):
    ads = [r for split in records.values() for r in split]
    for ad in ads:
        assert set(ad.labels) == set(TASKS)
        assert all(ad.labels[task] in names for task, names in TASKS.items())
        assert (ad.labels["verdict"] == "reject") == (ad.labels["violation"] != "none")
        assert generator.MIN_TEXT_CHARS <= len(ad.text) <= generator.MAX_TEXT_CHARS
        ad.text.encode("gb2312")  # every character is in the tokenizer's vocabulary
    violations = [ad.labels["violation"] for ad in ads]
    assert 0.4 < violations.count("none") / N < 0.55
    assert set(violations) == set(TASKS["violation"])


def _nearest_background(image: Image.Image) -> str:
    pixels = np.asarray(image, dtype=float)
    ring = np.concatenate([pixels[:2].reshape(-1, 3), pixels[-2:].reshape(-1, 3),
                           pixels[:, :2].reshape(-1, 3), pixels[:, -2:].reshape(-1, 3)])
    colour = np.median(ring, axis=0)
    return min(generator.BACKGROUND_RGB, key=lambda name: np.linalg.norm(colour - generator.BACKGROUND_RGB[name]))


def test_background_label_matches_the_image_border(records):
    for ad in records["train"] + records["test"]:
        assert _nearest_background(load_image(ad.image_path)) == ad.labels["background_colour"], ad.id


def _sticker_share(image: Image.Image) -> float:
    pixels = np.asarray(image, dtype=float)[..., None, :]
    distances = np.linalg.norm(pixels - np.array(generator.STICKER_RGB, dtype=float), axis=-1)
    return float((distances.min(axis=-1) < 50).mean())


def test_heavy_clutter_covers_more_of_the_image_than_none(records):
    shares = {"none": [], "heavy": []}
    for ad in records["train"] + records["test"]:
        if ad.labels["clutter"] in shares:
            shares[ad.labels["clutter"]].append(_sticker_share(load_image(ad.image_path)))
    assert np.mean(shares["heavy"]) > np.mean(shares["none"]) + 0.05


def test_copy_carries_exactly_its_text_violation(records):
    for ad in records["train"] + records["test"]:
        violation = ad.labels["violation"]
        found = generator.categories_in(ad.text)
        if violation in generator.TEXT_VIOLATIONS and found:
            phrases = sum(generator.TRIGGERS[violation].values(), ())
            assert found == {violation} and any(p in ad.text for p in phrases), ad
        else:  # approved, image_text_mismatch and image-only gambling: clean copy
            assert not found, ad
            assert violation in ("none", "image_text_mismatch", "gambling"), ad


def test_plans_match_the_labels():
    plans = generator.plan_ads(400, seed=1)
    for plan in plans:
        violation = plan.labels["violation"]
        assert (plan.photo_industry != plan.labels["industry"]) == (violation == "image_text_mismatch")
        assert plan.gambling_image == (violation == "gambling" and not generator.categories_in(plan.text))
        assert plan.product in generator.PRODUCTS[plan.labels["industry"]]
        allowed = {"none": (0,), "light": (1, 2), "heavy": (4, 5, 6, 7)}[plan.labels["clutter"]]
        assert plan.n_stickers in allowed
    gambling = [p for p in plans if p.labels["violation"] == "gambling"]
    assert 0.4 < sum(p.gambling_image for p in gambling) / len(gambling) < 0.6


def test_vocabulary_is_clean_and_triggers_are_held_out():
    clean = [phrase for split in generator.COPY.values() for field in vars(split).values() for phrase in field]
    clean += [name for names in generator.PRODUCTS.values() for name in names]
    assert [phrase for phrase in clean if generator.categories_in(phrase)] == []
    for category, splits in generator.TRIGGERS.items():
        assert all(generator.categories_in(p) == {category} for phrase in splits.values() for p in phrase)
        assert not set(splits["train"]) & set(splits["test_only"])
        assert 0.2 < len(splits["test_only"]) / (len(splits["train"]) + len(splits["test_only"])) < 0.35
    train, test = generator.COPY["train"], generator.COPY["test"]
    assert len(train.templates) >= 12 and len(test.templates) >= 12
    for field in vars(train):
        assert not set(getattr(train, field)) & set(getattr(test, field))


def test_test_copy_is_unseen_in_training(records):
    assert not {r.text for r in records["train"]} & {r.text for r in records["test"]}


# ---------------------------------------------------------------- reader errors


def _write_split(folder: Path, rows: list) -> Path:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), "red").save(folder / "images" / "a.jpg")
    lines = [row if isinstance(row, str) else json.dumps(row, ensure_ascii=False) for row in rows]
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def _row(**changes) -> dict:
    labels = {task: names[0] for task, names in TASKS.items()}
    row = {"id": "ad-1", "image": "images/a.jpg", "text": "咖啡，品质保障", "labels": labels}
    row.update(changes)
    return row


def test_reader_accepts_a_valid_file(tmp_path):
    records = read_split(_write_split(tmp_path, [_row()]), "train")
    assert records[0].image_path == tmp_path / "images" / "a.jpg"
    assert load_image(records[0].image_path).mode == "RGB"


@pytest.mark.parametrize("rows, message", [
    ([_row(), _row(id="ad-2", image="images/gone.jpg")], "line 2: image .*gone.jpg not found"),
    ([_row(labels={**_row()["labels"], "verdict": "maybe"})],
     "line 1: unknown label 'maybe' for task 'verdict'; expected one of approve, reject"),
    ([_row(), "{not json"], "line 2: not valid JSON"),
    ([{k: v for k, v in _row().items() if k != "text"}], "line 1: missing field 'text'"),
    ([_row(labels={k: v for k, v in _row()["labels"].items() if k != "logo"})],
     "line 1: missing labels for task.*logo"),
    ([_row(labels={**_row()["labels"], "colour": "red"})], "line 1: unknown task 'colour'"),
    ([_row(), _row()], "line 2: duplicate id 'ad-1' \\(first on line 1\\)"),
    ([_row(labels={**_row()["labels"], "verdict": "reject"})], "line 1: verdict 'reject' contradicts"),
])
def test_reader_names_file_and_line(tmp_path, rows, message):
    _write_split(tmp_path, rows)
    with pytest.raises(DatasetError, match=f"train.jsonl {message}") as error:
        read_split(tmp_path, "train")
    assert "\n" not in str(error.value)


def test_partial_labels_are_allowed_outside_training(tmp_path):
    _write_split(tmp_path, [_row(labels={"verdict": "approve"})])
    assert read_split(tmp_path, "train", require_all_tasks=False)[0].labels == {"verdict": "approve"}


def test_missing_folder_split_and_image_errors(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        read_split(tmp_path / "nowhere", "train")
    with pytest.raises(DatasetError, match="test.jsonl not found"):
        read_split(tmp_path, "test")
    with pytest.raises(DatasetError, match="not found"):
        load_image(tmp_path / "gone.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match="cannot be decoded"):
        load_image(tmp_path / "broken.jpg")


def test_the_validation_split_is_carved_from_training_ads_and_leaves_the_test_split_alone(dataset, tmp_path):
    """Choices are made on validation.jsonl: training-distribution ads, never test ones. Adding it moves
    ads out of train only: the test split and every ad's copy and labels are what they are without it."""
    splits = {split: read_split(dataset, split) for split in ("train", "validation", "test")}
    assert len(splits["validation"]) == round(N * 0.1) and len(splits["test"]) == round(N * 0.2)
    generator.make_dataset(tmp_path / "none", n=N, seed=SEED, validation_fraction=0.0)
    assert not (tmp_path / "none" / "validation.jsonl").exists()
    without = {split: read_split(tmp_path / "none", split) for split in ("train", "test")}
    assert (dataset / "test.jsonl").read_bytes() == (tmp_path / "none" / "test.jsonl").read_bytes()
    as_training = {record.id: record for record in without["train"]}
    for record in splits["validation"] + splits["train"]:
        same = as_training[record.id]  # the same copy, labels and picture as a training ad
        assert (same.text, same.labels) == (record.text, record.labels)
        assert same.image_path.read_bytes() == record.image_path.read_bytes()
    assert len(splits["validation"]) + len(splits["train"]) == len(without["train"])
    ids = [{r.id for r in rows} for rows in splits.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])


def test_fractions_that_leave_no_training_ads_are_refused(tmp_path):
    with pytest.raises(ValueError, match="empty train or test"):
        generator.make_dataset(tmp_path / "data", n=20, test_fraction=0.5, validation_fraction=0.5)
