"""AntGMM multi-stage compression: teacher -> blocks -> widths -> hidden size -> student.

Every stage cuts the model (physically: `structure.cut`) and distils it from the cached
teacher outputs on at most 2,000 training ads. After each stage the model is profiled and
evaluated on the test split, so `report.json` shows what every stage cost and bought.
"""

from __future__ import annotations

import copy
import functools
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from adaudit.data.encoding import EncodedSplit, encode_split
from adaudit.training.evaluation import evaluate, predict_logits
from adaudit.core.files import atomic_folder
from adaudit.training.measure import machine, paired_latency, profile
from adaudit.models.modeling import AuditModel
from adaudit.models.preprocessing import AuditProcessor

from .augmentation import ViewPlan, apply_plan, view_plan
from .distillation import BestEpoch, TeacherCache, cache_teacher, distil, mean_distillation_loss
from .importance import UnitMasks, block_influence, taylor_hidden_scores, taylor_unit_scores, top_indices
from .recipe import (BlocksStage, HiddenStage, Recipe, RecipeError, WidthsStage, default_recipe, load_recipe,
                     per_block)
from .search import LatencyModel, plot_search, policy_recipe, search_policy
from .structure import remove_blocks, shrink_hidden, shrink_widths
from .vocabulary import prune_data_vocabulary

REPORT_FILE = "report.json"
RECIPE_FILE = "recipe.json"


class Context:
    """What every stage needs: the distillation and calibration samples and the teacher's cached outputs."""

    def __init__(self, recipe: Recipe, train: EncodedSplit, cache: TeacherCache, log, views: Views | None = None):
        self.recipe, self.log = recipe, log
        held_out = held_out_count(recipe, train)
        if held_out:  # the last `validation_samples` of the distillation ads pick the final stage's best epoch
            kept, validation = torch.arange(len(train) - held_out), torch.arange(len(train) - held_out, len(train))
            self.validation, self.validation_cache = train.subset(validation), cache.subset(validation)
            train, cache = train.subset(kept), cache.subset(kept)
        else:
            self.validation = self.validation_cache = None
        if views is not None:  # the distillation ads first (calibration reads those), then their views
            train, cache = views.extend(train, cache)
        self.train, self.cache = train, cache
        calibration = torch.arange(min(recipe.calibration_samples, len(train)))
        self.calibration = train.subset(calibration)
        self.calibration_cache = cache.subset(calibration)
        self.steps = 0

    def distil(self, model: AuditModel, epochs: int, description: str) -> AuditModel:
        self.steps += 1
        losses = distil(model, self.train, self.cache, self.recipe.distillation, epochs, description,
                        seed=self.recipe.seed + self.steps)
        if losses:
            self.log(f"  {description}: distillation loss {losses[0]:.4f} -> {losses[-1]:.4f}")
        return model

    def distil_keeping_the_best_epoch(self, model: AuditModel, epochs: int, description: str) -> AuditModel:
        """`distil`, then back to the epoch with the lowest held-out loss (when ads are held out)."""
        if self.validation is None:
            return self.distil(model, epochs, description)
        self.steps += 1
        best = BestEpoch(self.validation, self.validation_cache, self.recipe.distillation)
        losses = distil(model, self.train, self.cache, self.recipe.distillation, epochs, description,
                        seed=self.recipe.seed + self.steps, on_epoch_end=best)
        if losses:
            self.log(f"  {description}: distillation loss {losses[0]:.4f} -> {losses[-1]:.4f}; held-out loss "
                     f"{' '.join(f'{x:.3f}' for x in best.losses)}: keeping epoch {best.best_epoch}")
        return best.restore(model)


def held_out_count(recipe: Recipe, train: EncodedSplit) -> int:
    return min(recipe.distillation.validation_samples, len(train) - 1)


@dataclass
class Views:
    plan: ViewPlan
    cache: TeacherCache  # the teacher's outputs on the view rows alone

    def extend(self, train: EncodedSplit, cache: TeacherCache) -> tuple[EncodedSplit, TeacherCache]:
        """The ads (as some model tokenises them) followed by their views, with the teacher's outputs on all."""
        return apply_plan(train, self.plan), cache.concat(self.cache)


def make_views(teacher: AuditModel, train: EncodedSplit, recipe: Recipe, log) -> Views | None:
    """Augmented views of the distillation ads (not of the held-out ones), labelled by the teacher once."""
    settings = recipe.distillation
    if not settings.views:
        return None
    kept = train.subset(torch.arange(len(train) - held_out_count(recipe, train)))
    plan = view_plan(kept, settings.views, settings.recombined_fraction, recipe.seed)
    rows = torch.arange(len(kept), len(kept) + len(plan.text_source))
    cache = cache_teacher(teacher, apply_plan(kept, plan).subset(rows), labelled=plan.labelled)
    log(f"  {len(rows)} augmented views of {len(kept)} distillation ads ({int((~plan.labelled).sum())} recombined)")
    return Views(plan, cache)


def run_blocks(model: AuditModel, stage: BlocksStage, context: Context) -> AuditModel:
    """Remove blocks `per_step` at a time, least influential first, down to a count or a given set."""
    teacher_numbers = {t: list(range(len(model.blocks(t)))) for t in stage.keep}  # position -> teacher block

    def removable(tower: str) -> list[int]:
        keep = stage.keep[tower]
        if isinstance(keep, list):
            return [i for i, number in enumerate(teacher_numbers[tower]) if number not in keep]
        return list(range(len(model.blocks(tower)))) if len(model.blocks(tower)) > keep else []

    while any(removable(t) for t in stage.keep):
        towers = [t for t in stage.keep if removable(t)]
        influence = block_influence(model, context.calibration, towers)
        kept = {}
        for tower in towers:
            candidates = removable(tower)
            keep = stage.keep[tower]
            surplus = len(candidates) if isinstance(keep, list) else len(model.blocks(tower)) - keep
            order = sorted(candidates, key=lambda i: (influence[tower][i].item(), i))
            removed = sorted(order[:min(stage.per_step, surplus)])
            kept[tower] = [i for i in range(len(model.blocks(tower))) if i not in removed]
            context.log(f"  {tower}: removing teacher blocks {[teacher_numbers[tower][i] for i in removed]} (influence "
                        f"{', '.join(f'{influence[tower][i]:.3f}' for i in removed)})")
            teacher_numbers[tower] = [teacher_numbers[tower][i] for i in kept[tower]]
        model = remove_blocks(model, kept)
        context.distil(model, stage.epochs_per_step, "blocks")
    return model


def run_widths(model: AuditModel, stage: WidthsStage, context: Context) -> AuditModel:
    scores = taylor_unit_scores(model, context.calibration, context.calibration_cache, context.recipe.distillation)
    def kept(masks: list[torch.Tensor], widths, where: str) -> list[torch.Tensor]:
        return [top_indices(m.grad, width) for m, width in zip(masks, per_block(widths, len(masks), where))]

    kept_heads = {t: kept(scores.heads[t], keep, f"{t} heads") for t, keep in stage.heads.items()}
    kept_neurons = {t: kept(scores.neurons[t], keep, f"{t} ffn") for t, keep in stage.ffn.items()}
    kept_cross = None
    if stage.cross_attention_heads:
        image_attending = [m for m in scores.cross_heads if m is not None]
        chosen = iter(kept(image_attending, stage.cross_attention_heads, "cross-attention heads"))
        kept_cross = [next(chosen) if m is not None else None for m in scores.cross_heads]

    # soft masks: the units about to be pruned fade out while the rest learns to do without them
    masks = UnitMasks(model)
    for step in range(stage.soft_steps):
        scale = stage.mask_decay ** (step + 1)
        for mask, kept in _pruned_masks(masks, kept_heads, kept_neurons, kept_cross):
            mask.fill_(scale)
            mask[kept] = 1.0
        context.distil(model, stage.epochs_per_step, f"widths, soft masks x{scale:.3f}")
    masks.remove()
    model = shrink_widths(model, kept_heads, kept_neurons, kept_cross)
    return context.distil(model, stage.epochs_after_cut, "widths after the cut")


def _pruned_masks(masks: UnitMasks, kept_heads, kept_neurons, kept_cross):
    """(mask, indices kept) for every block whose width the stage shrinks."""
    for tower, per_block in kept_heads.items():
        yield from zip(masks.heads[tower], per_block)
    for tower, per_block in kept_neurons.items():
        yield from zip(masks.neurons[tower], per_block)
    for mask, kept in zip(masks.cross_heads, kept_cross or []):
        if mask is not None:
            yield mask, kept


def run_hidden(model: AuditModel, stage: HiddenStage, context: Context) -> AuditModel:
    start = {t: model.config.tower(t).hidden_size for t in stage.size}
    for step in range(1, stage.steps + 1):
        sizes = {t: round(start[t] - (start[t] - size) * step / stage.steps) for t, size in stage.size.items()}
        sizes = {t: s for t, s in sizes.items() if s < model.config.tower(t).hidden_size}
        if not sizes:
            continue
        scores = taylor_hidden_scores(model, context.calibration, context.calibration_cache,
                                      context.recipe.distillation, list(sizes))
        model = shrink_hidden(model, {t: top_indices(scores[t], s) for t, s in sizes.items()})
        context.log(f"  hidden sizes now {', '.join(f'{t} {s}' for t, s in sizes.items())}")
        context.distil(model, stage.epochs_per_step, "hidden")
    return model


RUNNERS = {"blocks": run_blocks, "widths": run_widths, "hidden": run_hidden}


def stage_entry(name: str, model: AuditModel, test: EncodedSplit, teacher_predictions, extra=None) -> dict:
    return {"name": name, **profile(model, test), **evaluate(model, test, teacher_predictions),
            "shape": _shape_summary(model), **(extra or {})}


def _shape_summary(model: AuditModel) -> dict:
    return {tower: {"blocks": len(model.config.tower(tower).blocks), "hidden": model.config.tower(tower).hidden_size,
                    "heads": [b.heads for b in model.config.tower(tower).blocks],
                    "ffn": [b.intermediate_size for b in model.config.tower(tower).blocks]}
            for tower in ("vision", "qformer", "text")}


def compress(teacher_dir: Path, data_dir: Path, out: Path, recipe_path: Path | str | None = None, log=print,
             target_speedup: float | None = None) -> dict:
    """Teacher folder -> student folder (config, weights, vocabulary, recipe.json, report.json).

    A recipe with a `search` section (`--recipe auto`) first searches the per-layer policy under
    a latency budget of the teacher's batch-1 latency / `target_speedup` (search.py)."""
    started = time.perf_counter()
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
    recipe.check_against(teacher.config)
    torch.manual_seed(recipe.seed)
    processor = AuditProcessor.from_folder(teacher.config, teacher_dir)
    full_train = encode_split(data_dir, "train", processor, teacher.config.tasks)
    generator = torch.Generator().manual_seed(recipe.seed)
    order = torch.randperm(len(full_train), generator=generator)
    train = full_train.subset(order[:recipe.distillation.samples])
    test = teacher_test = encode_split(data_dir, "test", processor, teacher.config.tasks)
    log(f"distilling on {len(train)} training ads, evaluating on {len(test)} test ads")

    cache = cache_teacher(teacher, train)
    teacher_predictions = {t: v.argmax(-1) for t, v in predict_logits(teacher, test).items()}
    teacher_entry = stage_entry("teacher", teacher, test, teacher_predictions)
    log(f"teacher: {teacher_entry['params'] / 1e6:.2f}M params, {teacher_entry['latency_ms_p50']:.2f} ms, "
        f"verdict accuracy {teacher_entry['accuracy']:.4f}")
    searched = None
    if recipe.search:
        searched = search_policy(teacher, full_train, order, recipe, teacher_entry["latency_ms_p50"] / target_speedup,
                                 log)
        recipe = policy_recipe(recipe, searched["policy"])
        recipe.check_against(teacher.config)

    views = make_views(teacher, train, recipe, log)
    context = Context(recipe, train, cache, log, views)
    model = copy.deepcopy(teacher)  # the student starts as the teacher
    stages = []
    if recipe.vocabulary.prune:  # the input dimension: the vocabulary
        stage_start = time.perf_counter()
        model, train, test, summary = prune_data_vocabulary(model, data_dir, train, test, recipe.vocabulary, log)
        context = Context(recipe, train, cache, log, views)
        stages.append(stage_entry("vocabulary", model, test, teacher_predictions,
                                  {"seconds": time.perf_counter() - stage_start, **summary}))
    steps = [(stage.kind, functools.partial(RUNNERS[stage.kind], stage=stage)) for stage in recipe.stages]
    if recipe.final_epochs:
        steps.append(("final", lambda model, context: context.distil_keeping_the_best_epoch(
            model, recipe.final_epochs, "final")))
    for number, (name, run_stage) in enumerate(steps, 1):
        stage_start = time.perf_counter()
        log(f"stage {number}: {name}")
        model = run_stage(model, context=context)
        entry = stage_entry(name, model, test, teacher_predictions, {
            "seconds": time.perf_counter() - stage_start,
            "distillation_loss": mean_distillation_loss(model, context.train, context.cache, recipe.distillation)})
        stages.append(entry)
        log(f"  -> {entry['params'] / 1e6:.3f}M params, {entry['latency_ms_p50']:.2f} ms, "
            f"verdict accuracy {entry['accuracy']:.4f}, violation F1 {entry['violation_macro_f1']:.4f}")

    student = dict(stages[-1] if stages else teacher_entry)
    log("measuring teacher and student latency in alternating rounds")
    paired = paired_latency({"teacher": teacher, "student": model}, {"teacher": teacher_test, "student": test})
    teacher_entry.update(paired["teacher"])
    student.update(paired["student"])
    report = {
        "teacher": teacher_entry,
        "stages": stages,
        "student": student,
        "speedup": teacher_entry["latency_ms_p50"] / student["latency_ms_p50"],
        "throughput_gain": student["throughput_per_s"] / teacher_entry["throughput_per_s"],
        "compression_ratio": teacher_entry["params"] / student["params"],
        "flops_ratio": teacher_entry["flops_per_ad"] / student["flops_per_ad"],
        "accuracy_drop_points": 100 * (teacher_entry["accuracy"] - student["accuracy"]),
        "violation_f1_drop_points": 100 * (teacher_entry["violation_macro_f1"] - student["violation_macro_f1"]),
        "distillation_samples": len(train),  # the validation ads included: all the training ads it used
        "validation_samples": 0 if context.validation is None else len(context.validation),
        "augmented_views": 0 if views is None else len(views.plan.text_source),
        "wall_seconds": time.perf_counter() - started,
        "machine": machine(),
    }
    if searched:
        searched["student_latency_ms_predicted"] = LatencyModel(**searched["latency_model"]).predict(model.config)
        searched["student_latency_ms_measured"] = student["latency_ms_p50"]
        report["search"] = searched
    with atomic_folder(out) as staging:
        model.save_pretrained(staging)  # nested atomic write into the staging folder
        (staging / RECIPE_FILE).write_text(recipe.model_dump_json(indent=2) + "\n")
        (staging / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
        if searched:
            plot_search(searched, staging)
    return report

