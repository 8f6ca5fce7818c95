"""Knowledge distillation from cached teacher outputs.

The teacher runs once over the distillation samples (`cache_teacher`: one forward per batch gives both its
logits and its pooled state); every step of every stage then reads them from memory (or from the memory-mapped
files of teacher_outputs.py). Loss per batch, with weights from the recipe:

    kl_weight * sum_tasks T^2 * KL(softmax(teacher / T) || softmax(student / T))
  + label_weight * (sum_tasks cross_entropy(student, label) + image-grounding loss (training.py))
  + pooled_weight * MSE(student pooled state, teacher pooled state)   (while their widths match)

The label terms count only rows with labels: an augmented view that pairs one ad's copy with
another's picture (augmentation.py) has the teacher's soft labels alone.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from adaudit.data.encoding import EncodedSplit
from adaudit.models.modeling import AuditModel
from adaudit.training.distributed import World
from adaudit.training.loop import Schedule, TrainingState, fit, image_grounding_loss

from .recipe import DistillationSettings


@dataclass
class TeacherCache:
    logits: dict[str, torch.Tensor]  # task -> (n, classes), aligned with the split
    pooled: torch.Tensor  # (n, teacher text hidden)
    labelled: torch.Tensor | None = None  # bool (n,): rows whose labels hold; None: all of them

    def subset(self, index: torch.Tensor) -> "TeacherCache":
        return TeacherCache({task: logits[index] for task, logits in self.logits.items()}, self.pooled[index],
                            None if self.labelled is None else self.labelled[index])

    def rows_labelled(self) -> torch.Tensor:
        return torch.ones(len(self.pooled), dtype=torch.bool) if self.labelled is None else self.labelled

    def concat(self, other: "TeacherCache") -> "TeacherCache":
        return TeacherCache({task: torch.cat([logits, other.logits[task]]) for task, logits in self.logits.items()},
                            torch.cat([self.pooled, other.pooled]),
                            torch.cat([self.rows_labelled(), other.rows_labelled()]))

    def tensors(self) -> dict[str, torch.Tensor]:
        """The cache as named tensors (teacher_outputs.py writes them as one safetensors file)."""
        named = {f"logits.{task}": logits for task, logits in self.logits.items()}
        named["pooled"] = self.pooled
        if self.labelled is not None:
            named["labelled"] = self.labelled
        return named

    @classmethod
    def from_tensors(cls, named: dict[str, torch.Tensor]) -> "TeacherCache":
        logits = {name.split(".", 1)[1]: tensor for name, tensor in named.items() if name.startswith("logits.")}
        return cls(logits, named["pooled"], named.get("labelled"))


@torch.inference_mode()
def cache_teacher(teacher: AuditModel, split: EncodedSplit, batch_size: int = 64,
                  labelled: torch.Tensor | None = None) -> TeacherCache:
    """The teacher's logits and pooled state on every row of `split`, from one forward per batch, on the CPU."""
    teacher.eval()
    logits: dict[str, list[torch.Tensor]] = {task: [] for task in split.tasks}
    pooled = []
    for index in split.batches(batch_size):
        output = teacher(**split.inputs(index))
        for task in split.tasks:
            logits[task].append(output.logits[task].float().cpu())
        pooled.append(output.pooled.float().cpu())
    return TeacherCache({task: torch.cat(parts) for task, parts in logits.items()}, torch.cat(pooled), labelled)


def distillation_loss(model: AuditModel, split: EncodedSplit, cache: TeacherCache, index: torch.Tensor,
                      settings: DistillationSettings) -> torch.Tensor:
    output = model(**split.inputs(index))
    device = output.pooled.device  # the model's (training/device.py); the split and the cache stay on the CPU
    labels = split.labels[index].to(device)
    labelled = slice(None) if cache.labelled is None else cache.labelled[index].to(device)
    label_terms = bool(settings.label_weight) and bool(labels[labelled].numel())  # a batch of views alone has none
    temperature = settings.temperature
    loss = output.pooled.new_zeros(())
    for i, task in enumerate(split.tasks):
        student, teacher = output.logits[task], cache.logits[task][index].to(device)
        if settings.kl_weight:
            kl = F.kl_div(F.log_softmax(student / temperature, -1), F.log_softmax(teacher / temperature, -1),
                          log_target=True, reduction="batchmean")
            loss = loss + settings.kl_weight * temperature**2 * kl
        if label_terms:
            loss = loss + settings.label_weight * F.cross_entropy(student[labelled], labels[labelled, i])
    if label_terms:
        image_logits = {task: logits[labelled] for task, logits in output.image_logits.items()}
        loss = loss + settings.label_weight * image_grounding_loss(image_logits, split, labels[labelled])
    if settings.pooled_weight and output.pooled.shape[-1] == cache.pooled.shape[-1]:
        loss = loss + settings.pooled_weight * F.mse_loss(output.pooled, cache.pooled[index].to(device))
    return loss


def distil(model: AuditModel, split: EncodedSplit, cache: TeacherCache, settings: DistillationSettings,
           epochs: int, description: str, seed: int = 0, on_epoch_end=None,
           device: torch.device | None = None, state: TrainingState | None = None,
           optimizer_state: dict | None = None, world: World | None = None) -> list[float]:
    """Train `model` toward the teacher for `epochs` epochs on `device` (default: the CPU); returns the mean
    loss per epoch. `state` and `optimizer_state` (a checkpoint's, stages.py) continue an interrupted run;
    `world` (under torchrun) makes it DDP, each rank distilling on its share of every global batch, or with
    `world.fsdp` FSDP2 (`distil_sharded`)."""
    if epochs <= 0:
        return []
    model.checkpoint_gradients(settings.gradient_checkpointing)  # again after every cut: a cut builds a new model
    schedule = Schedule(epochs=epochs, batch_size=settings.batch_size, learning_rate=settings.learning_rate,
                        warmup_fraction=0.0, seed=seed)
    loss = lambda m, index: distillation_loss(m, split, cache, index, settings)  # noqa: E731
    if world is not None and world.distributed and world.fsdp:
        return distil_sharded(model, len(split), loss, schedule, description, state, optimizer_state, on_epoch_end,
                              device, world)
    return fit(model, len(split), loss, schedule, description, state=state, optimizer_state=optimizer_state,
               on_epoch_end=on_epoch_end, device=device, world=world)


class GatheredOptimizer:
    """What an epoch's callbacks see of a sharded replica's optimizer: its full state, gathered on rank 0
    (`World.gather_into`), as `optimizer.state_dict()` gives it in one process (what a checkpoint writes)."""

    def __init__(self, state: dict | None):
        self.state = state

    def state_dict(self) -> dict:
        if self.state is None:
            raise RuntimeError("the gathered optimizer state is rank 0's alone")
        return self.state


def distil_sharded(model: AuditModel, size: int, loss, schedule: Schedule, description: str,
                   state: TrainingState | None, optimizer_state: dict | None, on_epoch_end,
                   device: torch.device | None, world: World) -> list[float]:
    """`distil` under FSDP2 (`compress --fsdp`): a replica of `model` is sharded and distils, so each rank holds
    1/world_size of the gradients and of the optimizer state, the bulk of training's memory (AdamW keeps two
    slots per weight); after every epoch its full weights are gathered back into `model` on every rank.

    Why a replica rather than `model` itself sharded, as `teacher train --fsdp` does: every cut, score and
    best-epoch copy of the stages (stages.py) reads the whole weights and builds a smaller model from them, and
    the epoch's callbacks (the held-out loss, the checkpoint) run on rank 0 alone, where a sharded forward would
    wait for the other ranks. So the whole weights stay on every rank, the rest is sharded. The soft masks of a
    widths stage (importance.py) are hooks holding their tensors; the replica's hooks hold the same ones."""
    replica = copy.deepcopy(model)

    def epoch_ended(sharded: AuditModel, optimizer, training_state, epoch_loss: float) -> None:
        gathered = world.gather_into(model, sharded, optimizer)
        if on_epoch_end is not None:
            on_epoch_end(model, GatheredOptimizer(gathered), training_state, epoch_loss)

    losses = fit(replica, size, loss, schedule, description, state=state, optimizer_state=optimizer_state,
                 on_epoch_end=epoch_ended, device=device, world=world)
    del replica
    model.eval()
    return losses


class BestEpoch:
    """Early stopping without stopping: after each epoch, the held-out distillation loss; the best
    epoch's weights are kept and put back at the end (`restore`)."""

    def __init__(self, split: EncodedSplit, cache: TeacherCache, settings: DistillationSettings,
                 world: World | None = None):
        self.split, self.cache, self.settings, self.world = split, cache, settings, world or World()
        self.losses: list[float] = []
        self.best_state: dict[str, torch.Tensor] | None = None

    def __call__(self, model: AuditModel, optimizer, state, training_loss: float) -> None:
        # rank 0's figure on every rank: all of them keep the same epoch
        loss = self.world.agreed(lambda: mean_distillation_loss(model, self.split, self.cache, self.settings))
        if not self.losses or loss < min(self.losses):
            self.best_state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
        self.losses.append(loss)

    @property
    def best_epoch(self) -> int:
        return 1 + min(range(len(self.losses)), key=self.losses.__getitem__)

    def restore(self, model: AuditModel) -> AuditModel:
        if self.best_state is not None:
            model.load_state_dict(self.best_state)
        return model.eval()


@torch.inference_mode()
def mean_distillation_loss(model: AuditModel, split: EncodedSplit, cache: TeacherCache,
                           settings: DistillationSettings, batch_size: int = 64) -> float:
    model.eval()
    total = sum(distillation_loss(model, split, cache, index, settings).item() * len(index)
                for index in split.batches(batch_size))
    return total / len(split)
