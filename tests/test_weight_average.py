"""The teacher's weight average (training/averaging.py): the average written as the teacher, the last step's
weights beside it, the average kept through a checkpoint."""

import json

import pytest
import torch
from safetensors.torch import load_file

from adaudit.models.modeling import AuditModel
from adaudit.training.averaging import UNAVERAGED_FOLDER, WeightAverage
from adaudit.training.loop import AVERAGE_TENSORS
from adaudit.training.teacher import checkpoint_folder, train_teacher

from conftest import quiet, train_until_first_checkpoint


def test_the_average_moves_by_its_decay():
    model = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    average = WeightAverage(0.75)
    average.follow(model)  # starts from the model's weights: zero
    with torch.no_grad():
        model.weight.fill_(4.0)
    average.update(model)
    average.update(model)
    copy = torch.nn.Linear(2, 1, bias=False)
    average.copy_into(copy)
    # the first update takes the weights as they are, the next moves a quarter of the way: 4 then 4
    assert copy.weight.tolist() == [[4.0, 4.0]]
    with torch.no_grad():
        model.weight.fill_(0.0)
    average.update(model)
    average.copy_into(copy)
    assert copy.weight.tolist() == [[3.0, 3.0]]  # 0.75 * 4 + 0.25 * 0
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(1.0)


def test_teacher_written_as_its_weight_average_with_the_last_step_beside_it(dataset, tmp_path):
    out = tmp_path / "teacher"
    metrics = train_teacher(dataset, out, "tiny", epochs=2, limit=64, weight_average=0.9, log=quiet)
    assert metrics["weight_average"] == 0.9
    assert set(metrics["unaveraged"]) >= {"test"} and 0 <= metrics["unaveraged"]["test"]["accuracy"] <= 1
    averaged, last = AuditModel.from_pretrained(out), AuditModel.from_pretrained(out / UNAVERAGED_FOLDER)
    assert not torch.equal(averaged.state_dict()["heads.verdict.weight"], last.state_dict()["heads.verdict.weight"])
    with pytest.raises(ValueError, match="weight_average"):
        train_teacher(dataset, tmp_path / "bad", "tiny", epochs=1, limit=16, weight_average=1.5, log=quiet)


def test_the_average_survives_an_interruption(dataset, tmp_path, monkeypatch):
    out = tmp_path / "teacher"
    train_until_first_checkpoint(dataset, out, monkeypatch, epochs=2, limit=64, weight_average=0.9)
    saved = load_file(str(checkpoint_folder(out) / AVERAGE_TENSORS))
    assert saved["n_averaged"].item() == 2  # 64 ads in batches of 32: two steps averaged
    messages = []
    train_teacher(dataset, out, "tiny", epochs=2, limit=64, weight_average=0.9, resume=True, log=messages.append)
    assert not any("holds no weight average" in message for message in messages)
    assert json.loads((out / "metrics.json").read_text())["weight_average"] == 0.9
