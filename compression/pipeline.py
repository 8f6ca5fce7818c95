"""AntGMM multi-stage compression: teacher -> vocabulary -> blocks -> widths -> hidden size -> student.

Every stage (stages.py) cuts the model (physically: `structure.cut`) and distils it from the cached
teacher outputs on at most 2,000 training ads. After each stage the model is profiled and
evaluated on the test split, so `report.json` shows what every stage cost and bought. The final
student's temperatures are fitted on the validation split (training/calibration.py); report.json's
"calibration" holds them and the calibration error before and after, beside `reliability.png`.

The teacher's outputs (on the distillation ads, their views and the test split) are read from TEACHER.outputs/
when an earlier `compress` of the same teacher and data wrote them (teacher_outputs.py); report.json's
"teacher_outputs" says which were reused and the seconds they took. The teacher is not kept while distilling:
it becomes the student (the first stage cuts it), and it is loaded again from its folder at the end, for the
latency measured in alternating rounds with the student (a figure taken up front would not be paired).
A checkpoint after every stage and every distillation epoch (checkpoints.py, in OUT.partial/) lets the same
command continue a run that was stopped; it is removed once the student is written.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from adaudit.core.files import atomic_folder
from adaudit.data.dataset import data_checksum, read_split
from adaudit.data.encoding import EncodedSplit, encode_split, encode_validation, tokenised_for
from adaudit.models.modeling import AuditModel
from adaudit.models.preprocessing import AuditProcessor
from adaudit.training.device import Placement
from adaudit.training.distributed import World, joined, per_rank_batch
from adaudit.training.calibration import (NO_VALIDATION, Calibration, fit_calibration, plot_reliability, skipped,
                                         summary as calibration_summary)
from adaudit.training.evaluation import predict_logits
from adaudit.training.measure import machine, paired_latency
from adaudit.training.real_copy import real_copy_rows
from adaudit.training.teacher import METRICS_FILE

from .augmentation import Views, make_views
from .checkpoints import Checkpoints, Saved
from .distillation import TeacherCache, cache_teacher
from .recipe import Recipe, RecipeError, default_recipe, load_recipe
from .search import LatencyModel, plot_search, policy_recipe, search_policy
from .stages import Context, build_stages, run_stages, stage_entry
from .teacher_outputs import TeacherOutputs, model_checksum, outputs_folder

REPORT_FILE = "report.json"
RECIPE_FILE = "recipe.json"


@dataclass
class Reference:
    """What compression measures of the teacher once: its outputs on the distillation ads, its predictions on
    the test split (every entry's agreement) and its own report entry; the data set's checksum."""
    full_train: EncodedSplit  # the whole training split (the search draws its ads from it)
    order: torch.Tensor  # the seeded shuffle of `full_train`: distillation ads first
    train: EncodedSplit  # the distillation ads (and the real-copy rows made from them, before the held-out ones)
    test: EncodedSplit  # as the teacher tokenises it
    cache: TeacherCache  # the teacher's outputs on `train`
    predictions: dict[str, torch.Tensor]
    entry: dict
    choices: EncodedSplit | None = None  # the data set's validation split, when it has one
    data_checksum: dict | None = None


def compress(teacher_dir: Path, data_dir: Path, out: Path, recipe_path: Path | str | None = None, log=print,
             target_speedup: float | None = None, device: str | None = "auto", fsdp: bool = False) -> dict | None:
    """Teacher folder -> student folder (config, weights, vocabulary, recipe.json, report.json), computed on
    `device` (training/device.py). Under torchrun every rank distils (DDP, training/distributed.py) and rank 0
    alone logs, measures and writes: it returns the report, the other ranks None. `fsdp`: the ranks distil
    with FSDP2 instead of DDP (distillation.py's `distil_sharded`).

    A recipe with a `search` section (`--recipe auto`) first searches the per-layer policy under
    a latency budget of the teacher's batch-1 latency / `target_speedup` (search.py)."""
    started = time.perf_counter()
    with joined(device, fsdp) as world:  # refused (no CUDA) before any work; joins the other ranks under torchrun
        log = log if world.main else (lambda message: None)
        return compress_on_rank(teacher_dir, data_dir, out, recipe_path, log, target_speedup, world, started)


def compress_on_rank(teacher_dir: Path, data_dir: Path, out: Path, recipe_path: Path | str | None, log,
                     target_speedup: float | None, world: World, started: float) -> dict | None:
    """compress's work on one rank: every rank distils; what is decided (the search, the cuts) rank 0 decides."""
    placement = Placement.on(world.device)
    recipe, teacher = load_teacher_and_recipe(teacher_dir, recipe_path, target_speedup, log)
    per_rank_batch(recipe.distillation.batch_size, world.world_size)  # refused before the teacher runs
    sources = {"teacher": model_checksum(teacher_dir), "data": data_checksum(data_dir)}
    outputs = TeacherOutputs(outputs_folder(teacher_dir), sources["teacher"], sources["data"], log, world)
    checkpoints = Checkpoints(out, {**sources, "recipe": recipe.model_dump(mode="json"),
                                    "target_speedup": target_speedup}, log)
    saved = load_checkpoint_on_every_rank(checkpoints, world)
    placement.place(teacher)
    reference = measure_teacher(teacher, teacher_dir, data_dir, recipe, log, outputs)
    recipe, searched = searched_recipe(teacher, reference, recipe, saved, target_speedup, world, log)
    views = make_views(teacher, reference.train, recipe, log, outputs)
    log(f"teacher outputs: {', '.join(f'{part} {how}' for part, how in outputs.parts.items())} "
        f"({outputs.seconds:.1f} s; {outputs.folder})")
    context = Context(recipe, data_dir, reference.train, reference.cache, reference.test, reference.predictions,
                      views, log, reference.choices)
    context.device, context.checkpoints, context.world = placement.device, checkpoints, world
    context.noted = {"searched": searched} if searched else {}
    torch.manual_seed(recipe.seed)  # the same draws whether the teacher's outputs were computed or read
    if saved is None:
        if searched:
            context.checkpoint(None)  # the searched policy: a resumed run does not search again
        student = teacher  # the teacher itself becomes the student: no second copy while distilling
    else:
        student = resumed_student(saved, context, placement, build_stages(recipe)) or teacher
    del teacher
    student, entries = run_stages(build_stages(recipe), student, context)
    world.check_same_model(student, "student")  # DDP and the agreed cuts keep the ranks equal: checked, not hoped
    if not world.main:
        return None
    report, calibration = finish_report(teacher_dir, reference, student, entries, context, placement, views, searched,
                                        started)
    report["teacher_outputs"] = outputs.record()
    report["resumed"] = None if saved is None else saved.progress["stage"]
    report["distributed"] = world.record()
    write_student(out, student, recipe, report, searched, calibration)
    checkpoints.discard()  # the student is written: nothing left to resume
    return report


def searched_recipe(teacher: AuditModel, reference: Reference, recipe: Recipe, saved: Saved | None,
                    target_speedup: float | None, world: World, log) -> tuple[Recipe, dict | None]:
    """The recipe with its searched per-layer policy (`--recipe auto`; the recipe as it is without a search
    section): read from the checkpoint when resuming, else searched by rank 0 and sent to the other ranks."""
    if not recipe.search:
        return recipe, None
    searched = saved.progress.get("searched") if saved else None
    if searched is None:
        budget_ms = reference.entry["latency_ms_p50"] / target_speedup
        searched = world.agreed(lambda: search_policy(teacher, reference.full_train, reference.order, recipe,
                                                      budget_ms, log))
    recipe = policy_recipe(recipe, searched["policy"])
    recipe.check_against(teacher.config)
    return recipe, searched


def load_checkpoint_on_every_rank(checkpoints: Checkpoints, world: World) -> Saved | None:
    """The checkpoint to resume from, the same on every rank: rank 0 reads it first (and removes one of another
    key), then the others."""
    saved = checkpoints.load() if world.main else None
    world.barrier()
    if not world.main:
        checkpoints.log = lambda message: None
        saved = checkpoints.load()
    return saved


def finish_report(teacher_dir: Path, reference: Reference, student: AuditModel, entries: list[dict],
                  context: Context, placement: Placement, views: Views | None, searched: dict | None,
                  started: float) -> tuple[dict, Calibration | None]:
    """The student calibrated, and the report: the teacher loaded again for the latency paired with the student's."""
    calibration, calibration_entry = calibrate_student(student, context)
    teacher = placement.place(AuditModel.from_pretrained(teacher_dir))
    report = assemble_report(reference, teacher, student, entries, context, views, searched, started)
    del teacher
    report.update(calibration_entry)
    return report, calibration


def write_student(out: Path, student: AuditModel, recipe: Recipe, report: dict, searched: dict | None,
                  calibration: Calibration | None) -> None:
    """The student folder, written at once (atomic): weights, config, recipe.json, report.json and the plots."""
    student.cpu()
    with atomic_folder(out) as staging:
        student.save_pretrained(staging)  # nested atomic write into the staging folder
        (staging / RECIPE_FILE).write_text(recipe.model_dump_json(indent=2) + "\n")
        (staging / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
        if searched:
            plot_search(searched, staging)
        if calibration is not None:
            plot_reliability(calibration, staging, "student: temperature scaling")


def resumed_student(saved: Saved, context: Context, placement: Placement, stages: list) -> AuditModel | None:
    """The checkpoint's model (None: still the teacher), and the context where the checkpoint was taken: the
    distillation ads' token ids as it holds them (renumbered once the vocabulary is pruned), the test and
    validation splits tokenised for its model, the stages done skipped."""
    context.resume(saved)
    number = saved.progress["stage"]
    where = f"in the {stages[number].name} stage" if number < len(stages) else "all stages done"
    inside = f", epoch {saved.training_state.epoch} of its distillation {saved.progress['steps']}" \
        if saved.training_state is not None else ""
    context.log(f"resuming from the checkpoint in {context.checkpoints.checkpoint}: {where}{inside}")
    model = saved.model
    if model is None:
        return None
    ads = replace(context.ads, input_ids=saved.tensors["ads.input_ids"])
    context.use_splits(ads, tokenised_for(model, context.test, context.data_dir, "test"))
    if context.choices is not None:
        context.choices = tokenised_for(model, context.choices, context.data_dir, "validation")
    placement.place(model)
    return model


def calibrate_student(student: AuditModel, context: Context) -> tuple[Calibration | None, dict]:
    """The final student's temperatures, fitted on the data set's validation split (as the student tokenises
    it) and stored in its config, and report.json's "calibration" entry. Without a validation split the
    student is served at 1.0: the temperatures it inherited from the teacher fitted the teacher's logits."""
    if context.choices is None:
        student.config.temperatures = {}
        context.log(f"calibration skipped: {NO_VALIDATION}")
        return None, skipped(NO_VALIDATION)
    calibration = fit_calibration(student, context.choices, context.test)
    calibration.apply(student)
    context.log(f"calibration (fitted on {len(context.choices)} validation ads): "
                f"{calibration_summary(calibration.record)}")
    return calibration, {"calibration": calibration.record}


def check_world_size(teacher_dir: Path, recipe_path: Path | str | None, world_size: int) -> None:
    """Refuse, before any rank starts, a world size that does not divide the recipe's global batch."""
    recipe = load_recipe(default_recipe(teacher_dir) if recipe_path is None else recipe_path)
    per_rank_batch(recipe.distillation.batch_size, world_size)


def load_teacher_and_recipe(teacher_dir: Path, recipe_path: Path | str | None, target_speedup: float | None,
                            log) -> tuple[Recipe, AuditModel]:
    """The recipe (the packaged one for the teacher's preset when none is given), checked against the
    teacher and the target speedup, and the teacher."""
    chosen = recipe_path is None
    if chosen:
        recipe_path = default_recipe(teacher_dir)
    recipe = load_recipe(recipe_path)
    if recipe.search and not target_speedup:
        raise RecipeError("a recipe with a search section needs a target speedup (--target-speedup)")
    if target_speedup is not None and target_speedup <= 1:
        raise RecipeError(f"the target speedup must be above 1, not {target_speedup}")
    teacher = AuditModel.from_pretrained(teacher_dir)
    if chosen:  # only once the teacher has loaded: a bad folder's error stays the one line printed
        log(f"recipe: {recipe_path} (packaged, for this teacher's preset)")
    recipe = recipe.resolve(teacher.config)  # targets relative to the teacher made absolute, checked
    if recipe.distillation.real_copy is None:  # as the teacher trained: what it learnt from such rows, passed on
        distillation = recipe.distillation.model_copy(update={"real_copy": teacher_real_copy(teacher_dir)})
        recipe = recipe.model_copy(update={"distillation": distillation})
    return recipe, teacher


def teacher_real_copy(teacher_dir: Path) -> float:
    """The real-copy fraction the teacher trained with (its metrics.json; 0 for a teacher without one)."""
    metrics = Path(teacher_dir) / METRICS_FILE
    return float(json.loads(metrics.read_text()).get("real_copy", 0.0)) if metrics.is_file() else 0.0


def with_real_copy(teacher: AuditModel, train: EncodedSplit, cache: TeacherCache, data_dir: Path,
                   processor: AuditProcessor, recipe: Recipe, outputs: TeacherOutputs, log
                   ) -> tuple[EncodedSplit, TeacherCache]:
    """The distillation ads with the recipe's real-copy rows (training/real_copy.py) put in before the held-out
    ads, and the teacher's outputs on all of them (the rows' read from `outputs` when an earlier run made the
    same rows). Why: a teacher trained on such rows stops reading unfamiliar clean words as violations; a student
    that never sees them learns that from the teacher's answers on template copy alone, and does not."""
    settings = recipe.distillation
    if not settings.real_copy:
        return train, cache
    kept = torch.arange(len(train) - settings.held_out_count(len(train)))
    texts = {record.id: record.text for record in read_split(Path(data_dir), "train")}
    rows = real_copy_rows(train.subset(kept), texts, round(settings.real_copy * len(kept)), processor,
                          seed=recipe.seed, taxonomy=teacher.config.taxonomy)
    if not len(rows):
        return train, cache
    # keyed by the rows' copy itself, so rows made by other code (another clause pool) are never read back
    key = {"seed": recipe.seed, "ads": len(train), "real_copy": settings.real_copy,
           "copy": hashlib.sha256(rows.input_ids.numpy().tobytes()).hexdigest()[:16]}
    index = torch.arange(len(rows))
    rows_cache = TeacherCache.from_tensors(outputs.get(
        "real_copy", key, lambda share: (cache_teacher(teacher, rows.subset(index[share])).tensors(), {}),
        rows=len(rows))[0])
    log(f"  {len(rows)} real-copy rows from {len(kept)} distillation ads")
    held_out = torch.arange(len(kept), len(train))
    return (train.subset(kept).joined(rows).joined(train.subset(held_out)),
            cache.subset(kept).concat(rows_cache).concat(cache.subset(held_out)))


def measure_teacher(teacher: AuditModel, teacher_dir: Path, data_dir: Path, recipe: Recipe, log,
                    outputs: TeacherOutputs) -> Reference:
    """The distillation ads (a seeded draw of the training split) and the test split, and the teacher on them:
    read from `outputs` when an earlier run computed them, else computed (one forward per ad) and written."""
    torch.manual_seed(recipe.seed)
    processor = AuditProcessor.from_folder(teacher.config, teacher_dir)
    full_train = encode_split(data_dir, "train", processor, teacher.config.tasks)
    order = torch.randperm(len(full_train), generator=torch.Generator().manual_seed(recipe.seed))
    train = full_train.subset(order[:recipe.distillation.samples])
    test = encode_split(data_dir, "test", processor, teacher.config.tasks)
    log(f"distilling on {len(train)} training ads, evaluating on {len(test)} test ads")

    draw = {"seed": recipe.seed, "ads": len(train)}
    rows = torch.arange(len(train))
    cache = TeacherCache.from_tensors(outputs.get(
        "ads", draw, lambda share: (cache_teacher(teacher, train.subset(rows[share])).tensors(), {}), rows=len(train))[0])
    train, cache = with_real_copy(teacher, train, cache, data_dir, processor, recipe, outputs, log)
    choices = encode_validation(data_dir, processor, teacher.config.tasks)

    def on_test(whole: slice) -> tuple[dict, dict]:  # rank 0 alone: its latency and accuracy figures
        predicted = {task: logits.argmax(-1) for task, logits in predict_logits(teacher, test).items()}
        entry = stage_entry("teacher", teacher, test, predicted, choices=choices)
        return {f"predictions.{task}": classes for task, classes in predicted.items()}, {"entry": entry}

    tensors, extra = outputs.get("test", {}, on_test)
    predictions = {name.split(".", 1)[1]: classes for name, classes in tensors.items()}
    entry = extra["entry"]
    log(f"teacher: {entry['params'] / 1e6:.2f}M params, {entry['latency_ms_p50']:.2f} ms, "
        f"verdict accuracy {entry['accuracy']:.4f}")
    return Reference(full_train, order, train, test, cache, predictions, entry, choices, outputs.sources["data"])


def assemble_report(reference: Reference, teacher_model: AuditModel, student_model: AuditModel, entries: list[dict],
                    context: Context, views: Views | None, searched: dict | None, started: float) -> dict:
    """report.json: the teacher, every stage, the student (both timed again in alternating rounds), what the
    student gained and lost against the teacher, and the search section when a policy was searched."""
    teacher = reference.entry
    student = dict(entries[-1] if entries else teacher)
    context.log("measuring teacher and student latency in alternating rounds")
    paired = paired_latency({"teacher": teacher_model, "student": student_model},
                            {"teacher": reference.test, "student": context.test}, rounds=context.recipe.latency_rounds)
    teacher.update(paired["teacher"])
    student.update(paired["student"])
    report = {
        "teacher": teacher,
        "stages": entries,
        "student": student,
        "speedup": teacher["latency_ms_p50"] / student["latency_ms_p50"],
        "throughput_gain": student["throughput_per_s"] / teacher["throughput_per_s"],
        "compression_ratio": teacher["params"] / student["params"],
        "flops_ratio": teacher["flops_per_ad"] / student["flops_per_ad"],
        "accuracy_drop_points": 100 * (teacher["accuracy"] - student["accuracy"]),
        "violation_f1_drop_points": 100 * (teacher["violation_macro_f1"] - student["violation_macro_f1"]),
        "distillation_samples": len(context.ads),  # the validation ads included: all the training ads it used
        "validation_samples": 0 if context.validation is None else len(context.validation),
        "augmented_views": 0 if views is None else len(views.plan.text_source),
        "real_copy_rows": sum("+real" in ad for ad in context.ads.ids),
        "wall_seconds": time.perf_counter() - started,
        "machine": machine(),
        "seed": context.recipe.seed,
        "data_checksum": reference.data_checksum,
    }
    if searched:
        searched["student_latency_ms_predicted"] = LatencyModel(**searched["latency_model"]).predict(
            student_model.config)
        searched["student_latency_ms_measured"] = student["latency_ms_p50"]
        report["search"] = searched
    return report
