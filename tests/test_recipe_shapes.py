"""Recipes relative to the teacher: the packaged default and `auto` resolve against any teacher's shape.

The default must give, on the `base` teacher, exactly the absolute recipe the benchmark figures were
made with (inlined below as it was), and `compress` without a recipe, or with `--recipe auto`, must run
on teachers of other shapes. Compress runs here keep every stage of the packaged recipe and its
targets but distil for the least time that still runs every step (`quick`): shapes are under test."""

import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

from adaudit.cli import app
from adaudit.compression import pipeline
from adaudit.compression.recipe import Recipe, RecipeError, load_recipe, spread
from adaudit.models.configuration import TOWERS, BlockShape
from adaudit.models.modeling import AuditModel
from adaudit.models.tokenizer import build_vocabulary
from adaudit.training.loop import EpochLosses, ProgressLines, Schedule, fit
from adaudit.training.presets import preset, preset_config

# compression/recipes/default.yaml and auto.yaml as they were, absolute, written for the base teacher
DEFAULT_FOR_BASE = """
distillation: {samples: 2000, batch_size: 32, learning_rate: 0.0008, temperature: 2.0, kl_weight: 1.0,
               label_weight: 0.5, pooled_weight: 1.0, views: 2, recombined_fraction: 0.5}
vocabulary: {characters: common}
calibration_samples: 256
stages:
  - {kind: blocks, keep: {vision: [0, 7], qformer: [3], text: [0, 7]}, per_step: 1, epochs_per_step: 1}
  - {kind: widths, heads: {vision: 3, qformer: 2, text: 2}, ffn: {vision: 256, qformer: 256, text: 256},
     cross_attention_heads: 6, soft_steps: 2, mask_decay: 0.3, epochs_per_step: 1, epochs_after_cut: 2}
  - {kind: hidden, size: {vision: 128, qformer: 128, text: 128}, steps: 2, epochs_per_step: 2}
final_epochs: 6
seed: 0
"""
AUTO_FOR_BASE = """
search: {samples: 64, population: 16, generations: 10, generalization_weight: 40.0, projector_steps: 20}
distillation: {samples: 2000, batch_size: 32, learning_rate: 0.0008, temperature: 2.0, kl_weight: 1.0,
               label_weight: 0.5, pooled_weight: 1.0, views: 2, recombined_fraction: 0.5}
calibration_samples: 256
stages:
  - {kind: blocks, keep: {vision: 2, qformer: 1, text: 3}, per_step: 1, epochs_per_step: 1}
  - {kind: widths, heads: {vision: 2, qformer: 2, text: 2}, ffn: {vision: 256, qformer: 256, text: 256},
     cross_attention_heads: 2, soft_steps: 2, mask_decay: 0.3, epochs_per_step: 1, epochs_after_cut: 2}
  - {kind: hidden, size: {vision: 128, qformer: 128, text: 128}, steps: 2, epochs_per_step: 2}
final_epochs: 10
seed: 0
"""


@pytest.mark.parametrize("name, before", [("default", DEFAULT_FOR_BASE), ("auto", AUTO_FOR_BASE)])
def test_the_packaged_recipe_resolves_on_the_base_teacher_to_exactly_the_benchmarks_recipe(name, before):
    resolved = load_recipe(name).resolve(preset_config("base", 100))
    expected = Recipe.model_validate(yaml.safe_load(before))
    assert resolved.model_dump() == expected.model_dump()
    assert load_recipe(name).model_dump() != expected.model_dump()  # the file itself is relative


def test_the_more_ads_recipe_is_the_default_distilled_on_twice_the_ads():
    # the student behind the decisions goal (docs/decisions.md) must stay the default's shape, so its speed
    default, more_ads = load_recipe("default").model_dump(), load_recipe("more-ads").model_dump()
    assert more_ads["distillation"].pop("samples") == 2 * default["distillation"].pop("samples")
    assert more_ads == default


def test_an_absolute_recipe_resolves_to_itself_and_a_resolved_one_round_trips():
    config = preset_config("tiny", 100)
    tiny = load_recipe("tiny")
    assert tiny.resolve(config) == tiny
    resolved = load_recipe("default").resolve(config)
    assert Recipe.model_validate_json(resolved.model_dump_json()).resolve(config) == resolved


@pytest.mark.parametrize("name", ["tiny", "small", "base", "pretrained"])
def test_the_default_and_auto_fit_every_preset_and_shrink_every_tower(name):
    config = preset_config(name, 6000)
    for recipe_name in ("default", "auto"):
        blocks, widths, hidden = load_recipe(recipe_name).resolve(config).stages
        for tower in TOWERS:
            teacher = config.tower(tower)
            keep = blocks.keep[tower]
            assert (len(keep) if isinstance(keep, list) else keep) < len(teacher.blocks)
            assert hidden.size[tower] < teacher.hidden_size
            assert widths.ffn[tower] < min(b.intermediate_size for b in teacher.blocks)


def test_relative_targets_resolve_against_the_teachers_own_shape():
    config = preset_config("tiny", 100)  # 3/2/3 blocks, hidden 64, 4 heads, FFN 128
    blocks, widths, hidden = load_recipe("default").resolve(config).stages
    assert blocks.keep == {"vision": [0, 2], "qformer": [1], "text": [0, 2]}
    assert widths.heads == {"vision": 2, "qformer": 1, "text": 1}  # 1/2 and 1/3 of 4, to the nearest
    assert widths.ffn == {"vision": 21, "qformer": 21, "text": 21} and widths.cross_attention_heads == 4
    assert hidden.size == {"vision": 21, "qformer": 21, "text": 21}


@pytest.mark.parametrize("count, depth, numbers", [
    (2, 8, [0, 7]), (1, 4, [3]), (3, 5, [0, 2, 4]), (4, 12, [0, 4, 7, 11]), (3, 3, [0, 1, 2]), (1, 1, [0]),
])
def test_spread_keeps_both_ends_and_spaces_the_rest_evenly(count, depth, numbers):
    assert spread(count, depth) == numbers


def test_spread_asks_for_no_more_blocks_than_the_teacher_has(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("stages: [{kind: blocks, keep: {vision: spread 5, text: spread 1/2, qformer: 1/2}}]\n")
    (stage,) = load_recipe(path).resolve(preset_config("tiny", 100)).stages
    assert stage.keep == {"vision": [0, 1, 2], "text": [0, 2], "qformer": 1}


@pytest.mark.parametrize("target, message", [
    ("ffn: {text: 3/2}", "at most 1"),
    ("ffn: {text: 1.5}", "at most 1"),
    ("ffn: {text: 0/4}", "greater than 0"),
    ("heads: {text: 0.0}", "greater than 0"),
    ("ffn: {text: 0}", "greater than 0"),
    ("ffn: {text: half}", "neither a whole number nor a fraction"),
    ("cross_attention_heads: 2/0", "neither a whole number nor a fraction"),
])
def test_an_impossible_relative_width_is_one_readable_error(tmp_path, target, message):
    path = tmp_path / "recipe.yaml"
    path.write_text(f"stages: [{{kind: widths, {target}}}]\n")
    with pytest.raises(RecipeError, match=message) as raised:
        load_recipe(path)
    assert "\n" not in str(raised.value) and "stages.0.widths" in str(raised.value)


@pytest.mark.parametrize("keep, message", [
    ("spread 0", "greater than 0"), ("spread", "write `spread N`"), ("spread 5/4", "at most 1"),
    ("[1, -1]", "greater than -1"),
])
def test_an_impossible_relative_block_target_is_one_readable_error(tmp_path, keep, message):
    path = tmp_path / "recipe.yaml"
    path.write_text(f"stages: [{{kind: blocks, keep: {{text: {keep}}}}}]\n")
    with pytest.raises(RecipeError, match=message):
        load_recipe(path)


def test_the_command_line_gives_one_error_line_for_an_impossible_fraction(dataset, tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("stages: [{kind: hidden, size: {text: 4/3}}]\n")
    result = CliRunner().invoke(app, ["compress", "--teacher", str(tmp_path / "teacher"), "--data", str(dataset),
                                      "--out", str(tmp_path / "student"), "--recipe", str(path)])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: recipe ") and "at most 1" in lines[0], result.stderr
    assert not (tmp_path / "student").exists()


# --- compress on teachers of several shapes ------------------------------------------------------
def quick(recipe: Recipe) -> Recipe:
    """The recipe's stages and targets with the least distillation that still runs every step."""
    changes = {"blocks": {"per_step": 8, "epochs_per_step": 1},
               "widths": {"soft_steps": 1, "epochs_per_step": 1, "epochs_after_cut": 0},
               "hidden": {"steps": 1, "epochs_per_step": 1}}
    update = {"stages": [stage.model_copy(update=changes[stage.kind]) for stage in recipe.stages],
              "distillation": recipe.distillation.model_copy(update={"samples": 16, "batch_size": 16, "views": 0}),
              "calibration_samples": 8, "final_epochs": 0}
    if recipe.search:
        update["search"] = recipe.search.model_copy(update={
            "samples": 16, "held_out_samples": 8, "population": 3, "generations": 1, "elites": 2,
            "projector_steps": 0, "calibration_models": 12, "time_candidates": False})
    return recipe.model_copy(update=update)


def size_as_latency(model, split, repeats=60, throughput_batch=32, throughput_repeats=6) -> dict:
    """A stand-in for measure.latency: milliseconds from the parameter count, so that the shapes, not a
    busy machine's clock, are under test (and the search's budget and latency model still agree)."""
    ms = model.num_parameters() / 1e5
    timings = {"latency_ms_p50": ms, "latency_ms_p95": ms}
    return {**timings, "throughput_per_s": 1000 / ms} if throughput_repeats else timings


@pytest.fixture
def quick_recipes(monkeypatch):
    from adaudit.compression import search
    from adaudit.training import measure

    original = pipeline.load_recipe
    monkeypatch.setattr(pipeline, "load_recipe", lambda path: quick(original(path)))
    monkeypatch.setattr(measure, "latency", size_as_latency)
    monkeypatch.setattr(search, "latency", size_as_latency)
    monkeypatch.setattr(pipeline, "paired_latency",
                        lambda models, splits, **_: {name: size_as_latency(m, None) for name, m in models.items()})


@pytest.fixture(scope="module")
def small_teacher(tmp_path_factory):
    folder = tmp_path_factory.mktemp("small") / "teacher"
    torch.manual_seed(0)
    preset("small").new_model().save_pretrained(folder)  # untrained: its shape is under test
    return folder


@pytest.fixture(scope="module")
def odd_teacher(tmp_path_factory):
    """A tiny-like teacher of a shape no preset has: 5 vision blocks, 3 Q-Former blocks, no preset name."""
    config = preset_config("tiny", len(build_vocabulary()))
    config.vision.blocks = [BlockShape(4, 128) for _ in range(5)]
    config.qformer.blocks = [BlockShape(4, 96, 4), BlockShape(4, 96, 0), BlockShape(4, 96, 4)]
    config.preset = None
    folder = tmp_path_factory.mktemp("odd") / "teacher"
    torch.manual_seed(0)
    AuditModel(config.validate()).save_pretrained(folder)
    return folder


def compress_logged(teacher, dataset, out, recipe=None, **options):
    lines = []
    report = pipeline.compress(teacher, dataset, out, recipe, log=lines.append, **options)
    return report, lines, json.loads((out / "recipe.json").read_text())


def assert_student_has(out, keep: dict[str, int], hidden: dict[str, int]):
    student = AuditModel.from_pretrained(out)
    assert {t: len(student.config.tower(t).blocks) for t in TOWERS} == keep
    assert {t: student.config.tower(t).hidden_size for t in TOWERS} == hidden


def test_compress_without_a_recipe_on_the_tiny_teacher_uses_the_tiny_recipe(teacher, dataset, tmp_path, quick_recipes):
    report, lines, recipe = compress_logged(teacher, dataset, tmp_path / "student")
    assert "recipe: tiny (packaged, for this teacher's preset)" in lines
    assert_student_has(tmp_path / "student", {"vision": 2, "qformer": 1, "text": 1},
                       {"vision": 48, "qformer": 40, "text": 32})
    stage_ends = [line for line in lines if line.startswith("  -> ")]
    assert len(stage_ends) == 3 and all("stages so far" in line for line in stage_ends)
    assert "about" in stage_ends[0] and "left" in stage_ends[0]  # epochs were still to come
    one_epoch = [line for line in lines if "distillation loss" in line]
    assert one_epoch and all("(first and last batch of its one epoch)" in line for line in one_epoch)


def test_compress_without_a_recipe_on_the_small_teacher_uses_the_relative_default(small_teacher, dataset, tmp_path,
                                                                                  quick_recipes):
    report, lines, recipe = compress_logged(small_teacher, dataset, tmp_path / "student")
    assert "recipe: default (packaged, for this teacher's preset)" in lines
    assert recipe["stages"][1]["ffn"] == {"vision": 171, "qformer": 171, "text": 171}  # 1/6 of 1024
    assert_student_has(tmp_path / "student", {"vision": 2, "qformer": 1, "text": 2},
                       {"vision": 85, "qformer": 85, "text": 85})


def test_a_teacher_of_an_odd_shape_compresses_with_the_default(odd_teacher, dataset, tmp_path, quick_recipes):
    report, lines, recipe = compress_logged(odd_teacher, dataset, tmp_path / "student")
    assert recipe["stages"][0]["keep"] == {"vision": [0, 4], "qformer": [2], "text": [0, 2]}
    assert recipe["stages"][1]["ffn"] == {"vision": 21, "qformer": 16, "text": 21}  # 1/6 of 128 and of 96
    assert_student_has(tmp_path / "student", {"vision": 2, "qformer": 1, "text": 2},
                       {"vision": 21, "qformer": 21, "text": 21})


@pytest.mark.parametrize("teacher_name", ["tiny", "small"])
def test_recipe_auto_searches_on_tiny_and_small_teachers(teacher_name, teacher, small_teacher, dataset, tmp_path,
                                                         quick_recipes):
    folder = teacher if teacher_name == "tiny" else small_teacher
    config = AuditModel.from_pretrained(folder).config
    report, lines, recipe = compress_logged(folder, dataset, tmp_path / "student", "auto", target_speedup=1.5)
    assert report["search"]["policy"] and recipe["search"] is None
    student = AuditModel.from_pretrained(tmp_path / "student")
    for tower in TOWERS:
        assert student.config.tower(tower).hidden_size == round(config.tower(tower).hidden_size / 3)
        widest = config.tower(tower).blocks[0]
        assert all(b.heads <= widest.heads and b.intermediate_size <= widest.intermediate_size
                   for b in student.config.tower(tower).blocks)


# --- progress lines and the small command-line things ---------------------------------------------
def test_fit_prints_a_line_per_epoch_when_stderr_is_not_a_terminal(capsys):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    inputs, targets = torch.randn(32, 4), torch.randn(32, 1)

    def loss(m, index):
        return torch.nn.functional.mse_loss(m(inputs[index]), targets[index])

    losses = fit(model, 32, loss, Schedule(epochs=2, batch_size=8, learning_rate=0.05, bfloat16=False), "probe")
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["probe epoch 1/2", "probe epoch 2/2"]
    assert f"loss {losses[0]:.4f}" in lines[0] and "elapsed, about" in lines[0] and lines[0].endswith("left")
    assert "left" not in lines[1]  # nothing is left after the last epoch
    assert isinstance(losses, EpochLosses) and losses.first_batch != losses.last_batch


def test_a_one_epoch_loss_says_which_figures_it_compares():
    losses = EpochLosses([5.9886])
    losses.first_batch, losses.last_batch = 6.25, 5.5
    assert losses.change() == "6.2500 -> 5.5000 (first and last batch of its one epoch)"
    assert EpochLosses([2.0, 1.0]).change() == "2.0000 -> 1.0000 (epoch means)"


def test_progress_lines_inside_a_long_epoch(capsys):
    lines = ProgressLines("teacher base", total_steps=100, first_step=0, every_s=0.0, enabled=True)
    lines.batch(1, 4, 10, 25, 1.5, 10)
    lines.batch(1, 4, 25, 25, 1.4, 25)  # the epoch's last batch: the epoch line follows instead
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("teacher base epoch 1/4: batch 10/25, loss 1.5000 so far, ")
    assert ProgressLines("x", 10, 0).enabled is True  # pytest's stderr is not a terminal


def test_teacher_train_help_shows_the_pretrained_extra():
    result = CliRunner().invoke(app, ["teacher", "train", "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0 and "pip install '.[pretrained]'" in result.output


def test_eval_prints_the_machine_beside_the_timings(teacher, dataset, monkeypatch):
    from adaudit.training import measure

    monkeypatch.setattr(measure, "latency", size_as_latency)  # the figures printed, not the clock, are under test
    result = CliRunner().invoke(app, ["eval", "--model", str(teacher), "--data", str(dataset)])
    assert result.exit_code == 0, result.stderr
    figures = json.loads(result.stdout)
    assert {"latency_ms_p50", "accuracy"} <= set(figures) and set(figures["machine"]) >= {"cpu", "cores", "torch_threads"}
    assert figures["machine"]["torch_threads"] == torch.get_num_threads()
