"""`adaudit export --target triton-gpu`: the standard ONNX graph for Triton's onnxruntime backend with
TensorRT, its config.pbtxt, and the python-backend model's refusal of a GPU instance without CUDA.

No test here runs Triton's onnxruntime backend: the tritonserver bundled in nvidia-pytriton has only
the python backend (docs/serving.md). The graph is checked in ONNX Runtime on the CPU, the config by
parsing it with tritonclient's model_config_pb2 and by reading it the way the gateway does.
"""

import asyncio
import importlib.util
import json
import shutil
import subprocess
import sys
import types

import numpy as np
import onnx
import pytest
import torch
from google.protobuf import json_format, text_format
from onnx import numpy_helper
from tritonclient.grpc import model_config_pb2

from adaudit.export.onnx_gpu import (FLOAT16_MAX, GpuGraphError, check_gpu_graph, foreign_operators, gpu_graph,
                                     logit_differences, served_example)
from adaudit.export.repository import (LOW_PRIORITY_QUEUE, TRITON_MODEL_FILE, ServingSettings, export_model)
from adaudit.models.modeling import AuditModel

from conftest import student_variant

# ONNX Runtime (CPU, float32) against PyTorch's served logits; measured: about 1e-7 (graph_check.json)
MAX_ABS_DIFFERENCE = 1e-4
GPU = dict(target="triton-gpu", instance_kind="KIND_GPU", instance_count=2, max_queue_delay_microseconds=100)
_graphs: dict = {}


def _graph(folder):
    """The GPU graph of a model folder, traced once per session (tracing takes a few seconds)."""
    if str(folder) not in _graphs:
        model = AuditModel.from_pretrained(folder).eval()
        _graphs[str(folder)] = (model, gpu_graph(model))
    return _graphs[str(folder)]


@pytest.fixture(params=["teacher", "student"])
def exported(request):
    """(name, model, graph) for the tiny teacher and for the pruned, distilled student."""
    folder = request.getfixturevalue(request.param)
    folder = folder[0] if isinstance(folder, tuple) else folder
    return (request.param, *_graph(folder))


def test_the_gpu_graph_holds_only_standard_operators(exported):
    """Default-domain operators only (no com.microsoft contrib node, which TensorRT cannot take), valid
    for onnx.checker, and every constant finite in float16 (the padding bias is -10000, not -3.4e38)."""
    _, model, graph = exported
    assert foreign_operators(graph) == []
    assert {node.domain for node in graph.graph.node} <= {"", "ai.onnx"}
    assert [(opset.domain, opset.version) for opset in graph.opset_import] == [("", 17)]
    onnx.checker.check_model(graph, full_check=True)
    kinds = {node.op_type for node in graph.graph.node}
    assert {"Softmax", "LayerNormalization"} <= kinds and not kinds & {"Attention", "MultiHeadAttention"}
    for initializer in graph.graph.initializer:
        values = numpy_helper.to_array(initializer)
        if values.dtype.kind == "f":
            assert np.abs(values[np.isfinite(values)]).max(initial=0) <= FLOAT16_MAX, initializer.name
    for node in graph.graph.node:
        for attribute in node.attribute:
            if node.op_type in ("Constant", "ConstantOfShape") and attribute.name == "value":
                values = numpy_helper.to_array(attribute.t)
                if values.dtype.kind == "f":
                    assert np.abs(values[np.isfinite(values)]).max(initial=0) <= FLOAT16_MAX, node.name


def test_the_gpu_graph_takes_the_uint8_picture_and_answers_per_task(exported):
    _, model, graph = exported
    config = model.config

    def shape(value):
        return [d.dim_value or d.dim_param for d in value.type.tensor_type.shape.dim]

    inputs = {value.name: (value.type.tensor_type.elem_type, shape(value)) for value in graph.graph.input}
    assert inputs == {"image_bytes": (onnx.TensorProto.UINT8, ["batch", 3, config.image_size, config.image_size]),
                      "input_ids": (onnx.TensorProto.INT64, ["batch", "length"]),
                      "attention_mask": (onnx.TensorProto.INT64, ["batch", "length"])}
    assert {value.name: shape(value) for value in graph.graph.output} == {
        task: ["batch", len(classes)] for task, classes in config.tasks.items()}


@pytest.mark.parametrize("batch, length", [(1, None), (3, None), (1, 5), (3, 7), (2, 1)])
def test_onnx_runtime_gives_pytorch_logits_at_any_batch_and_copy_length(exported, batch, length):
    """ONNX Runtime's logits (the graph normalises the picture itself, and runs the padded copy untrimmed)
    equal PyTorch's served forward (normalised and trimmed, models/serving.py) within MAX_ABS_DIFFERENCE."""
    name, model, graph = exported
    case = served_example(model.config, batch, length, seed=batch * 100 + (length or 0))
    (result,) = logit_differences(graph, model, [case])
    assert (result["batch"], result["length"]) == (batch, length or model.config.max_text_length)
    worst = max(result["max_abs_difference"].values())
    assert worst <= MAX_ABS_DIFFERENCE, f"{name}: {result}"


def test_a_version_of_the_same_architecture_gets_its_own_engine_names(student, tmp_path):
    """ONNX Runtime's TensorRT engine cache keys an engine by the graph's value names, not its weights:
    new weights in the same architecture must rename the values (or version 2 would run version 1's
    engine), and the same weights must keep them (so a restarted pod finds its engines)."""
    folder, _ = student
    _, graph = _graph(folder)
    again = gpu_graph(AuditModel.from_pretrained(folder))
    other = gpu_graph(AuditModel.from_pretrained(student_variant(folder, tmp_path / "retrained")))

    def names(model):
        return {i.name for i in model.graph.initializer} | {o for n in model.graph.node for o in n.output}

    outputs = {o.name for o in graph.graph.output}
    assert names(again) == names(graph)
    assert names(other) & names(graph) == outputs  # only the task outputs keep their names


def _parse(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_export_writes_a_checked_graph_and_a_config_that_parses(student, tmp_path):
    folder, _ = student
    repo = tmp_path / "repo"
    version = export_model(folder, repo, "student", 1, ServingSettings(**GPU, trt_cache="/var/cache/trt"))
    assert sorted(p.name for p in version.iterdir()) == ["checksums.json", "graph_check.json", "model", "model.onnx"]
    checked = json.loads((version / "graph_check.json").read_text())
    assert checked["max_abs_logit_difference"] <= MAX_ABS_DIFFERENCE and checked["target"] == "triton-gpu"
    assert {(case["batch"], case["length"]) for case in checked["cases"]} >= {(3, 48), (1, 16), (2, 1)}
    assert {"model.onnx", "graph_check.json"} <= set(json.loads((version / "checksums.json").read_text()))
    onnx.checker.check_model(str(version / "model.onnx"), full_check=True)

    config = _parse((repo / "student" / "config.pbtxt").read_text())
    assert config.platform == "onnxruntime_onnx" and not config.backend and config.max_batch_size == 32
    assert config.default_model_filename == "model.onnx"
    assert [(g.kind, g.count) for g in config.instance_group] == [(model_config_pb2.ModelInstanceGroup.KIND_GPU, 2)]
    batching = config.dynamic_batching
    assert list(batching.preferred_batch_size) == [8, 16, 32] and batching.max_queue_delay_microseconds == 100
    assert batching.priority_levels == 2 and batching.default_priority_level == 1
    low = batching.priority_queue_policy[2]
    assert low.max_queue_size == LOW_PRIORITY_QUEUE and low.timeout_action == model_config_pb2.ModelQueuePolicy.REJECT
    (accelerator,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    parameters = dict(accelerator.parameters)
    assert accelerator.name == "tensorrt" and parameters["precision_mode"] == "FP16"
    assert parameters["trt_engine_cache_enable"] == "1" and parameters["trt_engine_cache_path"] == "/var/cache/trt/student"
    assert parameters["trt_profile_min_shapes"] == "image_bytes:1x3x32x32,input_ids:1x1,attention_mask:1x1"
    assert parameters["trt_profile_max_shapes"] == "image_bytes:32x3x32x32,input_ids:32x48,attention_mask:32x48"
    assert parameters["trt_profile_opt_shapes"] == "image_bytes:32x3x32x32,input_ids:32x48,attention_mask:32x48"
    assert [w.batch_size for w in config.model_warmup] == [1, 8, 32]
    for warmup in config.model_warmup:
        assert set(warmup.inputs) == {"image_bytes", "input_ids", "attention_mask"}
        assert all(tensor.zero_data for tensor in warmup.inputs.values())
    assert config.version_policy.latest.num_versions == 2
    assert config.parameters["tokenizer"].string_value == "tokenizer.json"  # the pruned vocabulary's


def _describe(repo, name):
    from adaudit.service.backends import TritonBackend
    from adaudit.service.triton_transport import TritonTransport

    text = (repo / name / "config.pbtxt").read_text()
    as_json = json_format.MessageToDict(_parse(text), preserving_proto_field_name=True)

    class Transport(TritonTransport):
        protocol = "http"

        async def metadata(self, model, version):
            return {"versions": ["1"]}

        async def config(self, model, version):
            return as_json

        async def infer(self, model, version, inputs):
            raise AssertionError("not called")

        async def ready(self, model, version=None):
            return True

        async def close(self):
            pass

    return asyncio.run(TritonBackend(Transport("fake:8000"), repo).describe(name))


def test_the_gateway_reads_the_gpu_config_like_the_python_backend_one(student, tmp_path):
    """Same inputs, outputs, dims, max_batch_size and tokenizer folder as the python-backend config: the
    gateway's TritonBackend.describe (service/backends.py, unchanged) gives the same ModelSpec for both."""
    folder, _ = student
    export_model(folder, tmp_path / "cpu", "student", 1, ServingSettings(engine="torch"))
    export_model(folder, tmp_path / "gpu", "student", 1, ServingSettings(**GPU))
    cpu, gpu = _describe(tmp_path / "cpu", "student"), _describe(tmp_path / "gpu", "student")
    assert (gpu.image_size, gpu.max_text_length, gpu.tasks, gpu.max_batch_size) == \
           (cpu.image_size, cpu.max_text_length, cpu.tasks, cpu.max_batch_size)
    assert gpu.vocabulary_folder == tmp_path / "gpu" / "student" / "1" / "model"


def test_a_graph_that_differs_from_pytorch_is_refused_and_nothing_is_written(student, tmp_path, monkeypatch):
    from adaudit.export import onnx_gpu

    folder, _ = student
    traced = onnx_gpu.gpu_graph

    def drifted(model):  # as a wrong export would be: every weight matrix 2% off
        graph = traced(model)
        for initializer in graph.graph.initializer:
            values = numpy_helper.to_array(initializer)
            if values.dtype == np.float32 and values.ndim == 2:
                initializer.CopyFrom(numpy_helper.from_array(values * 1.02, initializer.name))
        return graph

    monkeypatch.setattr(onnx_gpu, "gpu_graph", drifted)
    with pytest.raises(GpuGraphError, match=r"logits differ from PyTorch's by .* \(allowed 0.0001\).*nothing written"):
        export_model(folder, tmp_path / "repo", "student", 1, ServingSettings(**GPU))
    assert not (tmp_path / "repo").exists()
    with pytest.raises(GpuGraphError, match="differ"):
        check_gpu_graph(drifted(AuditModel.from_pretrained(folder)), AuditModel.from_pretrained(folder))


def test_one_model_does_not_mix_targets(student, tmp_path):
    """One config.pbtxt names one backend: a GPU-target version is refused beside a python-backend one (and
    the other way round), nothing written, the old config as it was."""
    folder, _ = student
    repo = tmp_path / "repo"
    export_model(folder, repo, "student", 1, ServingSettings(engine="torch"))
    before = (repo / "student" / "config.pbtxt").read_text()
    with pytest.raises(ValueError, match="exported for --target triton-cpu, not triton-gpu"):
        export_model(folder, repo, "student", 2, ServingSettings(**GPU))
    assert not (repo / "student" / "2").exists() and (repo / "student" / "config.pbtxt").read_text() == before
    export_model(folder, repo, "student_gpu", 1, ServingSettings(**GPU))
    with pytest.raises(ValueError, match="exported for --target triton-gpu, not triton-cpu"):
        export_model(folder, repo, "student_gpu", 2, ServingSettings(engine="torch"))
    export_model(folder, repo, "student_gpu", 2, ServingSettings(**GPU))  # same target: rolls out beside it
    assert sorted(p.name for p in (repo / "student_gpu").iterdir()) == ["1", "2", "config.pbtxt"]


@pytest.mark.parametrize("changes, fragment", [
    ({"target": "tensorrt"}, "target must be one of triton-cpu, triton-gpu, not 'tensorrt'"),
    ({"target": "triton-gpu", "trt_cache": "trt"}, "trt_cache must be an absolute path"),
])
def test_bad_gpu_settings_are_refused(changes, fragment):
    with pytest.raises(ValueError, match=fragment):
        ServingSettings(**changes)


def _adaudit(*args):
    return subprocess.run([sys.executable, "-m", "adaudit.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def test_the_cli_exports_the_gpu_target_and_names_a_bad_one(student, tmp_path):
    folder, _ = student
    result = _adaudit("export", "--student", folder, "--out", tmp_path / "repo", "--target", "triton-gpu")
    assert result.returncode == 0, result.stderr
    config = _parse((tmp_path / "repo" / "student" / "config.pbtxt").read_text())
    assert config.platform == "onnxruntime_onnx"
    assert [(g.kind, g.count) for g in config.instance_group] == [(model_config_pb2.ModelInstanceGroup.KIND_GPU, 2)]
    assert config.dynamic_batching.max_queue_delay_microseconds == 100  # the GPU target's defaults
    assert dict(config.optimization.execution_accelerators.gpu_execution_accelerator[0].parameters)[
        "trt_engine_cache_path"] == "/trt-cache/student"
    bad = _adaudit("export", "--student", folder, "--out", tmp_path / "bad", "--target", "tensorrt")
    lines = bad.stderr.strip().splitlines()
    assert bad.returncode == 1 and len(lines) == 1, bad.stderr
    assert lines[0] == "error: target must be one of triton-cpu, triton-gpu, not 'tensorrt'"
    assert not (tmp_path / "bad").exists()


# --- the python-backend model on a GPU instance without CUDA -------------------------------------------
def _triton_model(monkeypatch):
    """export/triton_model.py as Triton's python backend imports it, with a stand-in for its utils module."""
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", types.ModuleType("triton_python_backend_utils"))
    spec = importlib.util.spec_from_file_location("adaudit_triton_model_under_test", TRITON_MODEL_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _args(version, kind: str) -> dict:
    config = (version.parent / "config.pbtxt").read_text()
    as_json = json_format.MessageToJson(_parse(config), preserving_proto_field_name=True)
    return {"model_config": as_json, "model_repository": str(version.parent), "model_version": version.name,
            "model_name": version.parent.name, "model_instance_name": f"{version.parent.name}_0_0",
            "model_instance_kind": kind, "model_instance_device_id": "0"}


def test_a_gpu_instance_without_cuda_refuses_to_load(student, tmp_path, monkeypatch):
    """A KIND_GPU python-backend instance whose torch sees no CUDA device fails in initialize with a message
    that says so (Triton shows it as the model's load error) instead of serving in float32 on the CPU.
    (Where Triton itself sees no GPU it refuses KIND_GPU before initialize: 'has kind KIND_GPU but no GPUs
    are available'; this covers a GPU node whose torch has no CUDA.) CPU instances load as before."""
    module = _triton_model(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    folder, _ = student
    gpu = export_model(folder, tmp_path / "gpu", "student", 1, ServingSettings(instance_kind="KIND_GPU", engine="torch"))
    with pytest.raises(RuntimeError, match=r"student instance student_0_0 is KIND_GPU, but torch .* sees no CUDA "
                                           r"device: refusing to serve on the CPU in float32"):
        module.TritonPythonModel().initialize(_args(gpu, "GPU"))
    cpu = export_model(folder, tmp_path / "cpu", "student", 1, ServingSettings(threads=1))
    instance = module.TritonPythonModel()
    instance.initialize(_args(cpu, "CPU"))
    assert instance.device.type == "cpu" and instance.dtype == torch.float32
    assert type(instance.model).__name__ == "OnnxRuntimeAuditModel"  # the CPU default engine, unchanged


# --- benchmarks/gpu-serving.sh: never run here (no GPU); what can be checked without one -------------
def test_the_gpu_benchmark_carries_the_exported_tensorrt_options_and_refuses_without_a_gpu(student, tmp_path):
    """benchmarks/gpu_serving.py turns the export's config into ONNX Runtime's TensorRT options and a
    python-backend stand-in for the bundled server (same inputs, batching, warmup, KIND_GPU); without a
    GPU the script and the module refuse to start with one error line."""
    from benchmarks.gpu_serving import MODEL, bench_repository, trt_provider_options

    folder, _ = student
    export_model(folder, tmp_path / "repo", "student", 1, ServingSettings(**GPU))
    options = trt_provider_options(tmp_path / "repo" / "student" / "config.pbtxt", tmp_path / "cache")
    assert options["trt_fp16_enable"] == "True" and options["trt_engine_cache_enable"] == "1"
    assert options["trt_engine_cache_path"] == str(tmp_path / "cache")
    assert options["trt_profile_max_shapes"] == "image_bytes:32x3x32x32,input_ids:32x48,attention_mask:32x48"
    providers = [("TensorrtExecutionProvider", options), ("CUDAExecutionProvider", {})]
    bench_repository(tmp_path / "repo" / "student", tmp_path / "bench", providers)
    config = _parse((tmp_path / "bench" / MODEL / "config.pbtxt").read_text())
    native = _parse((tmp_path / "repo" / "student" / "config.pbtxt").read_text())
    assert config.backend == "python" and not config.platform and not config.HasField("optimization")
    assert (config.input, config.output, config.dynamic_batching, config.instance_group, config.model_warmup) == \
           (native.input, native.output, native.dynamic_batching, native.instance_group, native.model_warmup)
    assert json.loads(config.parameters["ort_providers"].string_value) == [list(p) for p in providers]
    assert sorted(p.name for p in (tmp_path / "bench" / MODEL / "1").iterdir()) == ["model.onnx", "model.py"]
    if shutil.which("nvidia-smi") is None or subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode:
        script = subprocess.run(["bash", "benchmarks/gpu-serving.sh"], capture_output=True, text=True, timeout=60,
                                cwd=TRITON_MODEL_FILE.parents[1])
        assert script.returncode == 1 and "runs only on a GPU machine" in script.stderr
