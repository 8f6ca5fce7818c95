"""torchrun through the real CLI (training/distributed.py): 2 gloo ranks train the tiny teacher as 1 rank
does at the same global batch; a world size that does not divide the batch and a rank that dies are one
error line each, with nothing written.

Tolerance. The DistributedSampler deals rank r the ads r, r+2, ... of the permutation the single process
draws, so each step's two half-batches are exactly the single process's batch, and DDP averages the two
halves' gradients: the same step. What still differs is the model's dropout (the Q-Former's and the text
tower's, and the one on the pooled features), whose masks each rank draws from its own generator, and bfloat16
rounding. FSDP2 (`--fsdp`) computes the same step with the weights sharded, so the same floor holds for it. So 2 ranks must land as close to
1 rank as one more single-process run whose dropout masks alone differ (measured here: the noise floor).
On this data (2 epochs) that floor is about 0.6 of the distance training moves the weights and 0.03 of
the loss; a broken split (both ranks on the same ads, the batch doubled, gradients not averaged) is not
within it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adaudit.training import teacher as teacher_module
from conftest import quiet

ADAUDIT = [sys.executable, "-m", "adaudit"]
EPOCHS = 2
SINGLE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # as torchrun sets it per rank: 2 cores, no oversubscription


def train(dataset: Path, out: Path, *extra) -> subprocess.CompletedProcess:
    return subprocess.run([*ADAUDIT, "teacher", "train", "--data", str(dataset), "--out", str(out), "--preset",
                           "tiny", "--epochs", str(EPOCHS), *map(str, extra)],
                          capture_output=True, text=True, timeout=240, env=SINGLE_THREAD)


def weights_distance(a: Path, b: dict, start: dict) -> float:
    """|a - b| over |a - start|: how far apart two runs end, against how far training moved the weights."""
    a = load_file(str(a / "model.safetensors"))
    apart = sum(((a[k] - b[k]) ** 2).sum() for k in a) ** 0.5
    moved = sum(((a[k] - start[k]) ** 2).sum() for k in a) ** 0.5
    return float(apart / moved)


def single_process_run(dataset: Path, out: Path, dropout_seed: int | None = None) -> dict:
    """1 rank, in this process, on one thread as each rank runs; with `dropout_seed`, the generator is
    reseeded after the weights are drawn, so only the dropout masks differ (the noise floor)."""
    new_teacher = teacher_module.new_teacher

    def reseeded(name, taxonomy):
        model = new_teacher(name, taxonomy)
        torch.manual_seed(dropout_seed)
        return model
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as patch:
            if dropout_seed is not None:
                patch.setattr(teacher_module, "new_teacher", reseeded)
            return teacher_module.train_teacher(dataset, out, "tiny", epochs=EPOCHS, log=quiet, device="cpu")
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def single_process(dataset, tmp_path_factory) -> dict:
    """The 1-rank run every multi-rank run is compared with, and the noise floor beside it (one dropout seed
    apart), trained once for this module: folders and metrics by name, with the weights training started
    from."""
    work = tmp_path_factory.mktemp("single-process")
    runs = {"one": single_process_run(dataset, work / "one"),
            "floor": single_process_run(dataset, work / "floor", dropout_seed=12345)}
    torch.manual_seed(0)
    return {"metrics": runs, "folders": {name: work / name for name in runs},
            "start": teacher_module.new_teacher("tiny").state_dict()}


def test_two_gloo_ranks_train_as_one_rank_does(dataset, tmp_path, single_process):
    assert sum(1 for _ in open(dataset / "train.jsonl")) % 2 == 0  # no ad repeated to even out the ranks
    two = train(dataset, tmp_path / "two", "--nproc-per-node", 2)
    assert two.returncode == 0, two.stderr
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics["distributed"] == {"world_size": 2, "backend": "gloo", "device": "cpu"}
    assert two.stderr.count("teacher written to") == 1  # rank 0 alone logs
    assert two.stderr.count("training ads + 0 recombined") == 1
    assert not (tmp_path / "two.checkpoint").exists()

    one, floor = single_process["metrics"]["one"], single_process["metrics"]["floor"]
    assert one["distributed"] == {"world_size": 1, "backend": None, "device": "cpu"}
    start, folders = single_process["start"], single_process["folders"]
    reference = load_file(str(folders["one"] / "model.safetensors"))
    apart_ranks = weights_distance(tmp_path / "two", reference, start)
    apart_dropout = weights_distance(folders["floor"], reference, start)
    losses = {"one": one["train_loss"], "two": metrics["train_loss"], "floor": floor["train_loss"]}
    print(f"weights apart / moved: 2 ranks {apart_ranks:.3f}, dropout alone {apart_dropout:.3f}; losses {losses}")
    assert apart_ranks < 1.3 * apart_dropout, (apart_ranks, apart_dropout)
    for epoch in range(EPOCHS):
        noise = abs(losses["floor"][epoch] - losses["one"][epoch])
        assert abs(losses["two"][epoch] - losses["one"][epoch]) < max(2 * noise, 0.02 * losses["one"][epoch]), losses
    assert losses["two"][-1] < losses["two"][0]  # and it learned


def test_a_world_size_that_does_not_divide_the_global_batch_is_one_error_line(tmp_path):
    result = train(tmp_path / "no-data", tmp_path / "t", "--nproc-per-node", 3)  # tiny's global batch: 32
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: a world size of 3 does not divide the global batch of 32")
    assert not (tmp_path / "t").exists()


def rank_process(marker: str, rank: int, timeout: float = 60) -> int:
    """The pid of the worker torchrun started as `rank` for the run whose environment carries `marker`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            try:
                environment = (entry / "environ").read_bytes().split(b"\0")
            except (OSError, ValueError):
                continue
            if f"ADAUDIT_TEST_RUN={marker}".encode() in environment and f"RANK={rank}".encode() in environment:
                return int(entry.name)
        time.sleep(0.05)
    raise AssertionError(f"rank {rank} never started")


def test_a_rank_that_dies_stops_the_run_with_one_line_naming_it(dataset, tmp_path):
    marker = uuid.uuid4().hex
    command = [*ADAUDIT, "teacher", "train", "--data", str(dataset), "--out", str(tmp_path / "t"), "--preset",
               "tiny", "--epochs", "50", "--nproc-per-node", "2"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                               env={**SINGLE_THREAD, "ADAUDIT_TEST_RUN": marker})
    try:
        os.kill(rank_process(marker, 1), signal.SIGKILL)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 1
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: rank 1 of 2 was killed by SIGKILL"), stderr
    assert not (tmp_path / "t").exists()  # nothing half-written (a checkpoint is whole or absent)


def test_fsdp_ranks_train_as_ddp_ranks_do_and_their_checkpoint_resumes(dataset, tmp_path, single_process):
    """2 FSDP2 ranks land as close to 1 rank as the dropout noise floor allows; the checkpoint they gather to rank 0
    is a single process's, and 2 FSDP ranks resume from it after a rank is killed."""
    sharded = train(dataset, tmp_path / "fsdp", "--nproc-per-node", 2, "--fsdp", "--gradient-checkpointing", "vision,text")
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    metrics = json.loads((tmp_path / "fsdp" / "metrics.json").read_text())
    assert metrics["distributed"] == {"world_size": 2, "backend": "gloo", "device": "cpu", "fsdp": True}
    assert "2 ranks (gloo, FSDP2); gradient checkpointing in vision, text" in sharded.stderr
    one = single_process["metrics"]["one"]
    start, folders = single_process["start"], single_process["folders"]
    reference = load_file(str(folders["one"] / "model.safetensors"))
    apart_fsdp = weights_distance(tmp_path / "fsdp", reference, start)
    apart_dropout = weights_distance(folders["floor"], reference, start)
    print(f"weights apart / moved: FSDP {apart_fsdp:.3f}, dropout alone {apart_dropout:.3f}; "
          f"losses {one['train_loss']} {metrics['train_loss']}")
    assert apart_fsdp < 1.3 * apart_dropout, (apart_fsdp, apart_dropout)

    out, marker = tmp_path / "resumed", uuid.uuid4().hex
    command = [*ADAUDIT, "teacher", "train", "--data", str(dataset), "--out", str(out), "--preset", "tiny",
               "--epochs", "3", "--nproc-per-node", "2", "--fsdp"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                               env={**SINGLE_THREAD, "ADAUDIT_TEST_RUN": marker})
    try:
        victim = rank_process(marker, 1)
        checkpoint = out.with_name(out.name + ".checkpoint")
        deadline = time.monotonic() + 120
        while not checkpoint.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(victim, signal.SIGKILL)  # after the first epoch's checkpoint, long before the third epoch ends
        process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 1 and not out.exists()
    saved = json.loads((checkpoint / "trainer_state.json").read_text())
    assert isinstance(saved["param_groups"][0]["params"][0], int)  # numbered as one process numbers them
    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=240, env=SINGLE_THREAD)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr and "after epoch 1" in resumed.stderr
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 3


def test_gradient_checkpointing_gives_the_gradients_of_a_plain_backward(dataset):
    from adaudit.data.encoding import encode_split
    from adaudit.models.modeling import BLOCK_ANATOMY
    from adaudit.models.preprocessing import AuditProcessor
    from adaudit.training.loop import label_loss

    torch.manual_seed(0)
    model = teacher_module.new_teacher("tiny")
    split = encode_split(dataset, "train", AuditProcessor(model.config, model.tokenizer), model.config.tasks)
    index = torch.arange(8)

    def gradients() -> dict[str, torch.Tensor]:
        model.zero_grad()
        model.train()
        torch.manual_seed(1)  # the same dropout masks in both runs (checkpointing replays them in its recompute)
        label_loss(model, split, index).backward()
        return {name: parameter.grad.clone() for name, parameter in model.named_parameters() if parameter.grad is not None}

    runs = []
    model.blocks("text")[0].get_submodule(BLOCK_ANATOMY["text"].ffn_input).register_forward_hook(
        lambda *args: runs.append(1))
    plain = gradients()
    assert len(runs) == 1
    model.checkpoint_gradients(("vision", "qformer", "text"))
    checkpointed = gradients()
    assert len(runs) == 3  # forward, then again in backward: its activations were not kept
    assert plain.keys() == checkpointed.keys()
    for name, gradient in plain.items():
        assert torch.allclose(gradient, checkpointed[name], atol=1e-6, rtol=1e-4), name


def test_gradient_checkpointing_of_an_unknown_tower_is_one_error_line(tmp_path):
    result = train(tmp_path / "no-data", tmp_path / "t", "--gradient-checkpointing", "vision,decoder")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0] == "error: gradient checkpointing names no tower decoder: choose among vision, qformer, text"
    assert not (tmp_path / "t").exists()
