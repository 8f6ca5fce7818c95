"""The compression stages, one object each: `run(model, context)` returns the cut model and its report entry.

    vocabulary  the input dimension: the tokenizer and word embeddings pruned to the training copy
                (vocabulary.py); the splits are re-tokenised, so the context is rebuilt from them
    blocks      whole blocks removed `per_step` at a time, least influential first
    widths      heads and FFN neurons by Taylor importance: soft masks first, then the hard cut
    hidden      each tower's hidden size, in equal steps
    final       one more distillation, keeping the epoch with the lowest held-out loss

Every stage but the vocabulary distils after its cut, from the teacher's cached outputs, and its
entry adds the distillation loss after it. `build_stages` is the one place that turns a recipe
into the list of stages; `run_stages` runs them in order. The `Context` is what every stage reads:
the distillation ads (with their augmented views), the calibration samples, and the test split
and teacher's predictions every entry is measured against. Every stage's last line says how long it
took, how long compression has run and about how long is left (from the distillation epochs done
and planned), so a log without progress bars still shows where a long run is.

Resuming (checkpoints.py): after every stage and every distillation epoch the Context writes a checkpoint:
the model, the stage in progress and its own `stage_state` (what it decided before its current distillation:
the units it keeps, the step it is at), the optimizer and the random states. A resumed run skips the stages
done; the stage in progress reads its `stage_state`, skips the cuts it already made, and its first distillation
(`Context.interrupted`) continues from the epoch the checkpoint holds.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import ClassVar, Protocol

import torch

from adaudit.data.encoding import EncodedSplit, tokenised_for
from adaudit.models.modeling import AuditModel
from adaudit.training.distributed import World
from adaudit.training.evaluation import evaluate
from adaudit.training.loop import duration
from adaudit.training.measure import profile

from .augmentation import Views
from .checkpoints import Checkpoints, Saved, restore_random_states
from .distillation import BestEpoch, TeacherCache, distil, mean_distillation_loss
from .importance import UnitMasks, block_influence, taylor_hidden_scores, taylor_unit_scores, top_indices
from .recipe import BlocksStage, HiddenStage, Recipe, VocabularySettings, WidthsStage, per_block
from .structure import remove_blocks, shrink_hidden, shrink_widths
from .vocabulary import prune_data_vocabulary


def shape_summary(model: AuditModel) -> dict:
    """Per tower: blocks, hidden size, and every block's heads and FFN neurons (a report entry's `shape`)."""
    return {tower: {"blocks": len(model.config.tower(tower).blocks), "hidden": model.config.tower(tower).hidden_size,
                    "heads": [b.heads for b in model.config.tower(tower).blocks],
                    "ffn": [b.intermediate_size for b in model.config.tower(tower).blocks]}
            for tower in ("vision", "qformer", "text")}


def stage_entry(name: str, model: AuditModel, test: EncodedSplit, teacher_predictions, extra=None,
                choices: EncodedSplit | None = None) -> dict:
    """A report entry: size, speed and accuracy of `model` on the test split, its shape, and `extra`;
    with `choices` (the data set's validation split), the figures a recipe or a stopping point may be
    chosen on, under "validation", so that no choice has to read the test split's figures."""
    entry = {"name": name, **profile(model, test), **evaluate(model, test, teacher_predictions),
             "shape": shape_summary(model), **(extra or {})}
    if choices is not None:
        figures = evaluate(model, choices)
        entry["validation"] = {"accuracy": figures["accuracy"], "violation_macro_f1": figures["violation_macro_f1"],
                               "samples": len(choices)}
    return entry



class Context:
    """What every stage needs: the distillation and calibration samples, the teacher's cached outputs,
    and the test split with the teacher's predictions on it."""

    def __init__(self, recipe: Recipe, data_dir: Path, ads: EncodedSplit, cache: TeacherCache, test: EncodedSplit,
                 teacher_predictions: dict[str, torch.Tensor], views: Views | None = None, log=print,
                 choices: EncodedSplit | None = None):
        self.recipe, self.data_dir, self.log = recipe, data_dir, log
        # the data set's validation split, if it has one, as the current model tokenises it (the teacher, then
        # the student from the vocabulary stage on)
        self.choices = choices
        self.teacher_cache, self.views, self.teacher_predictions = cache, views, teacher_predictions
        self.steps = 0
        self.started = time.perf_counter()
        self.epochs_done, self.epochs_planned = 0, 0  # distillation epochs, for the estimate of the time left
        self.device = torch.device("cpu")  # where distillation trains (`compress --device`, training/device.py)
        # the ranks under torchrun (training/distributed.py): every rank distils, rank 0 decides every cut (`agreed`),
        # measures the entries and writes the checkpoints; the others' entries hold only the stage's name
        self.world = World()
        # resuming (checkpoints.py): where the checkpoints go (None: none are written), the stage in progress, its
        # own state, the entries of the stages done, a checkpoint taken inside a distillation to continue, and
        # what else the checkpoint must carry (the searched policy)
        self.checkpoints: Checkpoints | None = None
        self.stage_index, self.stage_state, self.entries = 0, {}, []
        self.interrupted: Saved | None = None
        self.noted: dict = {}
        self.use_splits(ads, test)

    def use_splits(self, ads: EncodedSplit, test: EncodedSplit) -> None:
        """Distil on `ads` (the teacher's outputs cached on them) and measure on `test`; also after the
        vocabulary stage, which renumbers the ads' tokens and tokenises the test split again."""
        self.ads, self.test = ads, test
        train, cache = ads, self.teacher_cache
        held_out = self.recipe.distillation.held_out_count(len(ads))
        if held_out:  # the last `validation_samples` of the distillation ads pick the final stage's best epoch
            kept, validation = torch.arange(len(ads) - held_out), torch.arange(len(ads) - held_out, len(ads))
            self.validation, self.validation_cache = ads.subset(validation), cache.subset(validation)
            train, cache = ads.subset(kept), cache.subset(kept)
        else:
            self.validation = self.validation_cache = None
        if self.views is not None:  # the distillation ads first (calibration reads those), then their views
            train, cache = self.views.extend(train, cache)
        self.train, self.cache = train, cache
        calibration = torch.arange(min(self.recipe.calibration_samples, len(train)))
        self.calibration = train.subset(calibration)
        self.calibration_cache = cache.subset(calibration)

    def entry(self, name: str, model: AuditModel, extra=None) -> dict:
        """The stage's report entry, measured on rank 0; `extra` (a function: it may cost a pass over the ads)
        adds to it."""
        if not self.world.main:
            return {"name": name}
        return stage_entry(name, model, self.test, self.teacher_predictions, extra() if extra else None, self.choices)

    def distillation_loss(self, model: AuditModel) -> float:
        return mean_distillation_loss(model, self.train, self.cache, self.recipe.distillation)

    def progress(self) -> str:
        """Time since the stages began, and the time left estimated from the distillation epochs done."""
        elapsed = time.perf_counter() - self.started
        left = self.epochs_planned - self.epochs_done
        estimate = f", about {duration(elapsed / self.epochs_done * left)} left" if self.epochs_done and left > 0 else ""
        return f"stages so far {duration(elapsed)}{estimate}"

    def distil(self, model: AuditModel, epochs: int, description: str) -> AuditModel:
        losses = self.distil_checkpointed(model, epochs, description)
        if losses:
            self.log(f"  {description}: distillation loss {loss_change(losses)}")
        return model

    def distil_keeping_the_best_epoch(self, model: AuditModel, epochs: int, description: str) -> AuditModel:
        """`distil`, then back to the epoch with the lowest held-out loss (when ads are held out)."""
        if self.validation is None:
            return self.distil(model, epochs, description)
        best = BestEpoch(self.validation, self.validation_cache, self.recipe.distillation, self.world)
        losses = self.distil_checkpointed(model, epochs, description, best)
        if losses:
            self.log(f"  {description}: distillation loss {loss_change(losses)}; held-out loss "
                     f"{' '.join(f'{x:.3f}' for x in best.losses)}: keeping epoch {best.best_epoch}")
        return best.restore(model)

    def distil_checkpointed(self, model: AuditModel, epochs: int, description: str,
                            best: BestEpoch | None = None) -> list[float]:
        """One distillation, a checkpoint after each epoch; the interrupted one of a resumed run continues."""
        self.steps += 1
        state, optimizer_state = self.continue_interrupted(best)

        def epoch_ended(model: AuditModel, optimizer, training_state, loss: float) -> None:
            if best is not None:
                best(model, optimizer, training_state, loss)
            self.checkpoint(model, optimizer, training_state, best)

        losses = distil(model, self.train, self.cache, self.recipe.distillation, epochs, description,
                        seed=self.recipe.seed + self.steps, on_epoch_end=epoch_ended, device=self.device,
                        state=state, optimizer_state=optimizer_state, world=self.world)
        self.epochs_done += max(epochs, 0)
        return losses

    def continue_interrupted(self, best: BestEpoch | None):
        """(epochs done, optimizer state) of the distillation a resumed run continues, its random states and best
        epoch put back; (None, None) for every other distillation."""
        saved, self.interrupted = self.interrupted, None
        if saved is None:
            return None, None
        if saved.progress["steps"] != self.steps:
            raise RuntimeError(f"the checkpoint is at distillation {saved.progress['steps']}, the stage at "
                               f"{self.steps}: the stage did not skip what it had done")
        restore_random_states(saved.tensors)
        if best is not None and "best_losses" in saved.progress:
            best.losses = list(saved.progress["best_losses"])
            best.best_state = {name[len("best."):]: tensor for name, tensor in saved.tensors.items()
                               if name.startswith("best.")} or None
        return saved.training_state, saved.optimizer_state

    def checkpoint(self, model: AuditModel | None, optimizer=None, training_state=None,
                   best: BestEpoch | None = None) -> None:
        """Where the run is (checkpoints.py); nothing when no checkpoints are kept, or on ranks other than 0."""
        if self.checkpoints is None or not self.world.main:
            return
        progress = {"stage": self.stage_index, "stage_state": self.stage_state, "entries": self.entries,
                    "steps": self.steps, "epochs_done": self.epochs_done, **self.noted}
        tensors = {"ads.input_ids": self.ads.input_ids}
        if best is not None:
            progress["best_losses"] = best.losses
            tensors.update({f"best.{name}": tensor for name, tensor in (best.best_state or {}).items()})
        self.checkpoints.save(progress, model, tensors, optimizer, training_state)

    def resume(self, saved: Saved) -> None:
        """Continue where `saved` was taken: the stages done are skipped, the stage in progress reads its state."""
        progress = saved.progress
        self.stage_index, self.stage_state = progress["stage"], progress["stage_state"]
        self.entries, self.epochs_done, self.steps = progress["entries"], progress["epochs_done"], progress["steps"]
        if saved.training_state is not None:  # inside a distillation: it runs again from its checkpointed epoch
            self.interrupted, self.steps = saved, self.steps - 1
        else:
            restore_random_states(saved.tensors)


def loss_change(losses: list[float]) -> str:
    """First and last epoch's mean loss; for one epoch, its first and last batch's (fit's EpochLosses), so
    that a one-epoch step does not read as if nothing happened; each time saying which figures they are."""
    if hasattr(losses, "change"):
        return losses.change()
    return f"{losses[0]:.4f} -> {losses[-1]:.4f} (epoch means)" if len(losses) > 1 else f"{losses[0]:.4f} (one epoch)"


class CompressionStage(Protocol):
    name: ClassVar[str]

    def run(self, model: AuditModel, context: Context) -> tuple[AuditModel, dict]:
        """The model after the stage, and the stage's entry in report.json."""

    def epochs(self, depth: dict[str, int]) -> int:
        """The distillation epochs the stage plans for a model of `depth` blocks per tower (which a
        blocks stage then lowers)."""


class PruneVocabulary:
    name: ClassVar[str] = "vocabulary"

    def __init__(self, settings: VocabularySettings):
        self.settings = settings

    def epochs(self, depth: dict[str, int]) -> int:
        return 0

    def run(self, model: AuditModel, context: Context) -> tuple[AuditModel, dict]:
        started = time.perf_counter()
        model, ads, test, summary = prune_data_vocabulary(model, context.data_dir, context.ads, context.test,
                                                          self.settings, context.log)
        context.use_splits(ads, test)
        if context.choices is not None:  # the one stage that changes the tokenizer: the validation split follows
            context.choices = tokenised_for(model, context.choices, context.data_dir, "validation")
        return model, context.entry(self.name, model, lambda: {"seconds": time.perf_counter() - started, **summary})


class DistillingStage:
    """A stage that cuts and distils (`apply`) as its `settings` (from the recipe) say, logged as stage
    `number`; its entry adds the seconds it took and the distillation loss after it."""
    name: ClassVar[str]

    def __init__(self, settings, number: int):
        self.settings, self.number = settings, number

    def apply(self, model: AuditModel, context: Context) -> AuditModel:
        raise NotImplementedError

    def run(self, model: AuditModel, context: Context) -> tuple[AuditModel, dict]:
        started = time.perf_counter()
        context.log(f"stage {self.number}: {self.name}")
        model = self.apply(model, context)
        entry = context.entry(self.name, model, lambda: {"seconds": time.perf_counter() - started,
                                                         "distillation_loss": context.distillation_loss(model)})
        if not context.world.main:
            return model, entry
        context.log(f"  -> {entry['params'] / 1e6:.3f}M params, {entry['latency_ms_p50']:.2f} ms, "
                    f"verdict accuracy {entry['accuracy']:.4f}, violation F1 {entry['violation_macro_f1']:.4f} "
                    f"(stage {self.number}: {duration(entry['seconds'])}; {context.progress()})")
        return model, entry


class RemoveBlocks(DistillingStage):
    """Remove blocks `per_step` at a time, least influential first, down to a count or a given set."""
    name: ClassVar[str] = "blocks"
    settings: BlocksStage

    def epochs(self, depth: dict[str, int]) -> int:
        stage, steps = self.settings, 0
        for tower, keep in stage.keep.items():
            surplus = max(depth[tower] - (len(keep) if isinstance(keep, list) else keep), 0)
            depth[tower] -= surplus
            steps = max(steps, -(-surplus // stage.per_step))
        return steps * stage.epochs_per_step

    def apply(self, model: AuditModel, context: Context) -> AuditModel:
        stage = self.settings
        teacher_numbers = context.stage_state.setdefault(  # tower -> position -> teacher block
            "teacher_numbers", {t: list(range(len(model.blocks(t)))) for t in stage.keep})
        if context.interrupted is not None:  # resumed inside a step: its cut is in the model already
            context.distil(model, stage.epochs_per_step, "blocks")

        def removable(tower: str) -> list[int]:
            keep = stage.keep[tower]
            if isinstance(keep, list):
                return [i for i, number in enumerate(teacher_numbers[tower]) if number not in keep]
            return list(range(len(model.blocks(tower)))) if len(model.blocks(tower)) > keep else []

        while any(removable(t) for t in stage.keep):
            towers = [t for t in stage.keep if removable(t)]
            influence = context.world.agreed(lambda: {tower: scores.tolist() for tower, scores in
                                                      block_influence(model, context.calibration, towers).items()})
            kept = {}
            for tower in towers:
                candidates = removable(tower)
                keep = stage.keep[tower]
                surplus = len(candidates) if isinstance(keep, list) else len(model.blocks(tower)) - keep
                order = sorted(candidates, key=lambda i: (influence[tower][i], i))
                removed = sorted(order[:min(stage.per_step, surplus)])
                kept[tower] = [i for i in range(len(model.blocks(tower))) if i not in removed]
                context.log(f"  {tower}: removing teacher blocks {[teacher_numbers[tower][i] for i in removed]} "
                            f"(influence {', '.join(f'{influence[tower][i]:.3f}' for i in removed)})")
                teacher_numbers[tower] = [teacher_numbers[tower][i] for i in kept[tower]]
            model = remove_blocks(model, kept)
            context.distil(model, stage.epochs_per_step, "blocks")
        return model


class ShrinkWidths(DistillingStage):
    """Keep the heads and FFN neurons (and Q-Former image-attention heads) of highest Taylor importance:
    the units about to be pruned fade out under soft masks while the rest learns to do without them,
    then the hard cut."""
    name: ClassVar[str] = "widths"
    settings: WidthsStage

    def epochs(self, depth: dict[str, int]) -> int:
        return self.settings.soft_steps * self.settings.epochs_per_step + self.settings.epochs_after_cut

    def apply(self, model: AuditModel, context: Context) -> AuditModel:
        stage, state = self.settings, context.stage_state  # state: what a resumed run must not decide again
        if "kept" not in state:  # rank 0's choice on every rank
            state["kept"] = context.world.agreed(lambda: units_as_lists(*self.kept_units(model, context)))
        kept_heads, kept_neurons, kept_cross = units_from_lists(state["kept"])
        if not state.get("cut"):
            masks = UnitMasks(model)
            for step in range(state.get("soft_step", 0), stage.soft_steps):
                state["soft_step"] = step
                scale = stage.mask_decay ** (step + 1)
                for mask, kept in pruned_masks(masks, kept_heads, kept_neurons, kept_cross):
                    mask.fill_(scale)
                    mask[kept] = 1.0
                context.distil(model, stage.epochs_per_step, f"widths, soft masks x{scale:.3f}")
            masks.remove()
            model = shrink_widths(model, kept_heads, kept_neurons, kept_cross)
            state["cut"] = True
        return context.distil(model, stage.epochs_after_cut, "widths after the cut")

    def kept_units(self, model: AuditModel, context: Context):
        """(heads, FFN neurons, image-attention heads) to keep: tower -> per block, the sorted indices."""
        stage = self.settings
        scores = taylor_unit_scores(model, context.calibration, context.calibration_cache,
                                    context.recipe.distillation)

        def kept(masks: list[torch.Tensor], widths, where: str) -> list[torch.Tensor]:
            return [top_indices(m.grad, width) for m, width in zip(masks, per_block(widths, len(masks), where))]

        kept_heads = {t: kept(scores.heads[t], keep, f"{t} heads") for t, keep in stage.heads.items()}
        kept_neurons = {t: kept(scores.neurons[t], keep, f"{t} ffn") for t, keep in stage.ffn.items()}
        kept_cross = None
        if stage.cross_attention_heads:
            image_attending = [m for m in scores.cross_heads if m is not None]
            chosen = iter(kept(image_attending, stage.cross_attention_heads, "cross-attention heads"))
            kept_cross = [next(chosen) if m is not None else None for m in scores.cross_heads]
        return kept_heads, kept_neurons, kept_cross


def units_as_lists(kept_heads, kept_neurons, kept_cross) -> dict:
    """The units a widths stage keeps as plain lists (a checkpoint's JSON)."""
    as_lists = lambda per_tower: {t: [kept.tolist() for kept in blocks] for t, blocks in per_tower.items()}  # noqa: E731
    return {"heads": as_lists(kept_heads), "neurons": as_lists(kept_neurons),
            "cross": None if kept_cross is None else [None if kept is None else kept.tolist() for kept in kept_cross]}


def units_from_lists(units: dict):
    """(heads, FFN neurons, image-attention heads) as index tensors, from `units_as_lists`."""
    as_tensors = lambda per_tower: {t: [torch.tensor(kept, dtype=torch.long) for kept in blocks]  # noqa: E731
                                    for t, blocks in per_tower.items()}
    cross = units["cross"]
    return (as_tensors(units["heads"]), as_tensors(units["neurons"]),
            None if cross is None else [None if kept is None else torch.tensor(kept, dtype=torch.long) for kept in cross])


def pruned_masks(masks: UnitMasks, kept_heads, kept_neurons, kept_cross):
    """(mask, indices kept) for every block whose width the stage shrinks."""
    for tower, kept_per_block in kept_heads.items():
        yield from zip(masks.heads[tower], kept_per_block)
    for tower, kept_per_block in kept_neurons.items():
        yield from zip(masks.neurons[tower], kept_per_block)
    for mask, kept in zip(masks.cross_heads, kept_cross or []):
        if mask is not None:
            yield mask, kept


class ShrinkHidden(DistillingStage):
    """Shrink each tower's hidden size in `steps` equal steps, keeping the channels of highest Taylor importance."""
    name: ClassVar[str] = "hidden"
    settings: HiddenStage

    def epochs(self, depth: dict[str, int]) -> int:
        return self.settings.steps * self.settings.epochs_per_step

    def apply(self, model: AuditModel, context: Context) -> AuditModel:
        stage, state = self.settings, context.stage_state
        start = state.setdefault("start", {t: model.config.tower(t).hidden_size for t in stage.size})
        if context.interrupted is not None:  # resumed inside step `state["step"]`: its cut is in the model already
            context.distil(model, stage.epochs_per_step, "hidden")
        for step in range(state.get("step", 0) + 1, stage.steps + 1):
            sizes = {t: round(start[t] - (start[t] - size) * step / stage.steps) for t, size in stage.size.items()}
            sizes = {t: s for t, s in sizes.items() if s < model.config.tower(t).hidden_size}
            if not sizes:
                continue
            scores = context.world.agreed(lambda: {tower: scores.cpu() for tower, scores in taylor_hidden_scores(
                model, context.calibration, context.calibration_cache, context.recipe.distillation,
                list(sizes)).items()})  # rank 0's on every rank
            model = shrink_hidden(model, {t: top_indices(scores[t], s) for t, s in sizes.items()})
            context.log(f"  hidden sizes now {', '.join(f'{t} {s}' for t, s in sizes.items())}")
            state["step"] = step
            context.distil(model, stage.epochs_per_step, "hidden")
        return model


class FinalDistillation(DistillingStage):
    name: ClassVar[str] = "final"
    settings: int  # epochs

    def epochs(self, depth: dict[str, int]) -> int:
        return self.settings

    def apply(self, model: AuditModel, context: Context) -> AuditModel:
        return context.distil_keeping_the_best_epoch(model, self.settings, "final")


CUTS = {"blocks": RemoveBlocks, "widths": ShrinkWidths, "hidden": ShrinkHidden}  # recipe stage kind -> stage


def build_stages(recipe: Recipe) -> list[CompressionStage]:
    """The recipe's stages in the order they run: the vocabulary (when pruned), the recipe's cuts, the
    final distillation (when it has epochs)."""
    vocabulary = [PruneVocabulary(recipe.vocabulary)] if recipe.vocabulary.prune else []
    cuts = [CUTS[stage.kind](stage, number) for number, stage in enumerate(recipe.stages, 1)]
    final = [FinalDistillation(recipe.final_epochs, len(cuts) + 1)] if recipe.final_epochs else []
    return vocabulary + cuts + final


def run_stages(stages: list[CompressionStage], model: AuditModel, context: Context) -> tuple[AuditModel, list[dict]]:
    """Each stage in turn on the model the last one returned (from `context.stage_index` on: a resumed run skips
    the stages done), a checkpoint after each; the student and every stage's entry."""
    depth = {tower: len(model.blocks(tower)) for tower in ("vision", "qformer", "text")}
    context.epochs_planned = context.epochs_done + sum(stage.epochs(depth) for stage in stages[context.stage_index:]
                                                        if hasattr(stage, "epochs"))
    for number in range(context.stage_index, len(stages)):
        context.stage_index = number
        model, entry = stages[number].run(model, context)
        context.entries.append(entry)
        context.stage_index, context.stage_state = number + 1, {}
        context.checkpoint(model)
    return model, list(context.entries)
