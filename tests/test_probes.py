"""The issue-28 probes in benchmarks/: what they compute, on inputs whose answer is known."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from adaudit.data.encoding import EncodedSplit
from benchmarks.picture_pairs import pairs
from benchmarks.validation_size import measure


def test_a_fit_on_separable_scores_automates_every_test_ad_at_full_precision():
    generator = np.random.default_rng(0)
    truth = generator.random(400) < 0.5
    scores = np.where(truth, 0.9 + 0.1 * generator.random(400), 0.1 * generator.random(400))
    test_truth = generator.random(200) < 0.5
    test_scores = np.where(test_truth, 0.95, 0.05)
    row = measure(scores, truth, test_scores, test_truth, size=100, draws=3, target=0.99, seed=0)
    assert row["draws"] == 3 and row["automation_rate_mean"] == 1.0
    assert row["fits_reaching_target_on_test"] == 3


def test_a_fit_whose_passes_hold_a_violation_is_counted_as_missing_the_target():
    truth = np.array([True] * 50 + [False] * 50)
    scores = np.concatenate([np.full(50, 0.95), np.linspace(0.0, 0.1, 50)])
    test_truth = np.array([True] * 10 + [False] * 10)
    test_scores = np.concatenate([np.full(9, 0.95), [0.0], np.full(10, 0.01)])  # one violation scored clean
    row = measure(scores, truth, test_scores, test_truth, size=100, draws=2, target=0.99, seed=0)
    assert row["draws"] == 1  # the whole pool: one fit
    assert row["pass_precision_mean"] < 0.99 and row["fits_reaching_target_on_test"] == 0


def test_each_pair_puts_a_picture_under_clean_copy_of_its_industry_with_the_pictures_labels():
    count = 6
    labels = torch.tensor([[1, 0], [1, 1], [0, 0], [0, 1], [0, 0], [0, 1]])  # (violation, industry)
    split = EncodedSplit([f"ad-{i}" for i in range(count)], torch.arange(count, dtype=torch.uint8).view(count, 1, 1, 1),
                         torch.arange(count).view(count, 1) + 100, torch.ones(count, 1, dtype=torch.long), labels,
                         ["violation", "industry"])
    made = pairs(split, torch.tensor([0, 1]), torch.tensor([2, 3, 4, 5]), labels[:, 1], 40)
    assert len(made) == 40
    for ad, picture, copy, row in zip(made.ids, made.image_bytes, made.input_ids, made.labels):
        copy_ad, picture_ad = (int(part.split("-")[1]) for part in ad.split("~"))
        assert int(picture.flatten()[0]) == picture_ad and int(copy[0]) == copy_ad + 100
        assert picture_ad in (0, 1) and copy_ad in (2, 3, 4, 5)
        assert labels[copy_ad, 1] == labels[picture_ad, 1] and row.tolist() == labels[picture_ad].tolist()


def test_joined_training_ads_keep_the_benchmarks_validation_and_test_splits(dataset, tmp_path):
    from adaudit.data.dataset import read_split
    from benchmarks.more_ads import join, prefix

    out = tmp_path / "joined"
    made = join(dataset, [dataset, dataset], out)  # the same ads thrice: the prefixes must keep every id apart
    train = read_split(out, "train")  # every picture link resolves, every row validates
    own = read_split(dataset, "train")
    assert made["joined_train"] == len(train) == 3 * len(own)
    assert len({record.id for record in train}) == len(train)
    for number in (1, 2):
        assert sum(record.id.startswith(prefix(number)) for record in train) == len(own)
    assert [r.labels for r in train[len(own):]] == [r.labels for r in own] * 2
    for split in ("validation", "test"):
        assert (out / f"{split}.jsonl").read_bytes() == (dataset / f"{split}.jsonl").read_bytes()
        assert len(read_split(out, split, require_all_tasks=False)) == len(read_split(dataset, split, False))
    assert json.loads((out / "joined.json").read_text())["extra_train"] == [len(own), len(own)]


def test_extra_held_out_ads_join_the_validation_split_and_never_the_test_split(dataset, tmp_path):
    from adaudit.data.dataset import read_split
    from benchmarks.more_ads import join, prefix

    out = tmp_path / "joined"
    made = join(dataset, [dataset], out, extra_validation=("validation", "test"))
    validation = read_split(out, "validation", require_all_tasks=False)
    own = {split: read_split(dataset, split, require_all_tasks=False) for split in ("validation", "test")}
    assert len(validation) == made["validation"] + made["extra_validation"]["ads"] \
        == len(own["validation"]) * 2 + len(own["test"])
    assert [r.id for r in validation[:len(own["validation"])]] == [r.id for r in own["validation"]]
    assert {r.id for r in validation[len(own["validation"]):]} == \
        {prefix(1) + r.id for split in own.values() for r in split}
    assert (out / "test.jsonl").read_bytes() == (dataset / "test.jsonl").read_bytes()


def test_an_extra_data_set_with_another_taxonomy_is_refused_and_nothing_is_written(dataset, tmp_path):
    from adaudit.data.dataset import DatasetError
    from benchmarks.more_ads import join
    from test_taxonomy import relabelled

    other = relabelled(Path(shutil.copytree(dataset, tmp_path / "other")))
    with pytest.raises(DatasetError, match="another taxonomy"):
        join(dataset, [dataset, other], tmp_path / "joined")
    assert not (tmp_path / "joined").exists()


def test_the_report_scores_each_model_on_the_base_splits(teacher, dataset, tmp_path, monkeypatch):
    import sys

    from benchmarks.more_ads import main

    monkeypatch.setattr(sys, "argv", ["more_ads", "report", "--model", f"tiny={teacher}", "--data", str(dataset),
                                      "--out", str(tmp_path), "--stem", "more"])
    main()
    row = json.loads((tmp_path / "more.json").read_text())["models"]["tiny"]
    assert row["training_ads"] == json.loads((teacher / "metrics.json").read_text())["train_samples"]
    assert row["clean_ads"] + row["violations"] == row["decisions"]["ads"]
    assert row["validation_ads"] == len((dataset / "validation.jsonl").read_text().splitlines())
    assert 0 <= row["violations_surely_clean"] <= row["violations"]
    assert 0 <= row["clean_ads_surely_clean"] <= row["clean_ads"]
    assert 0 <= row["decisions"]["automation_rate"] <= 1 and 0 <= row["automation_ceiling"] <= 1
    assert 0 <= row["validation_automation"] <= 1
    assert "| tiny |" in (tmp_path / "more.md").read_text()


def test_the_risk_tails_report_reads_every_model(teacher, dataset, tmp_path, monkeypatch):
    import sys

    from benchmarks.risk_tails import main

    monkeypatch.setattr(sys, "argv", ["risk_tails", "--model", f"tiny={teacher}", "--validation", str(dataset),
                                      "--test", str(dataset), "--out", str(tmp_path)])
    main()
    model = json.loads((tmp_path / "risk-tails.json").read_text())["models"]["tiny"]
    assert model["tails"]["ads"] == len((dataset / "validation.jsonl").read_text().splitlines())
    assert all(p["violations"] <= p["passed"] for p in model["tails"]["passes"])
    assert set(model["readings"]) >= {"riskiest class (the policy's rule)", "per-class thresholds"}
    assert "## tiny" in (tmp_path / "risk-tails.md").read_text()


def test_the_report_refuses_a_data_set_without_a_validation_split(teacher, dataset, tmp_path, monkeypatch):
    import sys

    from benchmarks.more_ads import main

    bare = Path(shutil.copytree(dataset, tmp_path / "bare"))
    (bare / "validation.jsonl").unlink()
    monkeypatch.setattr(sys, "argv", ["more_ads", "report", "--model", f"tiny={teacher}", "--data", str(bare),
                                      "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="validation"):
        main()
    assert not (tmp_path / "more-ads.json").exists()
