"""Temperature scaling: the fit, the calibration error, the served forward, exports, teacher and student."""

import json
import math
import shutil

import pytest
import torch

from adaudit.compression.distillation import cache_teacher
from adaudit.compression.pipeline import REPORT_FILE, calibrate_student
from adaudit.compression.recipe import load_recipe
from adaudit.compression.stages import Context
from adaudit.data.encoding import encode_split
from adaudit.export.onnx_gpu import TOLERANCE, check_gpu_graph, gpu_graph, served_example
from adaudit.export.onnx_runtime import OnnxRuntimeAuditModel, export_onnx
from adaudit.models.configuration import CONFIG_FILE, AuditModelConfig, ConfigError
from adaudit.models.modeling import AuditModel
from adaudit.models.preprocessing import AuditProcessor
from adaudit.models.serving import model_inputs, served_logits
from adaudit.training.calibration import (DIAGRAM_FILE, HIGHEST_TEMPERATURE, LOWEST_TEMPERATURE,
                                          expected_calibration_error, fit_temperature)
from adaudit.training.presets import preset_config
from adaudit.training.teacher import train_teacher

from conftest import TINY_RECIPE

TEMPERATURES = {"verdict": 2.5, "violation": 0.4}  # one task softened, one sharpened; the others at 1.0


def well_calibrated(n: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels drawn from softmax(logits): a model whose probabilities are the truth."""
    generator = torch.Generator().manual_seed(seed)
    logits = 1.5 * torch.randn(n, classes, generator=generator, dtype=torch.float64)
    labels = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(1)
    return logits, labels


@pytest.mark.parametrize("scale", [3.0, 0.3])
def test_the_fit_recovers_the_temperature_that_miscalibrated_the_logits(scale):
    """Logits of a calibrated model multiplied by 3 (overconfident) or 0.3 (underconfident): the fitted T
    undoes the factor, and the calibration error falls from far off to the sampling noise."""
    logits, labels = well_calibrated(20_000, 5, seed=0)
    temperature = fit_temperature(scale * logits, labels)
    assert temperature == pytest.approx(scale, rel=0.05)
    assert expected_calibration_error(scale * logits, labels) > 0.15
    assert expected_calibration_error(scale * logits, labels, temperature) < 0.015


def test_the_calibration_error_is_zero_when_confidence_equals_accuracy_and_their_gap_otherwise():
    """Built by hand: 10 ads at confidence 0.8 of which 8 are right, 5 at 0.6 of which 3 are right: ECE 0.
    The same ads all labelled wrong instead: every bin's gap is its confidence, ECE the mean confidence."""
    high, low = math.log(0.8 / 0.2), math.log(0.6 / 0.4)
    logits = torch.tensor([[high, 0.0]] * 10 + [[low, 0.0]] * 5, dtype=torch.float64)
    right = torch.tensor([0] * 8 + [1] * 2 + [0] * 3 + [1] * 2)
    assert expected_calibration_error(logits, right) == pytest.approx(0.0, abs=1e-9)
    assert expected_calibration_error(logits, torch.ones(15, dtype=torch.long)) == pytest.approx(
        (10 * 0.8 + 5 * 0.6) / 15)
    logits, labels = well_calibrated(50_000, 4, seed=1)  # sampled: near 0, and left alone by the fit
    assert expected_calibration_error(logits, labels) < 0.01
    assert fit_temperature(logits, labels) == pytest.approx(1.0, abs=0.05)


def test_a_split_the_model_gets_entirely_right_stops_at_the_lowest_temperature():
    separable = torch.tensor([[4.0, 0.0], [0.0, 4.0], [3.0, -1.0]])
    assert fit_temperature(separable, torch.tensor([0, 1, 0])) == pytest.approx(LOWEST_TEMPERATURE, rel=1e-3)
    assert fit_temperature(separable, torch.tensor([1, 0, 1])) == pytest.approx(HIGHEST_TEMPERATURE, rel=1e-3)
    with pytest.raises(ValueError, match="at least one ad"):
        fit_temperature(torch.empty(0, 2), torch.empty(0, dtype=torch.long))


def tiny_model(temperatures: dict | None = None) -> AuditModel:
    torch.manual_seed(0)
    config = preset_config("tiny", vocab_size=300)
    config.temperatures = dict(temperatures or {})
    return AuditModel(config.validate()).eval()


def test_served_logits_divide_each_task_by_its_temperature_and_keep_the_argmax():
    model = tiny_model(TEMPERATURES)
    ads = served_example(model.config, batch=6)
    with torch.inference_mode():
        raw = model(**model_inputs(**ads)).logits
    served = served_logits(model, **ads)
    for task in model.config.tasks:
        expected = raw[task] / TEMPERATURES.get(task, 1.0)
        torch.testing.assert_close(served[task], expected)
        assert torch.equal(served[task].argmax(-1), raw[task].argmax(-1))
    assert not torch.allclose(served["verdict"], raw["verdict"])


def test_temperatures_survive_save_and_reload_and_an_old_folder_loads_at_one(teacher, tmp_path):
    model = AuditModel.from_pretrained(teacher)
    model.config.temperatures = dict(TEMPERATURES)
    model.save_pretrained(tmp_path / "calibrated")
    assert AuditModel.from_pretrained(tmp_path / "calibrated").config.temperatures == TEMPERATURES
    shutil.copytree(tmp_path / "calibrated", tmp_path / "old")
    written = json.loads((tmp_path / "old" / CONFIG_FILE).read_text())
    del written["temperatures"]  # a folder saved before calibration existed
    (tmp_path / "old" / CONFIG_FILE).write_text(json.dumps(written))
    old = AuditModel.from_pretrained(tmp_path / "old")
    assert old.config.temperatures == {}
    ads = served_example(old.config, batch=2)
    with torch.inference_mode():
        raw = old(**model_inputs(**ads)).logits
    assert all(torch.equal(served_logits(old, **ads)[task], raw[task]) for task in old.config.tasks)


@pytest.mark.parametrize("temperatures, message", [
    ({"verdict": 0.0}, "above 0"), ({"verdict": -1.5}, "above 0"), ({"verdict": float("nan")}, "above 0"),
    ({"verdict": "2"}, "above 0"), ({"sentiment": 2.0}, "unknown task"),
])
def test_a_config_with_an_impossible_temperature_is_refused(temperatures, message):
    data = preset_config("tiny", vocab_size=300).to_dict()
    data["temperatures"] = temperatures
    with pytest.raises(ConfigError, match=message):
        AuditModelConfig.from_dict(data)


def test_the_onnx_exports_serve_the_calibrated_logits(tmp_path):
    """The CPU engine's graph keeps the raw logits and carries the temperatures, which served_logits divides
    by (the Triton python backend's path); the GPU graph, served by Triton as it is, divides inside."""
    model = tiny_model(TEMPERATURES)
    ads = served_example(model.config, batch=3)
    pytorch = served_logits(model, **ads)
    with torch.inference_mode():
        raw = model(**model_inputs(**ads)).logits
    assert (pytorch["verdict"] - raw["verdict"]).abs().max().item() > 100 * TOLERANCE  # a visible difference
    engine = OnnxRuntimeAuditModel(export_onnx(model, model_inputs(**ads), tmp_path / "model.onnx"), threads=1)
    assert engine.temperatures == TEMPERATURES
    onnx_runtime = served_logits(engine, **ads)
    for task in model.config.tasks:
        torch.testing.assert_close(onnx_runtime[task], pytorch[task], atol=1e-4, rtol=1e-4)
    checked = check_gpu_graph(gpu_graph(model), model)  # against served_logits: raises past the tolerance
    assert checked["max_abs_logit_difference"] <= TOLERANCE


def assert_a_calibration_record(record: dict, temperatures: dict, validation_samples: int) -> None:
    assert record["fitted_on"] == "validation" and record["validation_samples"] == validation_samples
    assert record["reliability_diagram"] == DIAGRAM_FILE
    assert {task: row["temperature"] for task, row in record["tasks"].items()} == pytest.approx(temperatures)
    assert {"verdict", "violation"} <= set(record["tasks"])
    for task, row in record["tasks"].items():
        assert LOWEST_TEMPERATURE <= row["temperature"] <= HIGHEST_TEMPERATURE
        assert row["at_search_bound"] == (not 0.051 < row["temperature"] < 19.9)
        assert row["validation"]["samples"] == validation_samples
        # T minimises the validation NLL over a range that holds 1.0: it can only lower it
        assert row["validation"]["nll_after"] <= row["validation"]["nll_before"] + 1e-9, task
        for split in ("validation", "test"):
            assert 0 <= row[split]["ece_after"] <= 1 and 0 <= row[split]["ece_before"] <= 1


def test_teacher_training_fits_its_temperatures_on_validation(teacher):
    metrics = json.loads((teacher / "metrics.json").read_text())
    temperatures = AuditModel.from_pretrained(teacher).config.temperatures
    assert set(temperatures) == set(AuditModelConfig.load(teacher).tasks)
    assert_a_calibration_record(metrics["calibration"], temperatures, metrics["validation"]["samples"])
    assert metrics["calibration"]["test_samples"] == metrics["test"]["samples"]
    assert (teacher / DIAGRAM_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_compression_report_carries_the_students_calibration(student):
    folder, report = student
    temperatures = AuditModel.from_pretrained(folder).config.temperatures
    assert_a_calibration_record(report["calibration"], temperatures, report["student"]["validation"]["samples"])
    assert json.loads((folder / REPORT_FILE).read_text())["calibration"] == report["calibration"]
    assert (folder / DIAGRAM_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def without_validation(dataset, folder):
    folder.mkdir()
    for name in ("train.jsonl", "test.jsonl"):
        shutil.copy(dataset / name, folder / name)
    (folder / "images").symlink_to(dataset / "images")
    return folder


def test_a_teacher_trained_without_a_validation_split_is_not_calibrated_and_says_why(dataset, tmp_path):
    """No temperature is fitted on the test split: the teacher is served at 1.0 and metrics.json says why."""
    data = without_validation(dataset, tmp_path / "data")
    messages = []
    metrics = train_teacher(data, tmp_path / "teacher", "tiny", epochs=1, limit=32, log=messages.append)
    assert metrics["calibration"] is None and "validation.jsonl" in metrics["calibration_skipped"]
    assert any(m.startswith("calibration skipped") for m in messages)
    assert json.loads((tmp_path / "teacher" / "metrics.json").read_text())["calibration"] is None
    assert AuditModelConfig.load(tmp_path / "teacher").temperatures == {}
    assert not (tmp_path / "teacher" / DIAGRAM_FILE).exists()


def test_a_student_without_a_validation_split_drops_the_temperatures_of_its_teacher(teacher, dataset):
    """compress's last step on a data set without validation: the student, cut from a calibrated teacher,
    is served at 1.0 (the teacher's temperatures fitted other logits) and the report entry says why."""
    model = AuditModel.from_pretrained(teacher).eval()
    assert set(model.config.temperatures) == set(model.config.tasks)  # the calibrated session teacher
    processor = AuditProcessor.from_folder(model.config, teacher)
    ads = encode_split(dataset, "train", processor, model.config.tasks, limit=8)
    test = encode_split(dataset, "test", processor, model.config.tasks, limit=8)
    messages = []
    context = Context(load_recipe(TINY_RECIPE), dataset, ads, cache_teacher(model, ads), test,
                      {}, log=messages.append, choices=None)
    calibration, entry = calibrate_student(model, context)
    assert calibration is None and entry["calibration"] is None
    assert "validation.jsonl" in entry["calibration_skipped"]
    assert model.config.temperatures == {} and messages[-1].startswith("calibration skipped")
