"""`--device` (training/device.py): refused through the real CLI on this CUDA-less machine, one line and
exit 1, before any work; and the rules a GPU run relies on, checked where they can be on a CPU."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from adaudit.cli import app
from adaudit.training.device import (DeviceError, Placement, autocast_dtype, bfloat16_supported, resolve_device,
                                     to_device)

ADAUDIT = [sys.executable, "-m", "adaudit"]  # adaudit/__main__.py, what torchrun starts on every rank


def adaudit(*args, **kwargs):
    return subprocess.run([*ADAUDIT, *map(str, args)], capture_output=True, text=True, timeout=120, **kwargs)


def in_process(*args) -> subprocess.CompletedProcess:
    """The CLI run by typer's CliRunner, its outcome in a subprocess's terms."""
    result = CliRunner().invoke(app, list(map(str, args)))
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_cuda_without_cuda_is_one_error_line_before_any_work(tmp_path):
    """teacher train, compress and eval refuse first: the folders given do not even exist. teacher train runs as
    torchrun starts it (`python -m adaudit`, its whole stderr one line); compress and eval, which go through the
    same refusal, in this process (typer's CliRunner), to spare two interpreter starts."""
    data, model = tmp_path / "no-data", tmp_path / "no-model"
    trained = adaudit("teacher", "train", "--data", data, "--out", tmp_path / "t", "--preset", "tiny", "--device", "cuda")
    assert "--device cuda: this machine has no CUDA" in one_error_line(trained)
    compressed = in_process("compress", "--teacher", model, "--data", data, "--out", tmp_path / "s", "--device", "cuda:3")
    assert "--device cuda:3: this machine has no CUDA" in one_error_line(compressed)
    assert "no CUDA" in one_error_line(in_process("eval", "--model", model, "--data", data, "--device", "cuda:0"))
    assert sorted(tmp_path.iterdir()) == []  # nothing written, not even a checkpoint folder


def test_an_unknown_device_names_the_choices():
    with pytest.raises(DeviceError, match="cpu, cuda, or cuda:N, not 'tpu'"):
        resolve_device("tpu")
    with pytest.raises(DeviceError, match="no CUDA"):
        resolve_device("cuda", local_rank=1)


def test_auto_is_the_cpu_here_and_cpu_autocast_follows_native_bfloat16():
    assert resolve_device("auto") == torch.device("cpu") == resolve_device(" CPU ")
    expected = torch.bfloat16 if bfloat16_supported() else None
    assert autocast_dtype(torch.device("cpu")) == expected == Placement.on("cpu").dtype
    assert Placement.on("cpu", bfloat16=False).dtype is None  # a schedule's bfloat16=False: float32
    assert not Placement.on("cpu").grad_scaler().is_enabled()  # loss scaling is for float16 alone


def test_tensors_inside_outputs_are_moved_and_the_rest_left_alone():
    @torch.no_grad()
    def nested():
        return {"a": [torch.ones(2), (torch.zeros(1), "text")], "b": 3}
    moved = to_device(nested(), torch.device("meta"))  # a device that is not the CPU, present on every machine
    assert moved["a"][0].device.type == "meta" and moved["a"][1][0].device.type == "meta"
    assert moved["a"][1][1] == "text" and moved["b"] == 3


def test_the_placed_model_evaluates_as_before(teacher, dataset):
    """Placing on the CPU changes nothing: no hook, the same predictions (the path every command takes)."""
    from adaudit.data.encoding import encode_split
    from adaudit.models.modeling import AuditModel
    from adaudit.models.preprocessing import AuditProcessor
    from adaudit.training.evaluation import predict_logits

    model = AuditModel.from_pretrained(teacher)
    split = encode_split(dataset, "test", AuditProcessor.from_folder(model.config, teacher), model.config.tasks)
    before = predict_logits(model, split)
    placed = Placement.on("cpu").place(model)
    assert placed is model and not placed._forward_pre_hooks
    after = predict_logits(placed, split)
    assert all(torch.equal(before[task], after[task]) for task in before)
