"""The AntGMM pipeline on the tiny teacher: stages, distillation, report, reload, recipes."""

import json

import pytest
import torch

from adaudit.compression.distillation import cache_teacher, distil, mean_distillation_loss
from adaudit.compression.pipeline import REPORT_FILE, compress
from adaudit.compression.recipe import RecipeError, load_recipe
from adaudit.compression.structure import remove_blocks
from adaudit.data.encoding import encode_split
from adaudit.models.configuration import preset
from adaudit.models.modeling import AuditModel
from adaudit.models.preprocessing import AuditProcessor

from conftest import TINY_RECIPE, quiet


def test_each_stage_removes_exactly_what_the_recipe_asks(student, tiny_recipe):
    folder, report = student
    blocks, widths, hidden = tiny_recipe.stages
    after_blocks, after_widths, after_hidden, final = report["stages"]
    assert final["name"] == "final" and final["shape"] == after_hidden["shape"]
    for tower, keep in blocks.keep.items():
        assert after_blocks["shape"][tower]["blocks"] == keep
    for tower, heads in widths.heads.items():
        assert after_widths["shape"][tower]["heads"] == [heads] * blocks.keep[tower]
    for tower, neurons in widths.ffn.items():
        assert after_widths["shape"][tower]["ffn"] == [neurons] * blocks.keep[tower]
    teacher_shape = report["teacher"]["shape"]
    assert after_widths["shape"]["vision"]["hidden"] == teacher_shape["vision"]["hidden"]
    for tower, size in hidden.size.items():
        assert after_hidden["shape"][tower]["hidden"] == size
    params = [report["teacher"]["params"]] + [stage["params"] for stage in report["stages"][:3]]
    assert params == sorted(params, reverse=True) and len(set(params)) == len(params)
    assert report["teacher"]["flops_per_ad"] > report["student"]["flops_per_ad"]


def test_student_reloads_alone_with_identical_logits(student, dataset):
    folder, report = student
    model = AuditModel.from_pretrained(folder)
    assert model.num_parameters() == report["student"]["params"]
    assert model.config.text.hidden_size == 32
    processor = AuditProcessor.from_folder(model.config, folder)
    test = encode_split(dataset, "test", processor, model.config.tasks)
    from adaudit.evaluation import evaluate

    assert evaluate(model, test)["accuracy"] == pytest.approx(report["student"]["accuracy"])


def test_report_has_the_promised_keys(student):
    folder, _ = student
    report = json.loads((folder / REPORT_FILE).read_text())
    for key in ("params", "latency_ms_p50", "latency_ms_p95", "throughput_per_s", "flops_per_ad", "accuracy",
                "violation_macro_f1"):
        assert key in report["teacher"] and key in report["student"]
    assert "agreement" in report["student"]
    assert report["compression_ratio"] == pytest.approx(report["teacher"]["params"] / report["student"]["params"])
    assert report["speedup"] > 0 and len(report["stages"]) == 4
    assert report["distillation_samples"] == 120


def test_distillation_lowers_the_distillation_loss(teacher, dataset, tiny_recipe):
    teacher_model = AuditModel.from_pretrained(teacher)
    processor = AuditProcessor.from_folder(teacher_model.config, teacher)
    train = encode_split(dataset, "train", processor, teacher_model.config.tasks, limit=96)
    cache = cache_teacher(teacher_model, train)
    torch.manual_seed(0)
    student = remove_blocks(teacher_model, {"vision": [0], "qformer": [0], "text": [0]})
    settings = tiny_recipe.distillation.model_copy(update={"learning_rate": 5e-3})
    before = mean_distillation_loss(student, train, cache, settings)
    distil(student, train, cache, settings, epochs=6, description="test")
    after = mean_distillation_loss(student, train, cache, settings)
    assert after < before * 0.97  # seeded: 4.20 -> 3.96 here


def write_recipe(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, message", [
    ("stages: [{kind: blocks, keep: {text: 9}}]", "keeps 9 text blocks but the model has 3"),
    ("stages: [{kind: widths, ffn: {text: 0}}]", "greater than 0"),
    ("stages: [{kind: hidden, size: {vision: 500}}]", "unreachable"),
    ("stages: [{kind: widths, heads: {text: 8}}]", "widths can only shrink"),
    ("stages: [{kind: blocks, keep: {texts: 1}}]", "texts"),
    ("stages: [{kind: shuffle}]", "kind"),
    ("stages: [{kind: blocks, keep: {text: 1}, epochs: 3}]", "Extra inputs"),
    ("stages: [\n  - {kind: blocks", "not valid YAML"),
])
def test_bad_recipes_get_one_readable_error(tmp_path, text, message):
    config = preset("tiny", 100)
    with pytest.raises(RecipeError, match=message):
        load_recipe(write_recipe(tmp_path, text)).check_against(config)


def test_the_default_recipe_fits_the_base_teacher():
    load_recipe().check_against(preset("base", 100))


def test_an_interrupted_run_leaves_no_student(teacher, dataset, tmp_path, monkeypatch):
    from adaudit.compression import pipeline

    def broken(model, stage, context):
        raise KeyboardInterrupt

    monkeypatch.setitem(pipeline.RUNNERS, "hidden", broken)
    out = tmp_path / "student"
    with pytest.raises(KeyboardInterrupt):
        compress(teacher, dataset, out, TINY_RECIPE, log=quiet)
    assert list(tmp_path.iterdir()) == []
