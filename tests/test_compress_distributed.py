"""`compress` under torchrun (issue 26, item 2) through the real CLI: 2 gloo ranks compress the tiny teacher as
1 rank does at the same global batch, with DDP and with FSDP2 (`--fsdp`: killed inside the widths stage and run
again, its checkpoint gathered from the shards resumes); the teacher's outputs are computed in shards, one per rank, and read back
by a run of another world size; rank 0's pruning decisions reach every rank, and ranks that hold different
models are refused; a world size that does not divide the recipe's batch is one error line.

Tolerance. Every cut is decided on rank 0 (`World.agreed`), and the DistributedSampler deals each rank its half
of the single process's batch, so what differs between 1 and 2 ranks is what differs between two single-process
runs whose dropout masks alone differ (the Q-Former's and the text tower's dropout and the one on the pooled
features draw them from each rank's own generator) plus the order of floating-point sums. That second single-process run, its dropout
reseeded, is the noise floor: after every stage, the 2-rank student's distillation loss must be as close to the
1-rank one as the floor is (or within 2% of it); a broken split (both ranks on the same ads, gradients not
averaged, a batch doubled) is not. FSDP2 computes the same steps with gradients and optimizer state sharded, and
a resumed run restores the random states its checkpoint holds, so the same floor holds for it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as multiprocessing

from adaudit.compression import pipeline
from adaudit.compression.teacher_outputs import TeacherOutputs
from adaudit.training.distributed import DistributedError, World

from adaudit.compression.checkpoints import working_folder

from conftest import WIDTHS, kill_inside_widths, quiet

ADAUDIT = [sys.executable, "-m", "adaudit"]
SINGLE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # as torchrun sets it per rank: 2 cores, no oversubscription
RECIPE = """\
distillation: {samples: 96, batch_size: 16, learning_rate: 0.002, views: 1, validation_samples: 16,
               gradient_checkpointing: [vision, text]}
vocabulary: {characters: common}
calibration_samples: 32
stages:
  - {kind: blocks, keep: {vision: 2, qformer: 1, text: 2}, per_step: 1, epochs_per_step: 1}
  - {kind: widths, heads: {vision: 2, text: 3}, ffn: {vision: 64, qformer: 48, text: 32}, cross_attention_heads: 2,
     soft_steps: 1, epochs_per_step: 2, epochs_after_cut: 1}
  - {kind: hidden, size: {vision: 48, qformer: 40, text: 32}, steps: 1, epochs_per_step: 1}
final_epochs: 2
latency_rounds: 1
"""


def compress_command(teacher, dataset, out, recipe, *extra) -> subprocess.CompletedProcess:
    return subprocess.run(compress_arguments(teacher, dataset, out, recipe, *extra), capture_output=True, text=True,
                          timeout=300, env=SINGLE_THREAD)


class ReseededTorch:
    """torch, except that `manual_seed` seeds another stream: the pipeline seeds only the dropout masks' generator
    with it (the ads' draw and the views have generators of their own), so only the dropout masks change."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def manual_seed(seed):
        return torch.manual_seed(seed + 12345)


def single_process_run(teacher, dataset, out, recipe, monkeypatch, reseeded: bool = False) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with monkeypatch.context() as patch:
            if reseeded:
                patch.setattr(pipeline, "torch", ReseededTorch())
            return pipeline.compress(teacher, dataset, out, recipe, log=quiet, device="cpu")
    finally:
        torch.set_num_threads(threads)


def stage_losses(report: dict) -> dict[str, float]:
    return {entry["name"]: entry["distillation_loss"] for entry in report["stages"] if "distillation_loss" in entry}


def compress_arguments(teacher, dataset, out, recipe, *extra) -> list[str]:
    return [*ADAUDIT, "compress", "--teacher", str(teacher), "--data", str(dataset), "--out", str(out),
            "--recipe", str(recipe), "--device", "cpu", *map(str, extra)]


def test_two_gloo_ranks_compress_as_one_rank_does_with_ddp_and_with_fsdp(own_teacher, dataset, tmp_path,
                                                                       monkeypatch):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)
    two = compress_command(own_teacher, dataset, tmp_path / "two", recipe, "--nproc-per-node", 2)
    assert two.returncode == 0, two.stderr[-3000:]
    report = json.loads((tmp_path / "two" / "report.json").read_text())
    assert report["distributed"] == {"world_size": 2, "backend": "gloo", "device": "cpu"}
    assert two.stderr.count("student written to") == 1 and two.stderr.count("stage 2: widths") == 1  # rank 0 logs
    assert not (tmp_path / "two.partial").exists()
    outputs = own_teacher.parent / "teacher.outputs"
    shards = sorted(path.name.split("-", 1)[0] + path.name.rsplit(".rank", 1)[1] for path in outputs.iterdir())
    assert shards == ["ads0-of-2.safetensors", "ads1-of-2.safetensors", "test0-of-1.safetensors",
                      "views0-of-2.safetensors", "views1-of-2.safetensors"]  # the teacher's rows split by rank

    # FSDP2: the 2 ranks killed inside the widths stage, then the same command again: its checkpoint (weights and
    # optimizer state gathered from the shards) resumes
    fsdp = compress_arguments(own_teacher, dataset, tmp_path / "fsdp", recipe, "--nproc-per-node", 2, "--fsdp")
    kill_inside_widths(fsdp, env=SINGLE_THREAD)
    assert not (tmp_path / "fsdp").exists()
    assert (working_folder(tmp_path / "fsdp") / "checkpoint" / "trainer_state.json").is_file()
    again = subprocess.run(fsdp, capture_output=True, text=True, timeout=300, env=SINGLE_THREAD)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("resuming from the checkpoint") == 1 and "in the widths stage" in again.stderr
    sharded = json.loads((tmp_path / "fsdp" / "report.json").read_text())
    assert sharded["distributed"] == {"world_size": 2, "backend": "gloo", "device": "cpu", "fsdp": True}
    assert sharded["resumed"] == WIDTHS

    one = single_process_run(own_teacher, dataset, tmp_path / "one", recipe, monkeypatch)
    assert one["teacher_outputs"]["reused"]  # the 2 ranks' shards, read by 1 rank
    assert one["distributed"]["world_size"] == 1
    floor = single_process_run(own_teacher, dataset, tmp_path / "floor", recipe, monkeypatch, reseeded=True)
    for run in (report, sharded):
        assert [entry["shape"] for entry in run["stages"]] == [entry["shape"] for entry in one["stages"]]
    losses = {"one": stage_losses(one), "two": stage_losses(report), "fsdp": stage_losses(sharded),
              "floor": stage_losses(floor)}
    print(f"distillation loss after each stage: {losses}")
    assert list(losses["two"]) == list(losses["fsdp"]) == ["blocks", "widths", "hidden", "final"]
    for stage, loss in losses["one"].items():
        noise = abs(losses["floor"][stage] - loss)
        for ranks in ("two", "fsdp"):
            assert abs(losses[ranks][stage] - loss) <= max(2 * noise, 0.02 * loss), (ranks, stage, losses)


def test_shards_of_any_world_size_are_read_as_one_part(tmp_path):
    """Two ranks' shards of a part are read back, in rank order, by a run of one rank."""
    outputs = TeacherOutputs(tmp_path, "teacher", {"train": "data"}, quiet)
    settings = {"seed": 0}
    rows = torch.arange(10, dtype=torch.float32).reshape(5, 2)
    for rank, share in enumerate((slice(0, 2), slice(2, 5))):
        outputs.write(outputs.shard("ads", settings, rank, 2), "ads", settings, {"pooled": rows[share]}, {})
    tensors, _ = outputs.get("ads", settings, lambda share: pytest.fail("computed although written"), rows=5)
    assert torch.equal(tensors["pooled"], rows)
    outputs.shard("ads", settings, 1, 2).unlink()  # a set with a shard missing is not whole
    tensors, _ = outputs.get("ads", settings, lambda share: ({"pooled": rows[share] + 1}, {}), rows=5)
    assert torch.equal(tensors["pooled"], rows + 1)


def ranks_agree(rank: int, address: str, results) -> None:
    """One of two gloo ranks: each would decide its own rank number; both get rank 0's. Then rank 1 alters its
    model, and the check of the ranks' models must refuse on both."""
    dist.init_process_group("gloo", init_method=address, rank=rank, world_size=2)
    try:
        world = World(rank=rank, world_size=2, backend="gloo")
        decided = world.agreed(lambda: {"kept": [rank, rank]})
        model = torch.nn.Linear(3, 2)
        torch.nn.init.constant_(model.weight, 1.0)
        torch.nn.init.constant_(model.bias, 0.5)  # the same model on both ranks
        world.check_same_model(model, "model")  # equal: passes
        if rank == 1:
            with torch.no_grad():
                model.weight[0, 0] += 1e-6
        try:
            world.check_same_model(model, "model")
            refused = None
        except DistributedError as error:
            refused = str(error)
        results.put((rank, decided, refused))
    finally:
        dist.destroy_process_group()


def test_every_rank_takes_rank_zeros_decisions_and_diverged_ranks_are_refused(tmp_path):
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    address = f"file://{tmp_path / 'rendezvous'}"
    processes = [context.Process(target=ranks_agree, args=(rank, address, results)) for rank in range(2)]
    for process in processes:
        process.start()
    answers = dict((rank, (decided, refused)) for rank, decided, refused in (results.get(timeout=90) for _ in processes))
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    assert answers[0][0] == answers[1][0] == {"kept": [0, 0]}
    for rank in range(2):
        assert answers[rank][1].startswith("ranks [1] hold another model than rank 0"), answers


def test_a_world_size_that_does_not_divide_the_recipes_batch_is_one_error_line(own_teacher, dataset, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)  # a global batch of 16
    result = compress_command(own_teacher, dataset, tmp_path / "s", recipe, "--nproc-per-node", 3)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: a world size of 3 does not divide the global batch of 16")
    assert not (tmp_path / "s").exists() and not (tmp_path / "s.partial").exists()
