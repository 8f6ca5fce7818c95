"""The command line: real subprocesses, one readable error line and exit code 1 on bad input."""

import json
import shutil
import subprocess
import sys

import pytest

from conftest import student_variant

ADAUDIT = [sys.executable, "-m", "adaudit.cli"]


def run(*args, **kwargs):
    return subprocess.run([*ADAUDIT, *map(str, args)], capture_output=True, text=True, timeout=300, **kwargs)


def assert_one_error_line(result, fragment):
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr


def test_eval_prints_metrics_as_json(student, dataset):
    folder, report = student
    result = run("eval", "--model", folder, "--data", dataset)
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert metrics["params"] == report["student"]["params"]
    assert metrics["accuracy"] == pytest.approx(report["student"]["accuracy"])


def test_missing_teacher_folder(dataset, tmp_path):
    result = run("compress", "--teacher", tmp_path / "none", "--data", dataset, "--out", tmp_path / "s")
    assert_one_error_line(result, "does not exist")
    assert not (tmp_path / "s").exists()


def test_corrupt_teacher_folder(teacher, dataset, tmp_path):
    broken = tmp_path / "teacher"
    shutil.copytree(teacher, broken)
    (broken / "model.safetensors").write_bytes(b"\0" * 100)
    result = run("compress", "--teacher", broken, "--data", dataset, "--out", tmp_path / "s")
    assert_one_error_line(result, "corrupt")


def copy_dataset(dataset, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(dataset, copy)
    return copy


def test_dataset_with_a_missing_image(student, dataset, tmp_path):
    copy = copy_dataset(dataset, tmp_path)
    first = json.loads((copy / "test.jsonl").read_text().splitlines()[0])
    (copy / first["image"]).unlink()
    result = run("eval", "--model", student[0], "--data", copy)
    assert_one_error_line(result, "test.jsonl line 1")


def test_dataset_with_an_unknown_label(student, dataset, tmp_path):
    copy = copy_dataset(dataset, tmp_path)
    lines = (copy / "test.jsonl").read_text().splitlines()
    record = json.loads(lines[2])
    record["labels"]["verdict"] = "maybe"
    lines[2] = json.dumps(record, ensure_ascii=False)
    (copy / "test.jsonl").write_text("\n".join(lines) + "\n")
    result = run("eval", "--model", student[0], "--data", copy)
    assert_one_error_line(result, "unknown label 'maybe'")


def test_recipe_asking_for_more_blocks_than_exist(teacher, dataset, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("stages: [{kind: blocks, keep: {vision: 12}}]\n")
    result = run("compress", "--teacher", teacher, "--data", dataset, "--out", tmp_path / "s", "--recipe", recipe)
    assert_one_error_line(result, "keeps 12 vision blocks")
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("arguments, fragment", [
    (["--backend", "kubernetes"], "backend: Input should be 'triton' or 'embedded'"),
    (["--backend", "embedded"], "needs model_dir"),
    (["--triton-url", "no-port-here"], "must be host:port"),
])
def test_serve_with_bad_settings_names_the_setting(arguments, fragment, tmp_path):
    result = run("serve", *arguments, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}, cwd=tmp_path)
    assert_one_error_line(result, fragment)


def test_export_beside_a_version_of_another_shape_is_one_error_line(student, tmp_path):
    """A second version that one config.pbtxt cannot declare beside the first: one line, nothing written."""
    from adaudit.models.configuration import AuditModelConfig

    folder, _ = student
    assert run("export", "--student", folder, "--out", tmp_path / "repo", "--engine", "torch").returncode == 0
    other = student_variant(folder, tmp_path / "other",
                            max_text_length=AuditModelConfig.load(folder).max_text_length + 16)
    result = run("export", "--student", other, "--out", tmp_path / "repo", "--version", "2", "--engine", "torch")
    assert_one_error_line(result, "copy length")
    assert not (tmp_path / "repo" / "student" / "2").exists()


def test_the_demo_states_its_students_and_teachers_quality_beside_the_sample(tmp_path):
    from adaudit.demo import quality

    report = {"student": {"accuracy": 0.9125, "violation_macro_f1": 0.5}, "teacher": {"accuracy": 0.95,
                                                                                   "violation_macro_f1": 0.875}}
    (tmp_path / "report.json").write_text(json.dumps(report))
    line = quality(tmp_path)
    assert "student on its test split: verdict accuracy 91.2%, violation macro-F1 50.0%" in line
    assert "teacher: verdict accuracy 95.0%, violation macro-F1 87.5%" in line


def test_the_demo_recipe_loads_by_name_and_shrinks_every_tower_of_the_tiny_teacher():
    """`make run` compresses the tiny teacher with `--recipe demo`: it must resolve against that shape (a wrong
    target would only show minutes into the demo) and still cut every tower."""
    from adaudit.compression.recipe import DEMO_RECIPE, load_recipe
    from adaudit.demo import DEMO_RECIPE as used
    from adaudit.models.configuration import TOWERS
    from adaudit.training.presets import preset_config

    config = preset_config("tiny", 100)
    assert used == DEMO_RECIPE and load_recipe("demo") == load_recipe(DEMO_RECIPE)
    blocks, widths, hidden = load_recipe("demo").resolve(config).stages
    for tower in TOWERS:
        teacher = config.tower(tower)
        assert len(blocks.keep[tower]) < len(teacher.blocks)
        assert hidden.size[tower] < teacher.hidden_size
        assert widths.ffn[tower] < min(b.intermediate_size for b in teacher.blocks)
