"""The peers benchmark on the tiny teacher: every method runs end to end and its model is smaller.

One distillation epoch per method and one latency round keep it quick; the figures themselves
are the benchmark's business (benchmarks/results/peers.*), not asserted here.
"""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from adaudit.compression.distillation import cache_teacher
from adaudit.compression.recipe import load_recipe
from adaudit.data.encoding import encode_split
from adaudit.training.evaluation import evaluate
from adaudit.models.modeling import AuditModel
from adaudit.models.preprocessing import AuditProcessor
from benchmarks.peer_methods import distillation_epochs
from benchmarks.peer_pruning import UNTRACED, TaylorPruner, as_audit_model, config_from_shapes
from benchmarks.peers import run_peers

from conftest import TINY_RECIPE, quiet


@pytest.fixture(scope="module")
def peers(teacher, dataset, student, tmp_path_factory):
    folder, _ = student
    work = tmp_path_factory.mktemp("peers")
    summary = run_peers(teacher, dataset, folder, work / "no-searched-policy", work / "models", work / "results",
                        epochs=1, rounds=1, pruning_steps=3, log=quiet)
    return summary, work


def test_every_method_runs_and_the_searched_policy_is_pending(peers):
    summary, work = peers
    keys = [entry["key"] for entry in summary["entries"]]
    assert keys == ["teacher", "antgmm", "student_int8", "student_onnx_runtime", "teacher_int8", "from_scratch",
                    "torch_pruning", "layer_dropping"]
    by_key = {entry["key"]: entry for entry in summary["entries"]}
    # the same weights on ONNX Runtime: the same predictions (logits checked at export), the same FLOPs
    assert by_key["student_onnx_runtime"]["flops_per_ad"] == by_key["antgmm"]["flops_per_ad"]
    assert abs(by_key["student_onnx_runtime"]["accuracy"] - by_key["antgmm"]["accuracy"]) < 0.01
    assert summary["goals"]["onnx_runtime_latency_over_floor"] > 0
    assert [p["key"] for p in summary["pending"]] == ["searched"]
    for entry in summary["entries"]:
        assert 0 <= entry["accuracy"] <= 1 and entry["latency_ms_p50"] > 0 and entry["floor_ms"] > 0
    results = work / "results"
    assert json.loads((results / "peers.json").read_text())["epochs"] == 1
    # the peers distil on the same augmented views as the AntGMM student (the tiny recipe: one per ad)
    assert summary["augmented_views"] == summary["distillation_samples"]
    report = (results / "peers.md").read_text()
    assert "Torch-Pruning" in report
    # the physical limit: batch-32 per-ad time and the compiled student's batch-1 time, both against the floor
    compiled = summary["compiled_student"]
    assert compiled["latency_ms_p50"] > 0 and compiled["latency_over_floor"] > 0
    assert "torch.compile" in report and "per ad at batch 32" in report
    assert all(entry["batch_32_per_ad_over_floor"] > 0 for entry in summary["entries"])
    with Image.open(results / "pareto.png") as image:  # a whole PNG, not an empty or cut file
        image.verify()
        assert image.format == "PNG"
    assert summary["pareto_front"] and set(summary["pareto_front"]) <= set(keys)


def test_pruned_models_are_smaller_and_reload_with_the_measured_accuracy(peers, dataset, teacher):
    summary, _ = peers
    by_key = {entry["key"]: entry for entry in summary["entries"]}
    teacher_model = AuditModel.from_pretrained(teacher)
    for key in ("torch_pruning", "layer_dropping", "from_scratch"):
        entry = by_key[key]
        assert entry["reloadable"], entry["notes"]
        model = AuditModel.from_pretrained(Path(entry["folder"]))
        assert model.num_parameters() == entry["params"] < teacher_model.num_parameters()
        processor = AuditProcessor.from_folder(model.config, Path(entry["folder"]))
        test = encode_split(dataset, "test", processor, model.config.tasks)
        assert evaluate(model, test)["accuracy"] == pytest.approx(entry["accuracy"])
    dropped = AuditModel.from_pretrained(Path(by_key["layer_dropping"]["folder"])).config
    assert sum(len(dropped.tower(t).blocks) for t in ("vision", "qformer", "text")) < sum(
        len(teacher_model.config.tower(t).blocks) for t in ("vision", "qformer", "text"))
    assert by_key["from_scratch"]["shape"] == by_key["antgmm"]["shape"]
    for key, source in (("teacher_int8", "teacher"), ("student_int8", "antgmm")):
        assert by_key[key]["megabytes"] < by_key[source]["megabytes"]
        assert not by_key[key]["reloadable"]


def test_torch_pruning_shapes_map_back_into_a_config(teacher, dataset):
    model = AuditModel.from_pretrained(teacher)
    before = model.config
    recipe = load_recipe(TINY_RECIPE)
    processor = AuditProcessor.from_folder(model.config, teacher)
    split = encode_split(dataset, "train", processor, model.config.tasks, limit=32)
    pruner = TaylorPruner(model, split, cache_teacher(model, split), recipe.distillation, ratio=0.5, steps=2)
    pruner.step()
    pruner.step()
    config = config_from_shapes(model)
    assert all(config.tower(t).hidden_size < before.tower(t).hidden_size for t in ("vision", "qformer", "text"))
    assert config.text.blocks[0].intermediate_size < before.text.blocks[0].intermediate_size
    rebuilt = as_audit_model(model, split)  # raises if a tensor or a logit differs
    pruned_state = model.state_dict()
    for name, tensor in rebuilt.state_dict().items():
        if name not in UNTRACED:  # the unused mask token is the one tensor Torch-Pruning leaves at its old width
            assert tensor.shape == pruned_state[name].shape, name
    with torch.inference_mode():
        inputs = split.inputs(torch.arange(4))
        torch.testing.assert_close(rebuilt(**inputs).logits["verdict"], model(**inputs).logits["verdict"])


def test_budget_is_the_recipes_total_distillation_epochs(teacher):
    config = AuditModel.from_pretrained(teacher).config
    # tiny teacher 3/2/3 blocks -> 2/1/1: 2 block steps, widths 1 soft + 1 after, hidden 2, final 1
    assert distillation_epochs(load_recipe(TINY_RECIPE), config) == 2 + 2 + 2 + 1
