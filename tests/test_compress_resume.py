"""Resumable compression and the teacher's outputs on disk (issue 26, items 4 and 5), on the tiny teacher.

A `compress` killed with SIGKILL in the middle of the widths stage and started again gives the student an
uninterrupted run gives, tensor for tensor (CPU, fixed seeds: the checkpoint holds the random states); a second
`compress` of the same teacher and data runs the teacher on nothing; outputs of another teacher are computed again;
a full disk while writing them is one error line and leaves no file.
"""

import errno
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from adaudit.cli import app
from adaudit.compression import augmentation, pipeline
from adaudit.compression.checkpoints import Checkpoints, working_folder
from adaudit.compression.pipeline import REPORT_FILE, compress
from adaudit.compression.teacher_outputs import CompressionStorageError, TeacherOutputs
from adaudit.core import files

from conftest import WIDTHS, kill_inside_widths, quiet

RECIPE = """\
distillation: {samples: 96, batch_size: 16, learning_rate: 0.002, views: 1, validation_samples: 16}
vocabulary: {characters: common}
calibration_samples: 32
stages:
  - {kind: blocks, keep: {vision: 2, qformer: 1, text: 2}, per_step: 1, epochs_per_step: 1}
  - {kind: widths, heads: {vision: 2, text: 3}, ffn: {vision: 64, qformer: 48, text: 32}, cross_attention_heads: 2,
     soft_steps: 1, epochs_per_step: 2, epochs_after_cut: 1}
  - {kind: hidden, size: {vision: 48, qformer: 40, text: 32}, steps: 1, epochs_per_step: 1}
final_epochs: 1
latency_rounds: 1
"""
QUICK = """\
distillation: {samples: 96, batch_size: 16, views: 1, validation_samples: 16}
vocabulary: {prune: false}
calibration_samples: 32
stages:
  - {kind: blocks, keep: {text: 2}, epochs_per_step: 0}
final_epochs: 0
latency_rounds: 1
"""


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    path = tmp_path_factory.mktemp("recipe") / "resume.yaml"
    path.write_text(RECIPE)
    return path


def command(teacher, dataset, out, recipe) -> list[str]:
    return [sys.executable, "-m", "adaudit.cli", "compress", "--teacher", str(teacher), "--data", str(dataset),
            "--out", str(out), "--recipe", str(recipe), "--device", "cpu"]


@pytest.fixture(scope="module")
def uninterrupted(own_teacher, dataset, recipe, tmp_path_factory):
    """One whole run (the first of this teacher: it computes the teacher's outputs)."""
    out = tmp_path_factory.mktemp("whole") / "student"
    done = subprocess.run(command(own_teacher, dataset, out, recipe), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    return out, json.loads((out / REPORT_FILE).read_text())


def test_a_compress_killed_inside_the_widths_stage_resumes_to_the_same_student(own_teacher, dataset, recipe,
                                                                               uninterrupted, tmp_path):
    whole, _ = uninterrupted
    out = tmp_path / "student"
    arguments = command(own_teacher, dataset, out, recipe)
    progress = kill_inside_widths(arguments)
    assert not out.exists()  # killed: no student, only the working folder
    assert (working_folder(out) / "checkpoint" / "trainer_state.json").is_file()  # inside a distillation

    again = subprocess.run(arguments, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming from the checkpoint" in again.stderr and "in the widths stage" in again.stderr
    report = json.loads((out / REPORT_FILE).read_text())
    assert report["resumed"] == WIDTHS
    assert [entry["name"] for entry in report["stages"]] == ["vocabulary", "blocks", "widths", "hidden", "final"]
    assert report["stages"][:WIDTHS] == progress["entries"]  # the stages done before the kill, not run again
    assert not working_folder(out).exists()  # removed once the student is written

    resumed, expected = load_file(str(out / "model.safetensors")), load_file(str(whole / "model.safetensors"))
    assert resumed.keys() == expected.keys()
    different = [name for name in expected if not torch.equal(resumed[name], expected[name])]
    assert not different, f"{len(different)} tensors differ from the uninterrupted run's, e.g. {different[:3]}"


def test_a_second_compress_reads_the_teachers_outputs_instead_of_running_it(own_teacher, dataset, uninterrupted,
                                                                            tmp_path, monkeypatch):
    _, first = uninterrupted
    assert first["teacher_outputs"]["parts"] == {"ads": "computed", "test": "computed", "views": "computed"}

    def teacher_ran(*args, **kwargs):
        raise AssertionError("the teacher ran although its outputs were on disk")

    monkeypatch.setattr(pipeline, "cache_teacher", teacher_ran)
    monkeypatch.setattr(pipeline, "predict_logits", teacher_ran)
    monkeypatch.setattr(augmentation, "cache_teacher", teacher_ran)
    quick = tmp_path / "quick.yaml"
    quick.write_text(QUICK)  # another recipe with the same draw of ads and views
    messages = []
    report = compress(own_teacher, dataset, tmp_path / "student", quick, log=messages.append, device="cpu")
    assert report["teacher_outputs"]["reused"]
    assert report["teacher"]["accuracy"] == first["teacher"]["accuracy"]
    assert any("reusing views" in message for message in messages)


def test_outputs_of_another_teacher_or_data_set_are_computed_again(tmp_path):
    computed = []

    def compute(value):
        def run(share):
            assert share == slice(None)  # no rows given: the whole part, computed by rank 0
            computed.append(value)
            return {"pooled": torch.full((4, 2), value)}, {"value": value}
        return run

    messages = []
    first = TeacherOutputs(tmp_path, "teacher-a", {"train": "data-1"}, messages.append)
    assert first.get("ads", {"seed": 0}, compute(1.0))[1] == {"value": 1.0}
    assert TeacherOutputs(tmp_path, "teacher-a", {"train": "data-1"}, quiet).get("ads", {"seed": 0}, compute(9.0))[1] \
        == {"value": 1.0}  # the same key: read back
    retrained = TeacherOutputs(tmp_path, "teacher-b", {"train": "data-1"}, messages.append)
    tensors, _ = retrained.get("ads", {"seed": 0}, compute(2.0))  # same file name, another teacher in its key
    assert torch.equal(tensors["pooled"], torch.full((4, 2), 2.0))
    remade = TeacherOutputs(tmp_path, "teacher-b", {"train": "data-2"}, messages.append)
    remade.get("ads", {"seed": 0}, compute(3.0))
    assert computed == [1.0, 2.0, 3.0]
    assert any("another teacher" in message for message in messages)
    assert any("another data set" in message for message in messages)


class FullDisk:
    """A file that takes half of what is written and then reports a full disk."""

    def __init__(self, stream):
        self.stream = stream

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stream.close()

    def write(self, data):
        self.stream.write(data[:len(data) // 2])
        self.stream.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_while_writing_the_teachers_outputs_is_one_error_line_and_leaves_no_shard(
        own_teacher, dataset, tmp_path, monkeypatch):
    teacher = tmp_path / "teacher"
    shutil.copytree(own_teacher, teacher)
    real = os.fdopen
    monkeypatch.setattr(files.os, "fdopen", lambda fd, mode="r", *a, **k: FullDisk(real(fd, mode, *a, **k)))
    quick = tmp_path / "quick.yaml"
    quick.write_text(QUICK)
    result = CliRunner().invoke(app, ["compress", "--teacher", str(teacher), "--data", str(dataset),
                                      "--out", str(tmp_path / "student"), "--recipe", str(quick), "--device", "cpu"])
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "No space left on device" in errors[0], result.output[-2000:]
    outputs = tmp_path / "teacher.outputs"
    assert list(outputs.iterdir()) == []  # neither the shard nor its temporary file
    with pytest.raises(CompressionStorageError):
        TeacherOutputs(outputs, "t", {}, quiet).get("ads", {}, lambda share: ({"pooled": torch.zeros(2, 2)}, {}))


def test_a_checkpoint_of_another_recipe_is_not_resumed(tmp_path):
    out = tmp_path / "student"
    messages = []
    Checkpoints(out, {"teacher": "a", "recipe": {"final_epochs": 2}}, quiet).save({"stage": 1}, None, {})
    assert Checkpoints(out, {"teacher": "a", "recipe": {"final_epochs": 2}}, quiet).load().progress["stage"] == 1
    assert Checkpoints(out, {"teacher": "a", "recipe": {"final_epochs": 3}}, messages.append).load() is None
    assert "of another recipe: not resumed" in messages[0]
    assert not working_folder(out).exists()  # a fresh run starts from nothing
