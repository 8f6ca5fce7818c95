"""Generator version 2 (data/variety.py, data/phrasing.py), version 1 kept byte for byte, and picture fits."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from adaudit.cli import app
from adaudit.data import generator, phrasing, variety
from adaudit.data.dataset import data_checksum, load_image, read_split
from adaudit.models.configuration import AuditModelConfig, ConfigError
from adaudit.models.labels import TASKS
from adaudit.models.preprocessing import LETTERBOX_RGB, AuditProcessor, fit_picture

# `adaudit data make --n 200 --seed 0` before version 2 existed: the benchmark's data must stay these ads
VERSION_1_CHECKSUM = {
    "train": "dadab9ee06ba564e8419817045073655c85431e5fc409d233e5443db2e1a01bd",
    "train_images": "d699688e6d84697806877d88e997716f500d006cdf224f37d5840b35b8607e9b",
    "validation": "6d878b9efe03eca53966349e535e9f48224702873d86bd3dcce2669a583ac925",
    "validation_images": "326a784c8873144e009542fdee5248779e4714425fe659329f87d884f910fbd3",
    "test": "722d0133d8d221bd2f184efe9cf0a4cc5e18970a9829cc7e11a10f380cfff4d1",
    "test_images": "24d35cba239c7f2a8bd5992c0004687218abd3ad3627185e6abf506237c61b94",
}
N, SEED = 150, 5
SPLITS = ("train", "validation", "test", "test_shifted")


@pytest.fixture(scope="module")
def varied(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("varied") / "data"
    generator.make_dataset(out, n=N, seed=SEED, generator=2)
    return out


@pytest.fixture(scope="module")
def records(varied):
    return {split: read_split(varied, split) for split in SPLITS}


def test_generator_1_still_makes_the_original_ads(tmp_path):
    result = CliRunner().invoke(app, ["data", "make", "--out", str(tmp_path / "v1"), "--n", "200", "--seed", "0",
                                      "--generator", "1"])
    assert result.exit_code == 0, result.output
    assert data_checksum(tmp_path / "v1") == VERSION_1_CHECKSUM
    assert not (tmp_path / "v1" / "test_shifted.jsonl").exists()
    assert json.loads((tmp_path / "v1" / "generator.json").read_text())["generator"] == 1


def test_an_unknown_generator_is_one_readable_line(tmp_path):
    result = CliRunner().invoke(app, ["data", "make", "--out", str(tmp_path / "x"), "--n", "20", "--generator", "7"])
    assert result.exit_code == 1
    assert result.output.strip() == "error: --generator 7 does not exist; versions: 1, 2"
    assert not (tmp_path / "x").exists()


def test_version_2_writes_a_shifted_split_and_records_its_version(varied, records):
    assert json.loads((varied / "generator.json").read_text())["generator"] == 2
    assert len(records["test_shifted"]) == round(N * 0.2)
    assert len(records["test"]) == round(N * 0.2) and len(records["validation"]) == round(N * 0.1)
    ids = [r.id for split in records.values() for r in split]
    assert len(ids) == len(set(ids)) == N + round(N * 0.2)
    shifted = [r.labels["violation"] for r in records["test_shifted"]]
    assert 0.4 < shifted.count("none") / len(shifted) < 0.55


def test_version_2_is_deterministic(tmp_path):
    for name in ("a", "b"):
        generator.make_dataset(tmp_path / name, n=30, seed=1, generator=2)
    files = [{str(p.relative_to(tmp_path / name)): p.read_bytes() for p in (tmp_path / name).rglob("*") if p.is_file()}
             for name in ("a", "b")]
    assert files[0] == files[1]


def test_canvases_follow_the_split(records):
    for split in SPLITS:
        family = "shifted" if split == "test_shifted" else "train"
        sizes = {Image.open(r.image_path).size for r in records[split]}
        assert sizes <= set(variety.CANVASES[family]), split
    train_sizes = {Image.open(r.image_path).size for r in records["train"]}
    assert len(train_sizes) >= 6 and any(w > h for w, h in train_sizes) and any(w < h for w, h in train_sizes)
    assert not set(variety.CANVASES["train"]) & set(variety.CANVASES["shifted"])
    assert not set(variety.TITLES["train"]) & set(variety.TITLES["shifted"])


def _border_colour(image: Image.Image) -> str:
    pixels = np.asarray(image, dtype=float)
    ring = np.concatenate([pixels[:2].reshape(-1, 3), pixels[-2:].reshape(-1, 3),
                           pixels[:, :2].reshape(-1, 3), pixels[:, -2:].reshape(-1, 3)])
    colour = np.median(ring, axis=0)
    return min(generator.BACKGROUND_RGB, key=lambda name: np.linalg.norm(colour - generator.BACKGROUND_RGB[name]))


def test_labels_hold_on_every_canvas(records):
    for split in SPLITS:
        for ad in records[split]:
            assert set(ad.labels) == set(TASKS)
            assert (ad.labels["verdict"] == "reject") == (ad.labels["violation"] != "none")
            assert _border_colour(load_image(ad.image_path)) == ad.labels["background_colour"], ad.id


def test_copy_carries_exactly_its_violation_and_clean_copy_has_hard_negatives(records):
    clean_with_markers = 0
    for split in SPLITS:
        for ad in records[split]:
            assert variety.MIN_CHARS <= len(ad.text) <= variety.MAX_CHARS, ad.text
            ad.text.encode("gb2312")
            found, violation = phrasing.contains_trigger(ad.text), ad.labels["violation"]
            if found:
                assert found == {violation}, ad
            else:
                assert violation in ("none", "image_text_mismatch", "gambling"), ad
                # what version 1 never let clean copy hold: a violation's characters (福利, 首单 ... 低价出)
                clean_with_markers += bool(generator.categories_in(ad.text))
    assert clean_with_markers >= 5


def test_shifted_phrasing_is_never_used_in_training(records):
    for category, splits in phrasing.TRIGGERS.items():
        assert not set(splits["shifted"]) & (set(splits["train"]) | set(splits["test"])), category
        assert all(phrasing.contains_trigger(phrase) == {category} for phrase in phrasing.ALL_TRIGGERS[category])
    train, shifted = phrasing.PHRASING["train"], phrasing.PHRASING["shifted"]
    for field in vars(train):
        assert not set(getattr(train, field)) & set(getattr(shifted, field)), field
    assert [w for w in clean_phrases() if phrasing.contains_trigger(w)] == []
    training_copy = " ".join(r.text for r in records["train"] + records["validation"])
    assert not [p for phrases in phrasing.TRIGGERS.values() for p in phrases["shifted"] if p in training_copy]
    assert not {r.text for r in records["train"]} & {r.text for r in records["test_shifted"]}


def clean_phrases() -> list[str]:
    """Every template and clean phrase of every split's phrasing."""
    return [phrase for words in phrasing.PHRASING.values() for field in ("templates", "selling_points", "offers",
            "facts", "calls_to_action", "hard_negatives") for phrase in getattr(words, field)]


def test_clean_phrases_hold_no_extreme_word_our_own_policy_blocks():
    """A clean label must agree with the shipped policy: 百分之百实拍 was once a clean shifted phrase although
    extreme-words-block.txt names 百分之百, so the shifted split counted 69 such ads as false rejects."""
    from adaudit.decisions.policy import SHIPPED, load_policy

    matcher = load_policy(SHIPPED / "default.yaml").matcher
    assert [hit.term for hit in matcher.find("百分之百实拍")] == ["百分之百"]  # the phrase once labelled clean
    hits = [(phrase, hit.term) for phrase in clean_phrases() for hit in matcher.find(phrase) if hit.list != "allow"]
    assert hits == []


# ---------------------------------------------------------------- picture fits


def _banner() -> Image.Image:
    image = Image.new("RGB", (300, 100), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 100, 100))  # a blue square on the left third
    return image


def test_letterbox_keeps_the_aspect_and_squash_stretches_it():
    letterbox = fit_picture(_banner(), 96, "letterbox")
    assert tuple(letterbox[0, 48]) == LETTERBOX_RGB and tuple(letterbox[-1, 48]) == LETTERBOX_RGB  # padded rows
    assert tuple(letterbox[48, 80]) == (255, 0, 0) and tuple(letterbox[48, 10]) == (0, 0, 255)
    assert (letterbox[48] == (0, 0, 255)).all(axis=-1).sum() == pytest.approx(32, abs=2)  # the square stays square
    squash = fit_picture(_banner(), 96, "squash")
    assert (squash[48] == (0, 0, 255)).all(axis=-1).sum() == pytest.approx(32, abs=2)
    assert (squash[:, 10] == (0, 0, 255)).all(axis=-1).sum() == 96  # ...but three times taller than wide
    square = Image.new("RGB", (50, 50), (0, 200, 0))
    assert (fit_picture(square, 32, "letterbox") == fit_picture(square, 32, "squash")).all()


def test_the_processor_fits_as_its_config_says_and_old_configs_squash():
    config = AuditModelConfig.from_dict(json.loads(json.dumps(_tiny_config().to_dict())))
    assert config.image_fit == "squash"
    old = _tiny_config().to_dict()
    del old["image_fit"]  # a config.json written before fits existed
    assert AuditModelConfig.from_dict(old).image_fit == "squash"
    letterbox = AuditModelConfig.from_dict({**old, "image_fit": "letterbox"})
    array = AuditProcessor(letterbox).image_array([_banner()])
    assert array.shape == (1, 3, 32, 32) and tuple(array[0, :, 0, 16]) == LETTERBOX_RGB
    with pytest.raises(ConfigError, match="image_fit"):
        AuditModelConfig.from_dict({**old, "image_fit": "crop"})


def _tiny_config() -> AuditModelConfig:
    from adaudit.training.presets import PRESETS

    return PRESETS["tiny"].config(100)


def test_shifted_benchmark_names_what_each_false_reject_was_called(varied, dataset, teacher, tmp_path):
    from benchmarks.shifted import main as shifted_benchmark

    shifted_benchmark(["--model", f"tiny={teacher}", "--test-data", str(dataset), "--shifted-data", str(varied),
                       "--out", str(tmp_path), "--stem", "quick"])
    summary = json.loads((tmp_path / "quick.json").read_text())
    (row,) = summary["models"]
    for split in ("test", "test_shifted"):
        figures = row[split]
        named = figures["false_rejects_by_violation"]
        assert sum(named.values()) == round(figures["false_reject_rate"] * figures["clean_ads"])
        assert set(named) <= set(AuditModelConfig.load(teacher).tasks["violation"])
    assert row["goal_met"] == (row["gap_points"] <= 3 and row["test_shifted"]["false_reject_rate"] <= 0.05)
    assert "Clean ads rejected, by the violation the model names" in (tmp_path / "quick.md").read_text()


def test_false_reject_sources_pair_each_clean_shifted_ad_with_a_clean_test_ad(varied, teacher, tmp_path):
    from benchmarks.false_rejects import COMBINATIONS, clean_pairs, main as false_rejects

    shifted, test = clean_pairs(varied, seed=0)
    assert shifted and len(shifted) == len(test)
    shifted_ids, test_ids = ({r.id for r in read_split(varied, split)} for split in ("test_shifted", "test"))
    assert all(s.labels["industry"] == t.labels["industry"] and s.id in shifted_ids and t.id in test_ids
               and s.labels["violation"] == t.labels["violation"] == "none" for s, t in zip(shifted, test))
    false_rejects(["--model", f"tiny={teacher}", "--data", str(varied), "--out", str(tmp_path)])
    (row,) = json.loads((tmp_path / "false-rejects.json").read_text())["models"]
    assert list(row["combinations"]) == list(COMBINATIONS)
    for figures in row["combinations"].values():
        assert figures["rejected"] == round(figures["false_reject_rate"] * len(shifted))
        assert sum(figures["by_violation"].values()) == figures["rejected"]
