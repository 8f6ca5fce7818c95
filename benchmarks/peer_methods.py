"""The methods the peers benchmark compares, all from one teacher under one budget.

Each method is a function of the shared `Setting` that returns a `Built` model (or None while
it is pending). To add a method, write such a function and add a line to `METHODS`.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from adaudit.compression.distillation import TeacherCache, distil
from adaudit.compression.augmentation import Views
from adaudit.compression.importance import block_influence
from adaudit.compression.recipe import BlocksStage, HiddenStage, Recipe, WidthsStage
from adaudit.compression.structure import remove_blocks
from adaudit.data.encoding import EncodedSplit, tokenised_for
from adaudit.training.measure import latency
from adaudit.models.configuration import TOWERS, AuditModelConfig
from adaudit.models.modeling import AuditModel
from adaudit.models.tokenizer import saved_tokenizer
from adaudit.training.loop import Schedule, fit, label_loss

from benchmarks.peer_pruning import TaylorPruner, all_logits, as_audit_model


@dataclass
class Setting:
    """What every method shares: the teacher, the data, the budget and the latency target."""

    teacher: AuditModel
    student_dir: Path  # the AntGMM student (default recipe), reused
    searched_dir: Path  # adaudit's searched policy, when it exists
    train: EncodedSplit  # the distillation ads
    test: EncodedSplit
    cache: TeacherCache  # the teacher's outputs on `train`
    recipe: Recipe  # the AntGMM student's recipe: distillation settings and budget
    epochs: int  # distillation epochs the recipe spends in total
    target_ms: float  # batch-1 p50 latency to reach (the AntGMM student's)
    out: Path  # where methods save their models
    data_dir: Path  # the ads' folder, to tokenise them again for a model with its own tokenizer
    log: Callable[[str], None] = print
    pruning_steps: int = 20  # Torch-Pruning: equal steps up to its ratio limit
    views: Views | None = None  # the recipe's augmented views of `train`, labelled by the teacher: every method gets them

    def split_for(self, model: nn.Module, name: str) -> EncodedSplit:
        """The train or test split as `model` takes it (a pruned-vocabulary student has its own token ids)."""
        split = self.train if name == "train" else self.test
        return tokenised_for(model, split, self.data_dir, name) if getattr(model, "tokenizer", None) else split

    @property
    def calibration(self) -> tuple[EncodedSplit, TeacherCache]:
        index = torch.arange(min(self.recipe.calibration_samples, len(self.train)))
        return self.train.subset(index), self.cache.subset(index)

    def pool(self, train: EncodedSplit) -> tuple[EncodedSplit, TeacherCache]:
        """`train` (as some model takes it) followed by the views, with the teacher's outputs on all of them."""
        return (train, self.cache) if self.views is None else self.views.extend(train, self.cache)

    def distil(self, model: AuditModel, description: str) -> None:
        train, cache = self.pool(self.train)
        losses = distil(model, train, cache, self.recipe.distillation, self.epochs, description,
                        seed=self.recipe.seed, on_epoch_end=self.epoch_line(description))
        self.log(f"  {description}: {self.epochs} epochs, distillation loss {losses[0]:.4f} -> {losses[-1]:.4f}")

    def epoch_line(self, description: str):
        """A progress line after every epoch (the bars are off when the output is not a terminal)."""
        started = time.perf_counter()

        def line(_model, _optimizer, state, loss: float) -> None:
            self.log(f"  {description}: epoch {state.epoch}/{self.epochs}, loss {loss:.4f}, "
                     f"{(time.perf_counter() - started) / 60:.1f} min")
        return line

    def p50(self, model: nn.Module) -> float:
        return latency(model, self.test, repeats=30, throughput_repeats=1)["latency_ms_p50"]


@dataclass
class Built:
    model: nn.Module
    seconds: float  # wall time to build it (pruning, training), excluding evaluation
    folder: Path | None = None  # an adaudit model folder it reloads from, if any
    float_model: nn.Module | None = None  # for a quantized model: the float model it came from (FLOPs)
    notes: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)
    resumed: bool = False  # reloaded from what an earlier run of the benchmark built


def distillation_epochs(recipe: Recipe, config: AuditModelConfig) -> int:
    """Epochs of distillation the AntGMM pipeline runs for this recipe and teacher, all stages together."""
    depth = {tower: len(config.tower(tower).blocks) for tower in TOWERS}
    total = recipe.final_epochs
    for stage in recipe.stages:
        if isinstance(stage, BlocksStage):
            kept = {t: keep if isinstance(keep, int) else len(keep) for t, keep in stage.keep.items()}
            steps = max(math.ceil((depth[t] - keep) / stage.per_step) for t, keep in kept.items())
            depth.update(kept)
            total += steps * stage.epochs_per_step
        elif isinstance(stage, WidthsStage):
            total += stage.soft_steps * stage.epochs_per_step + stage.epochs_after_cut
        elif isinstance(stage, HiddenStage):
            total += stage.steps * stage.epochs_per_step
    return total


def reuse(folder: Path, teacher_config: AuditModelConfig) -> Built | None:
    """A model adaudit already compressed, with the wall time its own report recorded."""
    report_file = folder / "report.json"
    if not report_file.is_file():
        return None
    report = json.loads(report_file.read_text())
    model = AuditModel.from_pretrained(folder)
    notes = [f"reused from {folder}; wall time from its report"]
    recipe_file = folder / "recipe.json"
    if recipe_file.is_file():
        recipe = Recipe.model_validate_json(recipe_file.read_text())
        notes.append(f"its recipe: {distillation_epochs(recipe, teacher_config)} distillation epochs on "
                     f"{recipe.distillation.samples} ads")
    return Built(model, report["wall_seconds"], folder, notes=notes)


def antgmm(setting: Setting) -> Built | None:
    return reuse(setting.student_dir, setting.teacher.config)


def searched(setting: Setting) -> Built | None:
    return reuse(setting.searched_dir, setting.teacher.config)


def save_and_reload(model: AuditModel, folder: Path) -> AuditModel:
    model.save_pretrained(folder)
    return AuditModel.from_pretrained(folder)


def torch_pruning(setting: Setting) -> Built:
    started = time.perf_counter()
    model = copy.deepcopy(setting.teacher)
    calibration, calibration_cache = setting.calibration
    pruner = TaylorPruner(model, calibration, calibration_cache, setting.recipe.distillation,
                          steps=setting.pruning_steps)
    timing = setting.p50(model)
    trajectory = [(model.num_parameters(), timing)]
    # at least one step: with tiny models (the tests) the teacher's own timing can fall under the target by noise
    while (timing > setting.target_ms or pruner.done == 0) and pruner.done < pruner.steps:
        pruner.step()
        timing = setting.p50(model)
        trajectory.append((model.num_parameters(), timing))
        setting.log(f"  Torch-Pruning step {pruner.done}/{pruner.steps}: {model.num_parameters() / 1e6:.2f}M params, "
                    f"p50 {timing:.2f} ms (target {setting.target_ms:.2f})")
    notes = [f"{pruner.done} Taylor steps, whole graph: hidden sizes, heads, FFN neurons"]
    if timing > setting.target_ms:
        notes.append(f"latency target not reached at the {pruner.steps}-step ratio limit: {timing:.2f} ms")
    reloadable = True
    try:
        model = as_audit_model(model, setting.test)
    except (RuntimeError, ValueError, AssertionError) as error:  # the pruned model keeps its old config
        reloadable = False
        notes.append(f"not reloadable: {str(error).splitlines()[0]}")
    setting.distil(model, "Torch-Pruning")
    folder = setting.out / "torch-pruning" if reloadable else None
    if folder:
        model = save_and_reload(model, folder)
        notes.append("shapes mapped back into an AuditModelConfig; reloads with from_pretrained")
    return Built(model, time.perf_counter() - started, folder, notes=notes,
                 details={"steps": pruner.done, "params_and_p50_ms_per_step": trajectory})


def layer_dropping(setting: Setting) -> Built:
    """Remove the least influential block of any tower, one at a time, until the latency target (at least one
    block, as Torch-Pruning takes at least one step)."""
    started = time.perf_counter()
    model = copy.deepcopy(setting.teacher)
    calibration, _ = setting.calibration
    removed = []
    timing = setting.p50(model)
    trajectory = [timing]
    while timing > setting.target_ms or not removed:
        towers = [tower for tower in TOWERS if len(model.blocks(tower)) > 1]
        if not towers:
            break
        influence = block_influence(model, calibration, towers)
        tower, block = min(((t, i) for t in towers for i in range(len(model.blocks(t)))),
                           key=lambda pair: influence[pair[0]][pair[1]].item())
        removed.append(f"{tower} {block} ({influence[tower][block]:.3f})")
        model = remove_blocks(model, {tower: [i for i in range(len(model.blocks(tower))) if i != block]})
        timing = setting.p50(model)
        trajectory.append(timing)
        setting.log(f"  layer dropping: removed {removed[-1]}, p50 {timing:.2f} ms (target {setting.target_ms:.2f})")
    notes = [f"removed {len(removed)} blocks; depth now "
             + ", ".join(f"{t} {len(model.blocks(t))}" for t in TOWERS)]
    if timing > setting.target_ms:
        notes.append(f"latency target not reachable by depth alone: one block per tower is {timing:.2f} ms")
    setting.distil(model, "layer dropping")
    folder = setting.out / "layer-dropping"
    return Built(save_and_reload(model, folder), time.perf_counter() - started, folder, notes=notes,
                 details={"removed": removed, "p50_ms_per_step": trajectory})


def from_scratch(setting: Setting) -> Built:
    """The AntGMM student's architecture, randomly initialised, trained on the labels alone."""
    started = time.perf_counter()
    torch.manual_seed(setting.recipe.seed)
    model = AuditModel(AuditModelConfig.load(setting.student_dir))
    model.tokenizer = saved_tokenizer(setting.student_dir)  # the student's vocabulary, pruned or not
    train, cache = setting.pool(setting.split_for(model, "train"))
    train = train.subset(torch.nonzero(cache.rows_labelled()).flatten())  # no teacher: only rows whose labels hold
    settings = setting.recipe.distillation
    schedule = Schedule(epochs=setting.epochs, batch_size=settings.batch_size, learning_rate=settings.learning_rate,
                        seed=setting.recipe.seed)
    losses = fit(model, len(train), lambda m, index: label_loss(m, train, index), schedule, "from scratch",
                 on_epoch_end=setting.epoch_line("from scratch"))
    setting.log(f"  from scratch: {setting.epochs} epochs, label loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    folder = setting.out / "from-scratch"
    return Built(save_and_reload(model, folder), time.perf_counter() - started, folder,
                 notes=[f"no teacher; learning rate {settings.learning_rate} (the recipe's), 5% warm-up"])


def quantized(model: AuditModel) -> Built:
    """PyTorch dynamic int8 quantization of every nn.Linear (weights int8, activations quantized per call)."""
    started = time.perf_counter()
    result = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8)
    return Built(result, time.perf_counter() - started, float_model=model,
                 notes=["int8 weights in nn.Linear only (embeddings, attention products, norms stay float32); "
                        "not an adaudit folder (quantized modules have no safetensors form here)"])


def student_onnx_runtime(setting: Setting) -> Built | None:
    """The AntGMM student's own weights exported to ONNX and run by ONNX Runtime (export/onnx_runtime.py)."""
    from adaudit.export.onnx_runtime import OnnxRuntimeAuditModel, export_onnx

    student = reuse(setting.student_dir, setting.teacher.config)
    if student is None:
        return None
    started = time.perf_counter()
    model = student.model.eval()
    path = export_onnx(model, setting.split_for(model, "test").inputs(torch.arange(4)), setting.out / "antgmm.onnx")
    engine = OnnxRuntimeAuditModel(path)
    engine.config, engine.tokenizer = model.config, model.tokenizer  # the student's vocabulary: the same token ids
    return Built(engine, time.perf_counter() - started, float_model=model,
                 notes=[f"the AntGMM student exported with torch.onnx (opset 17, batch and length dynamic), "
                        f"ONNX Runtime {engine.version} on {engine.threads} threads, logits checked against "
                        "PyTorch's; not an adaudit folder"])


def teacher_int8(setting: Setting) -> Built:
    return quantized(setting.teacher)


def student_int8(setting: Setting) -> Built | None:
    student = reuse(setting.student_dir, setting.teacher.config)
    return quantized(student.model) if student else None


@dataclass(frozen=True)
class Method:
    key: str
    label: str
    group: str  # "ours", "peer", or "reference"
    build: Callable[[Setting], Built | None]


METHODS = [  # cheapest first, so an interrupted run has measured the most methods
    Method("antgmm", "adaudit AntGMM recipe", "ours", antgmm),
    Method("searched", "adaudit searched policy", "ours", searched),
    Method("student_int8", "AntGMM student + dynamic int8", "ours", student_int8),
    Method("student_onnx_runtime", "AntGMM student on ONNX Runtime", "ours", student_onnx_runtime),
    Method("teacher_int8", "teacher, dynamic int8", "peer", teacher_int8),
    Method("from_scratch", "student architecture from scratch", "peer", from_scratch),
    Method("torch_pruning", "Torch-Pruning (Taylor) + distillation", "peer", torch_pruning),
    Method("layer_dropping", "layer dropping (block influence) + distillation", "peer", layer_dropping),
]


def check_outputs(model: nn.Module, split: EncodedSplit) -> None:
    """Every method must produce finite logits for every task."""
    with torch.inference_mode():
        for logits in all_logits(model.eval()(**split.inputs(torch.arange(min(4, len(split)))))):
            if not torch.isfinite(logits).all():
                raise RuntimeError("non-finite logits")
