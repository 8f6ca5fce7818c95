"""benchmarks/cold_path.py on the tiny student: the gateway's own steps are timed in every condition
and written atomically; the figures themselves are the benchmark's business, not asserted here."""

import json

import pytest
import torch

from benchmarks.cold_path import CONDITIONS, main, run


def test_every_condition_and_step_is_timed(student, dataset, tmp_path):
    folder, _ = student
    threads = torch.get_num_threads()
    summary = run(folder, dataset, tmp_path, ads=8, rounds=2, per_round=3, gap_ms=1.0)
    assert set(summary["p50_ms"]) == set(CONDITIONS)
    for figures in summary["p50_ms"].values():
        assert set(figures) == {"decode", "encode", "log write", "all three"}
        assert all(value > 0 for value in figures.values())
        assert figures["all three"] == pytest.approx(figures["decode"] + figures["encode"] + figures["log write"])
    written = json.loads((tmp_path / "cold_path.json").read_text())
    assert written["p50_ms"] == summary["p50_ms"] and written["per_round"] == 3
    assert "| after idle |" in (tmp_path / "cold_path.md").read_text()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["cold_path.json", "cold_path.md"]  # no leftovers
    assert torch.get_num_threads() == threads  # the benchmark's one thread does not leak into the process


def test_a_folder_that_is_not_a_model_is_one_readable_line(dataset, tmp_path):
    with pytest.raises(SystemExit) as stopped:
        main(["--student", str(tmp_path), "--data", str(dataset), "--out", str(tmp_path / "out")])
    assert str(stopped.value).startswith("error:") and "config.json" in str(stopped.value)
    assert not (tmp_path / "out").exists()
