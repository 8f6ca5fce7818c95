"""The AntGMM pipeline on the tiny teacher: stages, distillation, report, reload, recipes."""

import json

import pytest
import torch

from adaudit.compression.distillation import BestEpoch, cache_teacher, distil, mean_distillation_loss
from adaudit.compression.pipeline import REPORT_FILE, compress
from adaudit.compression.recipe import RecipeError, load_recipe
from adaudit.compression.structure import remove_blocks
from adaudit.data.encoding import encode_split
from adaudit.training.presets import preset_config
from adaudit.models.modeling import AuditModel
from adaudit.models.preprocessing import AuditProcessor

from conftest import TINY_RECIPE, quiet


def test_each_stage_removes_exactly_what_the_recipe_asks(student, tiny_recipe):
    folder, report = student
    blocks, widths, hidden = tiny_recipe.stages
    vocabulary, after_blocks, after_widths, after_hidden, final = report["stages"]
    assert final["name"] == "final" and final["shape"] == after_hidden["shape"]
    assert vocabulary["name"] == "vocabulary" and vocabulary["vocabulary_after"] < vocabulary["vocabulary_before"]
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
    params = [report["teacher"]["params"]] + [stage["params"] for stage in report["stages"][:4]]
    assert params == sorted(params, reverse=True) and len(set(params)) == len(params)
    assert report["teacher"]["flops_per_ad"] > report["student"]["flops_per_ad"]


def test_student_reloads_alone_with_identical_logits(student, dataset):
    folder, report = student
    model = AuditModel.from_pretrained(folder)
    assert model.num_parameters() == report["student"]["params"]
    assert model.config.text.hidden_size == 32
    processor = AuditProcessor.from_folder(model.config, folder)
    test = encode_split(dataset, "test", processor, model.config.tasks)
    from adaudit.training.evaluation import evaluate

    assert evaluate(model, test)["accuracy"] == pytest.approx(report["student"]["accuracy"])


def test_the_saved_student_gives_the_logits_of_the_model_compress_ended_with(teacher, dataset, tmp_path, monkeypatch):
    """Every cut (vocabulary, blocks, widths, hidden size) survives the round trip through config.json and
    safetensors: the reloaded student's logits equal those of the in-memory model compress saved."""
    quick = load_recipe(TINY_RECIPE)  # every stage, short: the round trip, not the accuracy, is under test
    quick.distillation.samples, quick.final_epochs = 48, 0
    recipe = tmp_path / "quick.json"
    recipe.write_text(quick.model_dump_json())
    saved = {}
    real_save = AuditModel.save_pretrained

    def keep_the_model(model, folder):
        saved["model"] = model
        real_save(model, folder)

    monkeypatch.setattr(AuditModel, "save_pretrained", keep_the_model)
    compress(teacher, dataset, tmp_path / "student", recipe, log=quiet)
    monkeypatch.undo()
    in_memory, reloaded = saved["model"].eval(), AuditModel.from_pretrained(tmp_path / "student").eval()
    assert reloaded.config == in_memory.config
    processor = AuditProcessor.from_folder(reloaded.config, tmp_path / "student")
    test = encode_split(dataset, "test", processor, reloaded.config.tasks)
    with torch.inference_mode():
        for index in test.batches(64):
            inputs = test.inputs(index)
            before, after = in_memory(**inputs).logits, reloaded(**inputs).logits
            for task in before:
                assert (before[task] - after[task]).abs().max().item() < 1e-5, task


def test_report_has_the_promised_keys(student):
    folder, _ = student
    report = json.loads((folder / REPORT_FILE).read_text())
    for key in ("params", "latency_ms_p50", "latency_ms_p95", "throughput_per_s", "flops_per_ad", "accuracy",
                "violation_macro_f1"):
        assert key in report["teacher"] and key in report["student"]
    assert "agreement" in report["student"]
    assert report["compression_ratio"] == pytest.approx(report["teacher"]["params"] / report["student"]["params"])
    assert report["speedup"] == pytest.approx(report["teacher"]["latency_ms_p50"] / report["student"]["latency_ms_p50"])
    assert [stage["name"] for stage in report["stages"]] == ["vocabulary", "blocks", "widths", "hidden", "final"]
    # every entry's figures on the validation split, what a recipe or a stopping point is chosen on
    for entry in [report["teacher"], *report["stages"], report["student"]]:
        assert entry["validation"]["samples"] == 30, entry["name"]
        assert set(entry["validation"]) == {"accuracy", "violation_macro_f1", "samples"}
    assert report["distillation_samples"] == 120
    assert report["augmented_views"] == 120  # one view per distillation ad (the tiny recipe)


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


def test_the_final_stage_keeps_the_epoch_with_the_lowest_held_out_loss(teacher, dataset, tiny_recipe):
    teacher_model = AuditModel.from_pretrained(teacher)
    processor = AuditProcessor.from_folder(teacher_model.config, teacher)
    ads = encode_split(dataset, "train", processor, teacher_model.config.tasks, limit=96)
    cache = cache_teacher(teacher_model, ads)
    train, held_out = ads.subset(torch.arange(64)), ads.subset(torch.arange(64, 96))
    train_cache, held_out_cache = cache.subset(torch.arange(64)), cache.subset(torch.arange(64, 96))
    torch.manual_seed(0)
    student = remove_blocks(teacher_model, {"vision": [0], "qformer": [0], "text": [0]})
    settings = tiny_recipe.distillation.model_copy(update={"learning_rate": 2e-2})  # high: the held-out loss wanders
    best = BestEpoch(held_out, held_out_cache, settings)
    distil(student, train, train_cache, settings, epochs=5, description="test", on_epoch_end=best)
    assert len(best.losses) == 5
    last = mean_distillation_loss(student, held_out, held_out_cache, settings)
    assert last == pytest.approx(best.losses[-1], rel=1e-4)
    best.restore(student)
    assert mean_distillation_loss(student, held_out, held_out_cache, settings) == pytest.approx(min(best.losses),
                                                                                               rel=1e-4)


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
    ("distillation: {samples: 100, validation_samples: 100}\nstages: []", "must be fewer than samples"),
])
def test_bad_recipes_get_one_readable_error(tmp_path, text, message):
    config = preset_config("tiny", 100)
    with pytest.raises(RecipeError, match=message):
        load_recipe(write_recipe(tmp_path, text)).check_against(config)


def test_the_default_recipe_fits_the_base_teacher():
    load_recipe().check_against(preset_config("base", 100))


def test_an_interrupted_run_leaves_no_student(teacher, dataset, tmp_path, monkeypatch):
    from adaudit.compression.stages import ShrinkHidden

    def broken(self, model, context):
        raise KeyboardInterrupt

    monkeypatch.setattr(ShrinkHidden, "apply", broken)
    out = tmp_path / "student"
    with pytest.raises(KeyboardInterrupt):
        compress(teacher, dataset, out, TINY_RECIPE, log=quiet)
    assert not out.exists()  # nothing that looks like a student: only its working folder, to resume from
    assert [path.name for path in tmp_path.iterdir()] == ["student.partial"]


def test_the_generated_vocabulary_is_pruned_to_the_copy_and_common_characters():
    """Stage 0 on a vocab.txt model: same logits on the copy it was pruned on; rare hanzi become unknown."""
    from adaudit.compression.vocabulary import corpus_characters, prune_vocabulary
    from adaudit.models.tokenizer import build_vocabulary

    torch.manual_seed(0)
    model = AuditModel(preset_config("tiny", len(build_vocabulary()))).eval()
    copy = ["限时特价，全网最低价！", "纯天然蜂蜜 产地直供 99元", "理财稳赚不赔，月收益20%"]
    pruned, kept = prune_vocabulary(model, copy, corpus_characters("common"))
    assert len(kept) == pruned.config.vocab_size == len(pruned.tokenizer) < len(build_vocabulary()) * 0.6
    images = torch.rand(len(copy), 3, model.config.image_size, model.config.image_size)
    before = AuditProcessor(model.config).texts(copy)
    after = AuditProcessor(pruned.config, pruned.tokenizer).texts(copy)
    assert after[0].max() < len(kept)
    with torch.no_grad():
        for task, logits in model(images, *before).logits.items():
            torch.testing.assert_close(pruned(images, *after).logits[task], logits, atol=1e-5, rtol=1e-5)
    unknown = pruned.tokenizer.unk_token_id
    assert unknown not in pruned.tokenizer("全新咖啡上市")["input_ids"]  # common hanzi never seen in the copy
    assert pruned.tokenizer("鳏")["input_ids"][1] == unknown  # a rare (GB2312 level 2) hanzi


def test_compress_picks_the_recipe_written_for_the_teachers_preset(teacher, tmp_path):
    from adaudit.compression.recipe import default_recipe

    assert default_recipe(teacher) == "tiny"  # the tiny teacher's config.json names its preset
    folder = tmp_path / "pretrained-teacher"
    folder.mkdir()
    config = preset_config("tiny", 100)
    config.preset = "pretrained"
    config.save(folder)
    assert default_recipe(folder) == "pretrained"
    config.preset = None  # a config written before presets were recorded
    config.save(folder)
    assert default_recipe(folder) == "default"
    assert default_recipe(tmp_path / "no-such-teacher") == "default"
    # the pretrained recipe fits the pretrained teacher's shape (12 + 2 + 12 blocks), and so does default.yaml,
    # whose targets are relative to the teacher (tests/test_recipe_shapes.py)
    load_recipe("pretrained").check_against(preset_config("pretrained", 6000))
    load_recipe("default").check_against(preset_config("pretrained", 6000))


def test_a_teacher_with_industry_agreement_compresses_into_a_student_that_keeps_it(dataset, tmp_path, monkeypatch):
    """The pretrained preset's agreement heads go through every stage (vocabulary, blocks, widths,
    hidden) whole, and the student reloads and exports to ONNX with them."""
    from adaudit.training import teacher as teacher_module
    from adaudit.export.onnx_runtime import OnnxRuntimeAuditModel, example_inputs, export_onnx

    plain_teacher = teacher_module.new_teacher

    def agreeing_teacher(preset_name, taxonomy):
        model = plain_teacher(preset_name, taxonomy)
        model.config.industry_agreement = True
        return AuditModel(model.config)

    monkeypatch.setattr(teacher_module, "new_teacher", agreeing_teacher)
    teacher_folder = tmp_path / "teacher"
    teacher_module.train_teacher(dataset, teacher_folder, "tiny", epochs=1, limit=96, recombined=0.5, log=quiet)
    compress(teacher_folder, dataset, tmp_path / "student", TINY_RECIPE, log=quiet)
    student = AuditModel.from_pretrained(tmp_path / "student")
    assert student.config.industry_agreement and set(student.agreement_heads) == {"verdict", "violation"}
    assert student.num_parameters() < AuditModel.from_pretrained(teacher_folder).num_parameters()
    inputs = example_inputs(student.config)
    graph = export_onnx(student, inputs, tmp_path / "onnx" / "model.onnx")  # checks ONNX Runtime's logits
    with torch.inference_mode():
        torch.testing.assert_close(OnnxRuntimeAuditModel(graph)(**inputs).logits["violation"],
                                   student(**inputs).logits["violation"], atol=1e-4, rtol=1e-4)
