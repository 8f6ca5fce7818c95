"""One plain training loop, shared by teacher training and distillation, plus checkpoints.

Training steps run on the device given (training/device.py: `--device`) under its autocast: bfloat16
where the CPU supports it natively (AVX-512 BF16 or AMX), where it is markedly faster, and on GPUs with
bfloat16; float16 with loss scaling on older GPUs. Weights, optimizer state and evaluation stay float32.
Under torchrun the same loop runs on every rank with DDP (training/distributed.py).

Progress: in a terminal, tqdm's bar; elsewhere (a log file, CI, a command in the background), where
the bar is off, one line per epoch on stderr (`ProgressLines`), so a long run is never silent.

`fit` knows nothing about losses: it takes a function of (model, batch index) that returns
the loss, so the teacher (cross-entropy on labels) and every compression stage (distillation
from cached teacher logits) run the same loop. Checkpoints hold no pickle: the model as
safetensors + JSON, the optimizer's tensors as safetensors and its settings as JSON.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from adaudit.data.encoding import EncodedSplit
from adaudit.core.files import atomic_folder
from adaudit.models.labels import DEFAULT_TAXONOMY, Taxonomy
from adaudit.models.modeling import AuditModel

from .averaging import WeightAverage
from .device import Placement
from .distributed import World, per_rank_batch

LossFunction = Callable[[AuditModel, torch.Tensor], torch.Tensor]


@dataclass
class Schedule:
    epochs: int
    batch_size: int = 32
    learning_rate: float = 3e-4
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    seed: int = 0
    bfloat16: bool | None = None  # autocast to bfloat16 (False: float32); None: by device (training/device.py)
    # parameters under these top-level modules learn at `fresh_learning_rate` instead: the parts a
    # pretrained teacher adds around its pretrained towers start from random weights
    fresh_modules: tuple[str, ...] = ()
    fresh_learning_rate: float | None = None


@dataclass
class TrainingState:
    """Where a run is; saved with each checkpoint so a run can resume."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken


def label_loss(model: AuditModel, split: EncodedSplit, index: torch.Tensor,
               pictures: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Sum over tasks of cross-entropy with the labels, plus the image-grounding loss; `pictures` (uint8
    pictures -> uint8 pictures) changes the batch's pictures first (training/reframing.py)."""
    output = model(**split.inputs(index, pictures))
    labels = split.labels[index].to(output.pooled.device)  # the model's device (its inputs follow it there)
    loss = sum(F.cross_entropy(output.logits[task], labels[:, i]) for i, task in enumerate(split.tasks))
    taxonomy = getattr(model, "module", model).config.taxonomy  # the model itself under DDP
    return loss + image_grounding_loss(output.image_logits, split, labels, taxonomy)


def image_grounding_loss(image_logits: dict[str, torch.Tensor], split: EncodedSplit,
                         labels: torch.Tensor, taxonomy: Taxonomy = DEFAULT_TAXONOMY) -> torch.Tensor:
    """Cross-entropy of the picture-only heads: they teach the vision tower what the picture shows.

    `industry` counts only where the picture shows the advertised product (not the taxonomy's mismatch
    class, when it has one).
    """
    column = {task: i for i, task in enumerate(split.tasks)}
    matches = torch.ones(len(labels), dtype=torch.bool, device=labels.device)
    if taxonomy.mismatch_class is not None and taxonomy.reason_task in column:
        mismatch = taxonomy.tasks[taxonomy.reason_task].index(taxonomy.mismatch_class)
        matches = labels[:, column[taxonomy.reason_task]] != mismatch
    loss = labels.new_zeros((), dtype=torch.float)
    for task, logits in image_logits.items():
        target = labels[:, column[task]]
        if task == "industry":
            if not matches.any():
                continue
            logits, target = logits[matches], target[matches]
        loss = loss + F.cross_entropy(logits, target)
    return loss


class EpochLosses(list):
    """The mean loss of every epoch (the list itself), and the loss of the run's first and last batch:
    what a single epoch changed, which its one mean cannot say."""
    first_batch: float | None = None
    last_batch: float | None = None

    def change(self) -> str:
        """The loss's change for a log line, saying which figures it compares."""
        if len(self) > 1:
            return f"{self[0]:.4f} -> {self[-1]:.4f} (epoch means)"
        if self.first_batch is not None and self.last_batch is not None:
            return f"{self.first_batch:.4f} -> {self.last_batch:.4f} (first and last batch of its one epoch)"
        return f"{self[0]:.4f} (its one epoch's mean)" if self else "none (no epoch)"


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min" if seconds < 5400 else \
        f"{seconds / 3600:.1f} h"


def stderr_is_terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


class ProgressLines:
    """Progress as plain lines on stderr when it is not a terminal (where tqdm's bar is off): one at the
    end of every epoch, and one every `every_s` seconds inside a long epoch, each with the loss, the time
    elapsed and an estimate of the time left (from the steps done so far), flushed at once."""

    def __init__(self, description: str, total_steps: int, first_step: int, every_s: float = 60.0,
                 enabled: bool | None = None):
        self.description, self.total_steps, self.first_step, self.every_s = description, total_steps, first_step, every_s
        self.enabled = not stderr_is_terminal() if enabled is None else enabled
        self.started = self.last_line = time.monotonic()

    def timing(self, step: int) -> str:
        elapsed, done = time.monotonic() - self.started, step - self.first_step
        left = elapsed / done * (self.total_steps - step) if done else float("nan")
        return f"{duration(elapsed)} elapsed" + (f", about {duration(left)} left" if done and step < self.total_steps
                                                 else "")

    def line(self, text: str) -> None:
        if self.enabled:
            print(text, file=sys.stderr, flush=True)
            self.last_line = time.monotonic()

    def batch(self, epoch: int, epochs: int, batch: int, batches: int, loss: float, step: int) -> None:
        if self.enabled and time.monotonic() - self.last_line >= self.every_s and batch < batches:
            self.line(f"{self.description} epoch {epoch}/{epochs}: batch {batch}/{batches}, loss {loss:.4f} so "
                      f"far, {self.timing(step)}")

    def epoch(self, epoch: int, epochs: int, loss: float, step: int) -> None:
        self.line(f"{self.description} epoch {epoch}/{epochs}: loss {loss:.4f}, {self.timing(step)}")


def make_optimizer(model: AuditModel, schedule: Schedule, total_steps: int, state: TrainingState,
                   optimizer_state: dict | None = None, world: World | None = None):
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        decays = parameter.ndim >= 2 and "embeddings" not in name
        fresh = schedule.fresh_learning_rate is not None and name.split(".", 1)[0] in schedule.fresh_modules
        groups.setdefault((decays, fresh), []).append(parameter)
    optimizer = torch.optim.AdamW(
        [{"params": parameters, "weight_decay": schedule.weight_decay if decays else 0.0,
          "lr": schedule.fresh_learning_rate if fresh else schedule.learning_rate}
         for (decays, fresh), parameters in sorted(groups.items(), key=lambda item: (not item[0][0], item[0][1]))],
        lr=schedule.learning_rate)  # decaying groups first, as checkpoints written before fresh groups have them
    if optimizer_state is not None:
        (world or World()).load_optimizer_state(model, optimizer, optimizer_state)
    warmup = int(schedule.warmup_fraction * total_steps)
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, total_steps, last_epoch=state.step - 1)
    return optimizer, scheduler


def fit(model: AuditModel, size: int, loss_fn: LossFunction, schedule: Schedule, description: str,
        state: TrainingState | None = None, optimizer_state: dict | None = None,
        on_epoch_end: Callable[[AuditModel, torch.optim.Optimizer, TrainingState, float], None] | None = None,
        device: torch.device | str | None = None, world: World | None = None,
        average: WeightAverage | None = None) -> EpochLosses:
    """Train `model` on `size` samples (batch indices drawn here); returns the mean loss per epoch.

    `device` (default: the CPU) holds the model and the batches; `world` (training/distributed.py), when
    torchrun started several ranks, wraps the model in DDP, deals each rank its share of every global
    batch and averages the epoch's loss over all ranks (DDP; with `world.fsdp` the model is sharded in place
    and stays so: `World.unsharded` gathers it). `on_epoch_end` runs on every rank with the unwrapped model
    (what writes must check `is_main_process`). `average` (training/averaging.py), when given, follows the
    weights after every step; the model itself keeps the last step's."""
    state = state or TrainingState()
    world = world or World()
    placement = Placement.on(device or world.device, schedule.bfloat16)
    placement.place(model)
    if average is not None:
        average.follow(model)
    sampler = world.sampler(size, seed=schedule.seed * 1000)  # the permutation fit always drew on 1 rank
    batch_size = per_rank_batch(schedule.batch_size, world.world_size)
    steps_per_epoch = -(-len(sampler) // batch_size)
    trained = world.wrap(model)  # before the optimizer: FSDP2 replaces the parameters by their shards
    optimizer, scheduler = make_optimizer(model, schedule, steps_per_epoch * schedule.epochs, state,
                                          optimizer_state, world)
    run = EpochRun(trained, loss_fn, optimizer, scheduler, placement, world, average)
    epoch_losses = EpochLosses()
    progress = ProgressLines(description, steps_per_epoch * schedule.epochs, state.step,
                             enabled=None if world.main else False)
    for epoch in range(state.epoch, schedule.epochs):
        model.train()
        sampler.set_epoch(epoch)
        batches = torch.tensor(list(sampler), dtype=torch.long).split(batch_size)
        bar = tqdm(batches, desc=f"{description} epoch {epoch + 1}/{schedule.epochs}", leave=False, mininterval=2,
                   disable=None if world.main else True)  # no bar when not a terminal, nor on other ranks
        total, count = run.epoch(bar, state, epoch_losses, progress, (epoch + 1, schedule.epochs, steps_per_epoch))
        total, count = world.sum([total, count])  # every rank's ads: the same mean on every rank
        state.epoch = epoch + 1
        epoch_losses.append(total / count)
        progress.epoch(state.epoch, schedule.epochs, epoch_losses[-1], state.step)
        if on_epoch_end is not None:
            on_epoch_end(model, optimizer, state, epoch_losses[-1])
    model.eval()
    return epoch_losses


@dataclass
class EpochRun:
    """The steps of one epoch: autocast by device, loss scaling where float16 needs it, clipping, the
    schedule; `trained` is the model or its DDP wrapper (which averages gradients in backward)."""
    trained: torch.nn.Module
    loss_fn: LossFunction
    optimizer: torch.optim.Optimizer
    scheduler: object
    placement: Placement
    world: World
    average: WeightAverage | None = None

    def __post_init__(self):
        self.scaler = self.placement.grad_scaler()

    def step(self, index: torch.Tensor) -> float:
        with self.placement.autocast():
            loss = self.loss_fn(self.trained, index)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.trained.parameters(), 1.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.average is not None:
            self.average.update(self.trained)
        return loss.item()

    def epoch(self, bar, state: TrainingState, epoch_losses: EpochLosses, progress: ProgressLines,
              where: tuple[int, int, int]) -> tuple[float, int]:
        """(sum of the batch losses weighted by their ads, ads) over this rank's batches."""
        total, count = 0.0, 0
        for batch, index in enumerate(bar, 1):
            value = self.step(index)
            state.step += 1
            total, count = total + value * len(index), count + len(index)
            if epoch_losses.first_batch is None:
                epoch_losses.first_batch = value
            epoch_losses.last_batch = value
            bar.set_postfix(loss=f"{total / count:.4f}")
            progress.batch(where[0], where[1], batch, where[2], total / count, state.step)
        return total, count


# --- checkpoints ---------------------------------------------------------------------
OPTIMIZER_TENSORS = "optimizer.safetensors"
AVERAGE_TENSORS = "average.safetensors"  # the weight average's state, when the run keeps one
TRAINER_STATE = "trainer_state.json"


def save_checkpoint(folder: Path, model: AuditModel, optimizer_state: dict, state: TrainingState,
                    extra: dict, average: dict[str, torch.Tensor] | None = None) -> None:
    """Model, optimizer state (`optimizer.state_dict()`'s format), the weight average's tensors when there is
    one, and progress in one folder, replaced atomically."""
    with atomic_folder(folder) as staging:
        model.save_pretrained(staging / "model")
        tensors = {f"{param}.{key}": value.contiguous() for param, slots in optimizer_state["state"].items()
                   for key, value in slots.items()}
        save_file(tensors, str(staging / OPTIMIZER_TENSORS))
        if average is not None:
            save_file(average, str(staging / AVERAGE_TENSORS))
        (staging / TRAINER_STATE).write_text(json.dumps({
            "state": asdict(state), "param_groups": optimizer_state["param_groups"], **extra}, indent=2))


def load_checkpoint(folder: Path) -> tuple[AuditModel, dict, TrainingState, dict]:
    """(model, optimizer state, progress, the rest of trainer_state.json plus "average": the weight average's
    tensors, or None)."""
    folder = Path(folder)
    meta = json.loads((folder / TRAINER_STATE).read_text())
    state: dict[int, dict] = {}
    for name, tensor in load_file(str(folder / OPTIMIZER_TENSORS)).items():
        param, key = name.split(".", 1)
        state.setdefault(int(param), {})[key] = tensor
    optimizer_state = {"state": state, "param_groups": meta.pop("param_groups")}
    training_state = TrainingState(**meta.pop("state"))
    meta["average"] = load_file(str(folder / AVERAGE_TENSORS)) if (folder / AVERAGE_TENSORS).exists() else None
    return AuditModel.from_pretrained(folder / "model"), optimizer_state, training_state, meta
