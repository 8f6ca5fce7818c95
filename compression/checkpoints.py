"""Resumable compression: where a `compress` is, written after every stage and every distillation epoch.

The checkpoint lives in the output's working folder, OUT.partial/ beside OUT, and is removed once the student is
written. It is one folder, replaced atomically each time (core/files.py), holding:

    progress.json        the key (below), the stage in progress and its own state (stages.py), the report entries
                         of the stages done, the distillation step count, the searched policy (`--recipe auto`)
    model/               the model as it is (a model folder; absent while it is still the teacher)
    optimizer.safetensors, trainer_state.json
                         inside a distillation: the optimizer and the epochs done (training/loop.py's checkpoint)
    tensors.safetensors  the random number generators' states (dropout draws continue exactly), the final stage's
                         best epoch so far, the distillation ads' token ids once the vocabulary is pruned

The key is what the command computes from: the teacher's checksum, the data set's, the resolved recipe and the
target speedup. A checkpoint with another key is not resumed: the log says so and the run starts afresh. With the
generators' states restored, a resumed run on the CPU gives the student an uninterrupted run gives, bit for bit
(tests/test_compress_resume.py); on a GPU, kernels that are not deterministic may differ in the last bits.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from adaudit.core.files import atomic_folder
from adaudit.models.modeling import AuditModel
from adaudit.training.loop import TRAINER_STATE, TrainingState, load_checkpoint, save_checkpoint

from .teacher_outputs import CompressionStorageError, write_safely

CHECKPOINT = "checkpoint"
PROGRESS = "progress.json"
TENSORS = "tensors.safetensors"
RNG_CPU = "rng.cpu"
RNG_CUDA = "rng.cuda."


def working_folder(out: Path) -> Path:
    out = Path(out)
    return out.with_name(f"{out.name}.partial")


def random_states() -> dict[str, torch.Tensor]:
    states = {RNG_CPU: torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states.update({f"{RNG_CUDA}{i}": state for i, state in enumerate(torch.cuda.get_rng_state_all())})
    return states


def restore_random_states(tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors[RNG_CPU])
    cuda = [tensors[name] for name in sorted(tensors) if name.startswith(RNG_CUDA)]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


@dataclass
class Saved:
    """A checkpoint read back: the progress, the model (None: still the teacher), the optimizer and epochs of an
    interrupted distillation (None between stages), and the named tensors."""
    progress: dict
    model: AuditModel | None
    optimizer_state: dict | None = None
    training_state: TrainingState | None = None
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)


class Checkpoints:
    """Writes and reads the one checkpoint of a `compress` with this key."""

    def __init__(self, out: Path, key: dict, log=print):
        self.folder = working_folder(out)
        self.key, self.log = json.loads(json.dumps(key)), log  # as JSON gives it back

    @property
    def checkpoint(self) -> Path:
        return self.folder / CHECKPOINT

    def load(self) -> Saved | None:
        """The checkpoint to resume from, or None (none, unreadable, or another key: then it is removed)."""
        progress_file = self.checkpoint / PROGRESS
        if not progress_file.is_file():
            return None
        try:
            progress = json.loads(progress_file.read_text())
        except (OSError, json.JSONDecodeError) as error:
            self.log(f"checkpoint {self.checkpoint} is unreadable ({error}): starting afresh")
            return self.discard()
        if progress.get("key") != self.key:
            differs = [name for name in self.key if progress.get("key", {}).get(name) != self.key[name]]
            self.log(f"checkpoint {self.checkpoint} is of another {', '.join(differs) or 'command'}: not resumed, "
                     "starting afresh")
            return self.discard()
        tensors = load_file(str(self.checkpoint / TENSORS))
        if (self.checkpoint / TRAINER_STATE).is_file():
            model, optimizer_state, training_state, _ = load_checkpoint(self.checkpoint)
            return Saved(progress, model, optimizer_state, training_state, tensors)
        model = AuditModel.from_pretrained(self.checkpoint / "model") if (self.checkpoint / "model").is_dir() else None
        return Saved(progress, model, tensors=tensors)

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        return None

    def save(self, progress: dict, model: AuditModel | None, tensors: dict[str, torch.Tensor],
             optimizer: torch.optim.Optimizer | None = None, state: TrainingState | None = None) -> None:
        """Replace the checkpoint with this one; the random states are taken now. A full disk: one readable
        line, and the previous checkpoint stays what it was."""
        tensors = {**tensors, **random_states()}
        try:
            with atomic_folder(self.checkpoint) as staging:
                if optimizer is not None:
                    save_checkpoint(staging, model, optimizer.state_dict(), state, {})
                elif model is not None:
                    model.save_pretrained(staging / "model")
                write_safely(staging / TENSORS, save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}),
                             "a checkpoint")
                (staging / PROGRESS).write_text(json.dumps({"key": self.key, **progress}, indent=1) + "\n")
        except OSError as error:
            raise CompressionStorageError(f"cannot write a checkpoint to {self.checkpoint}: "
                                          f"{error.strerror or error}; the previous one is kept") from None
