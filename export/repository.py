"""Writing a Triton model repository from adaudit model folders.

    REPO/<name>/config.pbtxt
    REPO/<name>/<version>/model.py        (export/triton_model.py)
    REPO/<name>/<version>/model/          (config.json, model.safetensors, vocab.txt or tokenizer.json)
    REPO/<name>/<version>/checksums.json  (sha256 of every file above, checked at load)

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

from adaudit.core.files import atomic_folder
from adaudit.models.configuration import AuditModelConfig
from adaudit.models.modeling import AuditModel
from adaudit.models.preprocessing import SERVED_INPUTS
from adaudit.models.tokenizer import GENERATED_TOKENIZER, TOKENIZER_PARAMETER, tokenizer_kind

SERVED_INPUT_MARK = "SERVED_INPUTS"  # in every model.py that reads the inputs config_pbtxt declares

TRITON_MODEL_FILE = Path(__file__).with_name("triton_model.py")
CHECKSUMS_FILE = "checksums.json"
CPU_PRIORITIES = ("normal", "idle")
ENGINES = ("torch", "onnxruntime")
ONNX_FILE = "model.onnx"


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


def config_pbtxt(name: str, model: AuditModel, settings: ServingSettings,
                 tokenizer: str = GENERATED_TOKENIZER) -> str:
    config = model.config
    outputs = "\n".join(
        f'  {{ name: "{task}" data_type: TYPE_FP32 dims: [ {len(classes)} ] }},' for task, classes in config.tasks.items()
    ).rstrip(",")
    dims = {"image_bytes": f"3, {config.image_size}, {config.image_size}", "input_ids": str(config.max_text_length),
            "attention_mask": str(config.max_text_length)}
    inputs = ",\n".join(f'  {{ name: "{input_name}" data_type: TYPE_{kind} dims: [ {dims[input_name]} ] }}'
                         for input_name, kind in SERVED_INPUTS.items())
    return f"""name: "{name}"
backend: "python"
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
}}
instance_group [ {{ count: {settings.instance_count} kind: {settings.instance_kind} }} ]
version_policy: {{ latest: {{ num_versions: {settings.keep_versions} }} }}
parameters: {{ key: "precision" value: {{ string_value: "{settings.precision}" }} }}
parameters: {{ key: "threads" value: {{ string_value: "{settings.threads}" }} }}
parameters: {{ key: "cpu_priority" value: {{ string_value: "{settings.cpu_priority}" }} }}
parameters: {{ key: "engine" value: {{ string_value: "{settings.engine}" }} }}
parameters: {{ key: "{TOKENIZER_PARAMETER}" value: {{ string_value: "{tokenizer}" }} }}
"""


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


def refuse_incompatible_versions(model_root: Path, version: int, model: AuditModel) -> None:
    """One config.pbtxt declares the inputs and outputs of every version of a model, so a new version
    must take the same inputs (the uint8 picture, the same picture size and copy length) and give the
    same outputs (tasks and classes) as the versions it is served beside."""
    config = model.config
    for other in sorted(model_root.glob("[0-9]*")):
        if other.name == str(version) or not (other / "model" / "config.json").is_file():
            continue
        script = other / "model.py"
        if script.is_file() and SERVED_INPUT_MARK not in script.read_text():
            raise ValueError(f"{other} was exported by an older adaudit (its model takes pixel_values, not "
                             f"image_bytes): export it again with --version {other.name}, or remove it, "
                             f"before adding version {version}")
        served = AuditModelConfig.load(other / "model")
        for what, theirs, ours in (("image size", served.image_size, config.image_size),
                                   ("copy length", served.max_text_length, config.max_text_length),
                                   ("tasks", served.tasks, config.tasks)):
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
    refuse_incompatible_versions(model_root, version, model)
    model_root.mkdir(parents=True, exist_ok=True)
    version_folder = model_root / str(version)
    with atomic_folder(version_folder) as staging:
        shutil.copy2(TRITON_MODEL_FILE, staging / "model.py")
        shutil.copytree(model_folder, staging / "model",
                        ignore=shutil.ignore_patterns("report.json", "recipe.json", "metrics.json"))
        if settings.engine == "onnxruntime" and settings.instance_kind == "KIND_CPU":
            from adaudit.export.onnx_runtime import example_inputs, export_onnx

            export_onnx(model, example_inputs(model.config), staging / ONNX_FILE)  # checks its logits
        (staging / CHECKSUMS_FILE).write_text(json.dumps(file_checksums(staging), indent=2) + "\n")
    (model_root / "config.pbtxt").write_text(config_pbtxt(name, model, settings, repository_tokenizer(model_root)))
    return version_folder
