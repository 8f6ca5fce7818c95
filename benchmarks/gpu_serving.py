"""The student's Triton compute on a GPU, for `adaudit export --target triton-gpu`.

NEVER RUN YET: no machine of the project has a GPU. Written for when one is lent; run it through
benchmarks/gpu-serving.sh, which makes the environment it needs (onnxruntime-gpu and TensorRT's
libraries from PyPI beside the project's packages) and refuses to start without an NVIDIA GPU.
No figure of it is in the docs until it has run on one.

    python -m benchmarks.gpu_serving --student runs/shape/student --work runs/gpu-serving --out benchmarks/results

What it measures, for the student exported with the GPU target (model.onnx + config.pbtxt):

1. ONNX Runtime in this process, on the GPU: the TensorRT execution provider with the options of
   the config's `gpu_execution_accelerator` (FP16, the optimisation profile, the engine cache) and
   the CUDA provider in float32; p50/p90 of one run at batch 1 and batch 32, inputs handed over
   from host memory as Triton hands them over; and TensorRT FP16's logits against PyTorch's
   (float32, CPU): the largest absolute difference and how often the argmax agrees.
2. Triton's compute at batch 1 and 32: the tritonserver bundled in nvidia-pytriton has only the
   python backend, so the same model.onnx runs in a python-backend model
   (benchmarks/gpu_serving_model.py) with the same TensorRT options, on KIND_GPU instances, with the
   export's dynamic batching and warmup. Compute per execution comes from Triton's statistics API
   (/v2/models/<m>/stats, batch_stats). NVIDIA's tritonserver container serving the config adaudit
   writes (native onnxruntime backend, no python stub between Triton and ONNX Runtime) is the
   production path; its figures should come out lower than these.

Not measured here: the gateway's lift from concurrency 1 to 32 on the GPU (benchmarks/serving.py
exports CPU models; it needs a GPU option first).
Results: OUT/gpu-serving.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

MODEL = "student_gpu"  # the python-backend stand-in in the bundled server
BATCHES = (1, 32)
# Triton's keys for ONNX Runtime's TensorRT options (onnxruntime_backend's README) -> ONNX Runtime's names
TRT_OPTIONS = {"max_workspace_size_bytes": "trt_max_workspace_size", "trt_engine_cache_enable": "trt_engine_cache_enable",
               "trt_engine_cache_path": "trt_engine_cache_path",
               "trt_force_sequential_engine_build": "trt_force_sequential_engine_build",
               "trt_profile_min_shapes": "trt_profile_min_shapes", "trt_profile_opt_shapes": "trt_profile_opt_shapes",
               "trt_profile_max_shapes": "trt_profile_max_shapes"}


def gpu_machine() -> dict:
    """The GPU (nvidia-smi) and the ONNX Runtime build; raises SystemExit without a usable GPU."""
    import onnxruntime

    try:
        line = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                              capture_output=True, text=True, check=True, timeout=30).stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        raise SystemExit("error: no NVIDIA GPU here (nvidia-smi failed): this benchmark runs only on a GPU machine")
    available = onnxruntime.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        raise SystemExit(f"error: this onnxruntime ({onnxruntime.__version__}) has no CUDA provider (available: "
                         f"{available}): run through benchmarks/gpu-serving.sh, which installs onnxruntime-gpu")
    name, driver, memory = [part.strip() for part in line.split(",")]
    return {"gpu": name, "driver": driver, "gpu_memory": memory, "onnxruntime": onnxruntime.__version__,
            "onnxruntime_providers": available, "python": sys.version.split()[0]}


def trt_provider_options(config_path: Path, cache: Path) -> dict[str, str]:
    """ONNX Runtime's TensorRT options from the export's config.pbtxt (its engine cache moved to `cache`)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = text_format.Parse(config_path.read_text(), model_config_pb2.ModelConfig())
    (accelerator,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    parameters = dict(accelerator.parameters)
    options = {ort: parameters[triton] for triton, ort in TRT_OPTIONS.items() if triton in parameters}
    options["trt_fp16_enable"] = "True" if parameters.get("precision_mode") == "FP16" else "False"
    options["trt_engine_cache_path"] = str(cache)
    cache.mkdir(parents=True, exist_ok=True)
    return options


def _percentiles(times_ms: list[float]) -> dict:
    ordered = sorted(times_ms)
    return {"p50_ms": statistics.median(ordered), "p90_ms": ordered[int(0.9 * (len(ordered) - 1))], "runs": len(ordered)}


def in_process(graph: Path, providers: list, inputs: dict[int, dict], rounds: int) -> tuple[dict, object]:
    """p50/p90 of session.run at each batch size (after warmup) and the providers that really ran; and the session."""
    import onnxruntime

    if hasattr(onnxruntime, "preload_dlls"):
        onnxruntime.preload_dlls()
    session = onnxruntime.InferenceSession(str(graph), providers=providers)
    result = {"providers": session.get_providers()}
    for batch, feeds in inputs.items():
        for _ in range(10):  # engine build (first run) and warmup
            session.run(None, feeds)
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            session.run(None, feeds)
            times.append((time.perf_counter() - started) * 1000)
        result[f"batch_{batch}"] = _percentiles(times)
    return result, session


def fp16_agreement(session, model, example) -> dict:
    """TensorRT FP16's logits against PyTorch's float32 served logits on `example` (batch 32)."""
    from adaudit.models.serving import served_logits

    names = [output.name for output in session.get_outputs()]
    ours = dict(zip(names, session.run(names, {k: v.numpy() for k, v in example.items()})))
    theirs = served_logits(model, **example)
    return {task: {"max_abs_difference": float(np.abs(ours[task] - theirs[task].numpy()).max()),
                   "argmax_agreement": float((ours[task].argmax(1) == theirs[task].numpy().argmax(1)).mean())}
            for task in names}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def bench_repository(exported: Path, repository: Path, providers: list) -> None:
    """The bundled server's stand-in: the export's config turned into a python-backend one (same inputs,
    outputs, batching, priorities, warmup and KIND_GPU instances), the same model.onnx."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = text_format.Parse((exported / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    config.name, config.platform, config.backend = MODEL, "", "python"
    config.ClearField("default_model_filename")
    config.ClearField("optimization")
    config.parameters["ort_providers"].string_value = json.dumps(providers)
    version = repository / MODEL / "1"
    version.mkdir(parents=True, exist_ok=True)
    (repository / MODEL / "config.pbtxt").write_text(text_format.MessageToString(config))
    shutil.copy2(exported / "1" / "model.onnx", version / "model.onnx")
    shutil.copy2(Path(__file__).with_name("gpu_serving_model.py"), version / "model.py")


def through_triton(repository: Path, inputs: dict[int, dict], rounds: int, log: Path) -> dict:
    """Sequential requests of each batch size to the bundled tritonserver: compute per execution from
    its statistics, and the client's round trip."""
    import tritonclient.grpc as grpc

    from adaudit.export.server import TritonServer

    http, port, metrics = free_port(), free_port(), free_port()
    result = {}
    with TritonServer(repository, http, port, metrics, log_file=log, ready_timeout=900):
        client = grpc.InferenceServerClient(f"127.0.0.1:{port}")

        def stats() -> dict[int, dict]:
            (entry,) = client.get_inference_statistics(MODEL, as_json=True)["model_stats"]
            return {int(b["batch_size"]): b for b in entry.get("batch_stats", [])}

        for batch, feeds in inputs.items():
            tensors = []
            for name, array in feeds.items():
                tensor = grpc.InferInput(name, list(array.shape), "UINT8" if array.dtype == np.uint8 else "INT64")
                tensor.set_data_from_numpy(array)
                tensors.append(tensor)
            for _ in range(10):
                client.infer(MODEL, tensors)
            before = stats().get(batch, {})
            times = []
            for _ in range(rounds):
                started = time.perf_counter()
                client.infer(MODEL, tensors)
                times.append((time.perf_counter() - started) * 1000)
            after = stats()[batch]
            figures = {}
            for part in ("compute_input", "compute_infer", "compute_output"):
                count = int(after[part].get("count", 0)) - int(before.get(part, {}).get("count", 0))
                ns = int(after[part].get("ns", 0)) - int(before.get(part, {}).get("ns", 0))
                figures[f"{part}_ms_per_execution"] = ns / max(count, 1) / 1e6
                figures["executions"] = count
            result[f"batch_{batch}"] = {**figures, "client_round_trip": _percentiles(times),
                                        "compute_infer_ms_per_ad": figures["compute_infer_ms_per_execution"] / batch}
        client.close()
    return result


def report(summary: dict) -> str:
    machine = summary["machine"]
    lines = ["# The student's compute on a GPU (`adaudit export --target triton-gpu`)", "",
             f"{machine['gpu']} (driver {machine['driver']}), onnxruntime {machine['onnxruntime']}, "
             f"student `{summary['student']}`, {summary['rounds']} runs per point. Command: `{summary['command']}`.", "",
             "| where | engine | batch 1 p50 ms | batch 32 p50 ms | batch 32 per ad ms |", "| --- | --- | --- | --- | --- |"]
    for label, figures in summary["in_process"].items():
        one, many = figures["batch_1"]["p50_ms"], figures["batch_32"]["p50_ms"]
        lines.append(f"| ONNX Runtime in process | {label} ({', '.join(figures['providers'])}) | {one:.3f} | "
                     f"{many:.3f} | {many / 32:.4f} |")
    triton = summary["triton"]
    one, many = triton["batch_1"]["compute_infer_ms_per_execution"], triton["batch_32"]["compute_infer_ms_per_execution"]
    lines.append(f"| Triton (bundled, python backend), compute_infer | tensorrt-fp16 | {one:.3f} | {many:.3f} | {many / 32:.4f} |")
    lines += ["", "TensorRT FP16 against PyTorch float32 (batch 32): " + ", ".join(
        f"{task} max |diff| {v['max_abs_difference']:.3g}, argmax agreement {v['argmax_agreement']:.3f}"
        for task, v in summary["fp16_vs_pytorch"].items()), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--student", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("runs/gpu-serving"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()

    from adaudit.core.files import write_results
    from adaudit.export.onnx_gpu import served_example
    from adaudit.export.repository import ServingSettings, export_model
    from adaudit.models.modeling import AuditModel

    machine = gpu_machine()
    started = time.perf_counter()
    exported = args.work / "repo"
    shutil.rmtree(exported, ignore_errors=True)
    version = export_model(args.student, exported, "student", 1, ServingSettings(
        target="triton-gpu", instance_kind="KIND_GPU", instance_count=2, max_queue_delay_microseconds=100,
        trt_cache=str((args.work / "trt-cache").resolve())))
    print(f"exported {version} (graph check: {json.loads((version / 'graph_check.json').read_text())['max_abs_logit_difference']:.3g})",
          flush=True)
    model = AuditModel.from_pretrained(args.student).eval()
    examples = {batch: served_example(model.config, batch, seed=batch) for batch in BATCHES}
    feeds = {batch: {name: tensor.numpy() for name, tensor in example.items()} for batch, example in examples.items()}
    options = trt_provider_options(exported / "student" / "config.pbtxt", (args.work / "trt-cache" / "in-process").resolve())
    variants = {"tensorrt-fp16": [("TensorrtExecutionProvider", options), ("CUDAExecutionProvider", {})],
                "cuda-fp32": [("CUDAExecutionProvider", {})]}
    measured, sessions = {}, {}
    for label, providers in variants.items():
        print(f"ONNX Runtime in process: {label}", flush=True)
        measured[label], sessions[label] = in_process(version / "model.onnx", providers, feeds, args.rounds)
    agreement = fp16_agreement(sessions["tensorrt-fp16"], model, examples[32])
    sessions.clear()
    print("Triton (bundled tritonserver, python backend, TensorRT FP16)", flush=True)
    triton_options = {**options, "trt_engine_cache_path": str((args.work / "trt-cache" / "triton").resolve())}
    repository = args.work / "bench-repo"
    shutil.rmtree(repository, ignore_errors=True)
    bench_repository(exported / "student", repository,
                     [("TensorrtExecutionProvider", triton_options), ("CUDAExecutionProvider", {})])
    triton = through_triton(repository, feeds, args.rounds, args.work / "triton.log")
    summary = {"command": " ".join(["python", "-m", "benchmarks.gpu_serving", *sys.argv[1:]]),
               "student": str(args.student), "machine": machine, "rounds": args.rounds, "in_process": measured,
               "fp16_vs_pytorch": agreement, "triton": triton, "trt_options": options,
               "wall_seconds": time.perf_counter() - started}
    write_results(args.out, "gpu-serving", summary, report(summary))
    print(report(summary))


if __name__ == "__main__":
    main()
