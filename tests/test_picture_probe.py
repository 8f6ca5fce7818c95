"""benchmarks/picture_probe.py on the tiny teacher: a probe per depth, scored on the test split and
written atomically; a text task is refused with one readable line."""

import json

import pytest

from benchmarks.picture_probe import DEPTHS, run


def test_every_depth_is_probed_and_written(teacher, dataset, tmp_path):
    summary = run(teacher, dataset, tmp_path, "logo", train_ads=60)
    assert set(summary["probe_accuracy"]) == set(DEPTHS) and summary["train_ads"] == 60
    assert all(0.0 <= value <= 1.0 for value in summary["probe_accuracy"].values())
    stem = f"picture_probe-logo-{teacher.name}"
    assert json.loads((tmp_path / f"{stem}.json").read_text())["probe_accuracy"] == summary["probe_accuracy"]
    assert sorted(path.name for path in tmp_path.iterdir()) == [f"{stem}.json", f"{stem}.md"]


def test_a_text_task_is_refused(teacher, dataset, tmp_path):
    with pytest.raises(SystemExit) as stopped:
        run(teacher, dataset, tmp_path, "violation", train_ads=20)
    assert str(stopped.value).startswith("error: violation is not a picture task")
    assert not list(tmp_path.iterdir())
