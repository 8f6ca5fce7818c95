"""Writing a Triton model repository from adaudit model folders, for one of two targets.

`triton-cpu` (the default): a python-backend model (`KIND_CPU`, or `KIND_GPU` running eager PyTorch):

    REPO/<name>/config.pbtxt
    REPO/<name>/<version>/model.py        (export/triton_model.py)
    REPO/<name>/<version>/model/          (config.json, model.safetensors, vocab.txt or tokenizer.json)
    REPO/<name>/<version>/checksums.json  (sha256 of every file above, checked at load)

`triton-gpu`: Triton's native onnxruntime backend with TensorRT on `KIND_GPU` instances
(`gpu_config_pbtxt`; the graph: export/onnx_gpu.py). No python stub, no torch in the server:

    REPO/<name>/config.pbtxt              (platform onnxruntime_onnx, TensorRT FP16, warmup, priorities)
    REPO/<name>/<version>/model.onnx      (standard operators, uint8 picture in, one output per task)
    REPO/<name>/<version>/model/          (the model folder: the gateway reads the tokenizer from it)
    REPO/<name>/<version>/graph_check.json (ONNX Runtime vs PyTorch, the largest logit difference)
    REPO/<name>/<version>/checksums.json  (written, but the native backend does not check it at load)

Each model gets dynamic batching, an instance group (KIND_CPU here, KIND_GPU in production)
and a version policy that serves the latest `keep_versions` versions, so a new student
version can roll out beside the old one: export again with `--version N+1`. The `tokenizer`
parameter says whether the model takes the generated vocabulary or brings its own tokenizer
(a pruned vocabulary), which a gateway reads from REPO/<name>/<version>/model/ (its
`model_repository` setting).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from adaudit.core.files import atomic_folder, atomic_write_text
from adaudit.models.configuration import AuditModelConfig
from adaudit.models.labels import TAXONOMY_PARAMETER, taxonomy_json
from adaudit.models.modeling import AuditModel
from adaudit.models.preprocessing import IMAGE_FIT_PARAMETER, SERVED_INPUTS
from adaudit.models.tokenizer import GENERATED_TOKENIZER, TOKENIZER_PARAMETER, tokenizer_kind

SERVED_INPUT_MARK = "SERVED_INPUTS"  # in every model.py that reads the inputs config_pbtxt declares

TRITON_MODEL_FILE = Path(__file__).with_name("triton_model.py")
CHECKSUMS_FILE = "checksums.json"
CPU_PRIORITIES = ("normal", "idle")
ENGINES = ("torch", "onnxruntime")
ONNX_FILE = "model.onnx"
GRAPH_CHECK_FILE = "graph_check.json"
TARGETS = ("triton-cpu", "triton-gpu")
# what a target gets unless told otherwise (the CLI's --instances and --max-queue-delay-us): on a GPU two
# instances overlap one execution's host work with the other's kernels, and a short queue delay lets
# batches form, which a GPU turns into throughput at little latency
TARGET_DEFAULTS = {"triton-cpu": {"instance_count": 1, "max_queue_delay_microseconds": 0},
                   "triton-gpu": {"instance_count": 2, "max_queue_delay_microseconds": 100}}
WARMUP_BATCH_SIZES = (1, 8, 32)  # the GPU target's model_warmup, up to max_batch_size
# priority levels of the GPU target's dynamic batcher: 1 (the default, every request the gateway sends
# today) runs before 2; a level-2 request waits at most LOW_PRIORITY_TIMEOUT_US and is refused past
# LOW_PRIORITY_QUEUE requests in its queue
PRIORITY_LEVELS, DEFAULT_PRIORITY = 2, 1
LOW_PRIORITY_TIMEOUT_US, LOW_PRIORITY_QUEUE = 1_000_000, 128
TRT_WORKSPACE_BYTES = 1 << 30


@dataclass
class ServingSettings:
    max_batch_size: int = 32
    preferred_batch_sizes: list[int] = field(default_factory=lambda: [8, 16, 32])
    # 0: a lone request never waits for company. Batches still form: the gateway sends the ads of
    # concurrent requests together (service/coalescing.py), and a busy instance's queue is taken whole.
    max_queue_delay_microseconds: int = 0
    instance_kind: str = "KIND_CPU"  # KIND_GPU in production
    instance_count: int = 1
    keep_versions: int = 2
    precision: str = "float16"  # on GPU instances: float16 or bfloat16
    threads: int = 0  # threads per model instance (torch's, or ONNX Runtime's intra-op); 0: all cores
    cpu_priority: str = "normal"  # CPU instances: "normal", or "idle" for a shadow model (below)
    # CPU instances: "onnxruntime" (the default) runs the model's weights exported to
    # <version>/model.onnx (export/onnx_runtime.py, logits checked against PyTorch's at export),
    # with far less cost per operator; "torch" runs the model folder in eager PyTorch (figures:
    # docs/serving.md, benchmarks/results/serving-*.md). GPU instances run PyTorch in `precision`
    # either way (no ONNX files are written).
    engine: str = "onnxruntime"
    # "triton-cpu": the python backend above; "triton-gpu": Triton's onnxruntime backend with TensorRT
    # (gpu_config_pbtxt), which ignores engine, precision, threads and cpu_priority
    target: str = "triton-cpu"
    # the GPU target's TensorRT engine cache, inside the Triton container: a writable volume (the engines of
    # model NAME go to <trt_cache>/NAME), so a restarted pod loads its engines instead of building them
    trt_cache: str = "/trt-cache"

    # A shadow model that shares CPUs with the primary (one CPU machine, as here) gets "idle":
    # its instance processes run under Linux's SCHED_IDLE policy, so they get only the CPU time
    # nothing else wants and give way the moment the primary or the gateway needs a core;
    # mirrored traffic then cannot slow the primary's answers (the shadow queue overflows and
    # is counted instead). GPU instances ignore it.

    def __post_init__(self):
        if not self.preferred_batch_sizes or max(self.preferred_batch_sizes) > self.max_batch_size:
            raise ValueError(f"preferred batch sizes {self.preferred_batch_sizes} must be at most "
                             f"max_batch_size {self.max_batch_size}")
        if self.cpu_priority not in CPU_PRIORITIES:
            raise ValueError(f"cpu_priority must be one of {', '.join(CPU_PRIORITIES)}, not {self.cpu_priority!r}")
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {self.engine!r}")
        if self.precision not in ("float16", "bfloat16"):
            raise ValueError(f"precision must be float16 or bfloat16, not {self.precision!r}")
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {', '.join(TARGETS)}, not {self.target!r}")
        if not self.trt_cache.startswith("/"):
            raise ValueError(f"trt_cache must be an absolute path inside the Triton container, not {self.trt_cache!r}")


def _served_dims(config) -> dict[str, list[int]]:
    """Each served input's dimensions after the batch: what the gateway reads (service/backends.py)."""
    return {"image_bytes": [3, config.image_size, config.image_size], "input_ids": [config.max_text_length],
            "attention_mask": [config.max_text_length]}


def _inputs_outputs(config) -> tuple[str, str]:
    """The input and output lists of config.pbtxt, the same for both targets (the gateway reads them)."""
    outputs = "\n".join(
        f'  {{ name: "{task}" data_type: TYPE_FP32 dims: [ {len(classes)} ] }},' for task, classes in config.tasks.items()
    ).rstrip(",")
    dims = {name: ", ".join(map(str, value)) for name, value in _served_dims(config).items()}
    inputs = ",\n".join(f'  {{ name: "{input_name}" data_type: TYPE_{kind} dims: [ {dims[input_name]} ] }}'
                         for input_name, kind in SERVED_INPUTS.items())
    return inputs, outputs


def taxonomy_parameter(config) -> str:
    """The config.pbtxt line carrying the model's taxonomy (tasks, classes and their roles) as JSON: the
    outputs say only each task's width, and the gateway answers with the class names (service/backends.py)."""
    text = taxonomy_json(config.taxonomy).replace("\\", "\\\\").replace('"', '\\"')  # a pbtxt string literal
    return f'parameters: {{ key: "{TAXONOMY_PARAMETER}" value: {{ string_value: "{text}" }} }}\n'


def image_fit_parameter(config) -> str:
    """The config.pbtxt line carrying how the model fits a picture to its square (models/preprocessing.py): the
    gateway fits pictures before they reach Triton, as the model saw them in training."""
    return f'parameters: {{ key: "{IMAGE_FIT_PARAMETER}" value: {{ string_value: "{config.image_fit}" }} }}\n'


def _served_interface(name: str, runtime: str, model: AuditModel, settings: ServingSettings, batching: str = "") -> str:
    """What both targets' config.pbtxt share, so the gateway reads either the same way: the name, the
    runtime line, inputs, outputs and dynamic batching (plus `batching`, target-specific lines)."""
    inputs, outputs = _inputs_outputs(model.config)
    return f"""name: "{name}"
{runtime}
max_batch_size: {settings.max_batch_size}
input [
{inputs}
]
output [
{outputs}
]
dynamic_batching {{
  preferred_batch_size: [ {", ".join(map(str, settings.preferred_batch_sizes))} ]
  max_queue_delay_microseconds: {settings.max_queue_delay_microseconds}
{batching}}}
"""


def config_pbtxt(name: str, model: AuditModel, settings: ServingSettings,
                 tokenizer: str = GENERATED_TOKENIZER) -> str:
    return _served_interface(name, 'backend: "python"', model, settings) + f"""instance_group [ {{ count: {settings.instance_count} kind: {settings.instance_kind} }} ]
version_policy: {{ latest: {{ num_versions: {settings.keep_versions} }} }}
parameters: {{ key: "precision" value: {{ string_value: "{settings.precision}" }} }}
parameters: {{ key: "threads" value: {{ string_value: "{settings.threads}" }} }}
parameters: {{ key: "cpu_priority" value: {{ string_value: "{settings.cpu_priority}" }} }}
parameters: {{ key: "engine" value: {{ string_value: "{settings.engine}" }} }}
parameters: {{ key: "{TOKENIZER_PARAMETER}" value: {{ string_value: "{tokenizer}" }} }}
""" + taxonomy_parameter(model.config) + image_fit_parameter(model.config)


def warmup_batch_sizes(max_batch_size: int) -> list[int]:
    """The batch sizes Triton runs at load (WARMUP_BATCH_SIZES below max_batch_size, and max_batch_size)."""
    return sorted({size for size in WARMUP_BATCH_SIZES if size < max_batch_size} | {max_batch_size})


def trt_profile(config, batch: int, length: int) -> str:
    """One TensorRT optimisation-profile shape list, as ONNX Runtime's TensorRT options write it."""
    size = config.image_size
    return f"image_bytes:{batch}x3x{size}x{size},input_ids:{batch}x{length},attention_mask:{batch}x{length}"


def warmup_requests(config, max_batch_size: int) -> str:
    """`model_warmup` entries: zero-filled inputs at each warmup batch size, so engines build at load."""
    dims = _served_dims(config)
    warmups = []
    for batch in warmup_batch_sizes(max_batch_size):
        tensors = "\n".join(
            f'    inputs {{ key: "{input_name}" value: {{ data_type: TYPE_{kind} dims: [ {", ".join(map(str, dims[input_name]))} ] '
            f'zero_data: true }} }}' for input_name, kind in SERVED_INPUTS.items())
        warmups.append(f'  {{\n    name: "batch_{batch}"\n    batch_size: {batch}\n{tensors}\n  }}')
    return ",\n".join(warmups)


def gpu_config_pbtxt(name: str, model: AuditModel, settings: ServingSettings,
                     tokenizer: str = GENERATED_TOKENIZER) -> str:
    """config.pbtxt of the GPU target: Triton's onnxruntime backend, TensorRT FP16 with an engine cache and
    one optimisation profile (batch 1 to max_batch_size, tuned for the largest preferred batch; copy
    length 1 to the model's), warmup at load, dynamic batching with two priority levels.

    Inputs, outputs, max_batch_size and the tokenizer parameter are those of the python-backend config,
    so the gateway reads this model as it reads the other. Every request the gateway sends carries no
    priority and runs at the default level 1. A shadow does not share this queue: it is its own model
    (the teacher), with its own instances (and, in the chart, its own Triton on its own GPU); a client
    that shares a model with the primary marks its requests priority 2 (tritonclient's
    `infer(..., priority=2)`, or `"parameters": {"priority": 2}` in an HTTP request) and they then wait
    behind every level-1 request, are refused past LOW_PRIORITY_QUEUE queued and time out after
    LOW_PRIORITY_TIMEOUT_US."""
    config = model.config
    length, largest = config.max_text_length, max(settings.preferred_batch_sizes)
    accelerator = {
        "precision_mode": "FP16",
        "max_workspace_size_bytes": str(TRT_WORKSPACE_BYTES),
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": f"{settings.trt_cache.rstrip('/')}/{name}",
        # the instances of one server build one after another, not the same cache file at once
        "trt_force_sequential_engine_build": "1",
        "trt_profile_min_shapes": trt_profile(config, 1, 1),
        "trt_profile_opt_shapes": trt_profile(config, largest, length),
        "trt_profile_max_shapes": trt_profile(config, settings.max_batch_size, length),
    }
    parameters = "\n".join(f'      parameters {{ key: "{key}" value: "{value}" }}' for key, value in accelerator.items())
    priorities = f"""  priority_levels: {PRIORITY_LEVELS}
  default_priority_level: {DEFAULT_PRIORITY}
  priority_queue_policy {{
    key: {PRIORITY_LEVELS}
    value: {{ timeout_action: REJECT default_timeout_microseconds: {LOW_PRIORITY_TIMEOUT_US} max_queue_size: {LOW_PRIORITY_QUEUE} }}
  }}
"""
    runtime = f'platform: "onnxruntime_onnx"\ndefault_model_filename: "{ONNX_FILE}"'
    return _served_interface(name, runtime, model, settings, priorities) + f"""instance_group [ {{ count: {settings.instance_count} kind: {settings.instance_kind} }} ]
optimization {{
  execution_accelerators {{
    gpu_execution_accelerator: [ {{
      name: "tensorrt"
{parameters}
    }} ]
  }}
}}
model_warmup [
{warmup_requests(config, settings.max_batch_size)}
]
version_policy: {{ latest: {{ num_versions: {settings.keep_versions} }} }}
parameters: {{ key: "{TOKENIZER_PARAMETER}" value: {{ string_value: "{tokenizer}" }} }}
""" + taxonomy_parameter(config) + image_fit_parameter(config)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_checksums(version_folder: Path) -> dict[str, str]:
    """sha256 of every exported file; Python's bytecode cache (written when the stub imports model.py) is not one."""
    return {str(p.relative_to(version_folder)): sha256(p) for p in sorted(version_folder.rglob("*"))
            if p.is_file() and p.name != CHECKSUMS_FILE and "__pycache__" not in p.relative_to(version_folder).parts}


def verify_checksums(version_folder: Path) -> None:
    """Raise ValueError if any file of an exported version differs from what export wrote."""
    path = Path(version_folder) / CHECKSUMS_FILE
    if not path.is_file():
        raise ValueError(f"{path} is missing: this version was not written by adaudit export")
    expected = json.loads(path.read_text())
    actual = file_checksums(Path(version_folder))
    changed = sorted(name for name in expected.keys() | actual.keys() if expected.get(name) != actual.get(name))
    if changed:
        raise ValueError(f"{version_folder}: files changed since export: {', '.join(changed)}")


def version_target(version_folder: Path) -> str:
    """The target an exported version was written for: a python-backend version has model.py."""
    return "triton-cpu" if (Path(version_folder) / "model.py").is_file() else "triton-gpu"


def refuse_incompatible_versions(model_root: Path, version: int, model: AuditModel,
                                 target: str = "triton-cpu") -> None:
    """One config.pbtxt declares the backend, inputs and outputs of every version of a model, so a new
    version must be exported for the same target, take the same inputs (the uint8 picture, the same
    picture size and copy length) and give the same outputs (tasks and classes) as the versions it is
    served beside."""
    config = model.config
    for other in sorted(model_root.glob("[0-9]*")):
        if other.name == str(version) or not (other / "model" / "config.json").is_file():
            continue
        if version_target(other) != target:
            raise ValueError(f"version {other.name} beside version {version} was exported for "
                             f"--target {version_target(other)}, not {target}; one config.pbtxt serves both: "
                             f"export it again with --target {target}, use another model name, or remove {other}")
        script = other / "model.py"
        if script.is_file() and SERVED_INPUT_MARK not in script.read_text():
            raise ValueError(f"{other} was exported by an older adaudit (its model takes pixel_values, not "
                             f"image_bytes): export it again with --version {other.name}, or remove it, "
                             f"before adding version {version}")
        served = AuditModelConfig.load(other / "model")
        for what, theirs, ours in (("image size", served.image_size, config.image_size),
                                   ("copy length", served.max_text_length, config.max_text_length),
                                   ("tasks", served.tasks, config.tasks),
                                   ("task roles", served.taxonomy.as_config(), config.taxonomy.as_config())):
            if theirs != ours:
                raise ValueError(f"version {version} has {what} {ours} but version {other.name} beside it has "
                                 f"{theirs}; one config.pbtxt serves both: export it as another model name, "
                                 f"or remove {other}")


def repository_tokenizer(model_root: Path) -> str:
    """The `tokenizer` parameter for every version in `model_root`: the generated vocabulary only when no
    version brings its own tokenizer (the gateway then reads each version's from the repository)."""
    kinds = {tokenizer_kind(folder) for folder in model_root.glob("[0-9]*/model")}
    return next((kind for kind in sorted(kinds) if kind != GENERATED_TOKENIZER), GENERATED_TOKENIZER)


def export_model(model_folder: Path, repository: Path, name: str, version: int,
                 settings: ServingSettings) -> Path:
    """Add `version` of model `name` to the repository (atomically); returns the version folder."""
    model = AuditModel.from_pretrained(model_folder)  # refuses a broken folder before anything is written
    model_root = Path(repository) / name
    refuse_incompatible_versions(model_root, version, model, settings.target)
    if settings.target == "triton-gpu":
        return _export_gpu_version(model_folder, model, model_root, version, settings)
    model_root.mkdir(parents=True, exist_ok=True)
    version_folder = model_root / str(version)
    with atomic_folder(version_folder) as staging:
        shutil.copy2(TRITON_MODEL_FILE, staging / "model.py")
        shutil.copytree(model_folder, staging / "model",
                        ignore=shutil.ignore_patterns("report.json", "recipe.json", "metrics.json", "*.png"))
        if settings.engine == "onnxruntime" and settings.instance_kind == "KIND_CPU":
            from adaudit.export.onnx_runtime import example_inputs, export_onnx

            export_onnx(model, example_inputs(model.config), staging / ONNX_FILE)  # checks its logits
        (staging / CHECKSUMS_FILE).write_text(json.dumps(file_checksums(staging), indent=2) + "\n")
    (model_root / "config.pbtxt").write_text(config_pbtxt(name, model, settings, repository_tokenizer(model_root)))
    return version_folder


def _export_gpu_version(model_folder: Path, model: AuditModel, model_root: Path, version: int,
                        settings: ServingSettings) -> Path:
    """The GPU target: the standard ONNX graph, traced and checked against PyTorch's logits before anything
    is written (export/onnx_gpu.py raises GpuGraphError, a ValueError, when they differ), then the version
    folder and config.pbtxt, each atomically."""
    import onnx
    import onnxruntime

    from adaudit.export.onnx_gpu import GPU_OPSET, check_gpu_graph, gpu_graph

    graph = gpu_graph(model)
    data = graph.SerializeToString()
    checked = check_gpu_graph(data, model)
    version_folder = model_root / str(version)
    with atomic_folder(version_folder) as staging:
        (staging / ONNX_FILE).write_bytes(data)
        shutil.copytree(model_folder, staging / "model",
                        ignore=shutil.ignore_patterns("report.json", "recipe.json", "metrics.json", "*.png"))
        record = {"target": settings.target, "opset": GPU_OPSET, "onnx": onnx.__version__,
                  "onnxruntime": onnxruntime.__version__, "execution_provider": "CPUExecutionProvider", **checked}
        (staging / GRAPH_CHECK_FILE).write_text(json.dumps(record, indent=2) + "\n")
        (staging / CHECKSUMS_FILE).write_text(json.dumps(file_checksums(staging), indent=2) + "\n")
    text = gpu_config_pbtxt(model_root.name, model, settings, repository_tokenizer(model_root))
    atomic_write_text(model_root / "config.pbtxt", text)
    return version_folder
