"""The teacher's outputs on disk: computed once per teacher, data set and draw, reused by every later `compress`.

Running a large teacher over the distillation ads, their augmented views and the test split is the part of a
compression that does not depend on the recipe's stages; a second `compress` of the same teacher and data (another
recipe, a rerun, a resumed run) reads it back instead. The outputs live beside the teacher folder, in
TEACHER.outputs/ (the teacher folder itself stays a plain model folder), one safetensors file per part and rank:

    ads-<settings>.rank0-of-1.safetensors     logits per task and pooled state on the distillation ads
    views-<settings>.rank0-of-1.safetensors   the same on their augmented views, and which rows keep labels
    test-<settings>.rank0-of-1.safetensors    the teacher's predicted classes on the test split; its report
                                              entry (size, accuracy, ...) in the file's metadata

`<settings>` is a digest of what the rows depend on besides the teacher and the data (seed, number of ads, views),
so several recipes' draws sit side by side. Every file carries its whole key in its metadata (the teacher's
checksum, the data set's, the settings): a teacher retrained in place or a data set made again gives another key,
and the file is computed again and replaced, never read for the wrong teacher. Files are written beside their place
and renamed into it (core/files.py), so a full disk or a kill leaves no half-written file under a done name. Read
back with safetensors' `safe_open`, the tensors are memory-mapped, not copied.

Under torchrun the rows of the distillation ads and of their views are split across ranks: rank r of w runs the
teacher on its contiguous share (`shard_rows`) and writes `...rank<r>-of-<w>.safetensors`; after a barrier every rank
reads all the shards back (memory-mapped). A set of shards is read whatever world size wrote it, so a run on 2 ranks
reuses what a run on 1 rank computed and the other way round. The test split's part holds latency and accuracy
figures, so rank 0 alone computes it (one shard) while the others wait. Several machines must see one TEACHER.outputs/
(a shared file system, as for the teacher and the data themselves).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from adaudit.core.files import atomic_write_bytes
from adaudit.models.modeling import WEIGHTS_FILE
from adaudit.training.distributed import World

MODEL_FILES = ("config.json", WEIGHTS_FILE, "vocab.txt", "tokenizer.json")  # what a model folder's outputs depend on


class CompressionStorageError(RuntimeError):
    """Compression could not write its teacher outputs or checkpoints (a full disk, no permission): one line."""


def model_checksum(folder: Path) -> str:
    """sha256 of the files that define a model (config, weights, tokenizer): the teacher half of every key."""
    digest = hashlib.sha256()
    for name in MODEL_FILES:
        path = Path(folder) / name
        if path.is_file():
            digest.update(name.encode() + b"\0")
            with path.open("rb") as stream:
                for block in iter(lambda: stream.read(1 << 22), b""):
                    digest.update(block)
    return digest.hexdigest()


def outputs_folder(teacher_dir: Path) -> Path:
    teacher_dir = Path(teacher_dir).resolve()
    return teacher_dir.with_name(f"{teacher_dir.name}.outputs")


def shard_rows(rows: int, rank: int, world_size: int) -> slice:
    """The contiguous share of `rows` that rank `rank` of `world_size` computes and writes."""
    return slice(rows * rank // world_size, rows * (rank + 1) // world_size)


def write_safely(path: Path, data: bytes, what: str) -> None:
    """`data` to `path` atomically; an OSError (a full disk) becomes one readable line, and nothing is left."""
    try:
        atomic_write_bytes(path, data)
    except OSError as error:
        raise CompressionStorageError(f"cannot write {what} to {path}: {error.strerror or error}; nothing half-written "
                                      "was kept (free some space and run the same command again)") from None


class TeacherOutputs:
    """The teacher's outputs of one teacher and data set, each part loaded from disk or computed and written."""

    def __init__(self, folder: Path, teacher_checksum: str, data_checksum: dict, log=print, world: World | None = None):
        self.folder, self.log, self.world = Path(folder), log, world or World()
        self.sources = {"teacher": teacher_checksum, "data": data_checksum}
        self.seconds = 0.0  # spent computing (the teacher's forwards) or reading outputs
        self.parts: dict[str, str] = {}  # part -> "reused" or "computed"

    def key(self, part: str, settings: dict) -> dict:
        return {"part": part, **self.sources, "settings": settings}

    def shard(self, part: str, settings: dict, rank: int, world_size: int) -> Path:
        return self.folder / f"{part}-{self.digest(settings)}.rank{rank}-of-{world_size}.safetensors"

    @staticmethod
    def digest(settings: dict) -> str:
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]

    def get(self, part: str, settings: dict, compute: Callable[[slice], tuple[dict[str, torch.Tensor], dict]],
            rows: int | None = None) -> tuple[dict[str, torch.Tensor], dict]:
        """(tensors, extra metadata) of the whole `part` on every rank: read when an earlier run wrote all of it
        under this key, else computed and written. With `rows` (the part's row count) every rank computes its share,
        `compute(share)`; without, rank 0 computes all of it, `compute(slice(None))`, and the others wait."""
        started = time.perf_counter()
        found = self.read(part, settings)
        if self.world.everywhere(found is not None):  # one answer on every rank: all of them compute, or none
            self.parts[part] = "reused"
            self.log(f"  teacher outputs: reusing {part} from {self.folder}")
        else:
            found = self.compute(part, settings, compute, rows)
            self.parts[part] = "computed"
        self.seconds += time.perf_counter() - started
        return found

    def compute(self, part: str, settings: dict, compute, rows: int | None) -> tuple[dict[str, torch.Tensor], dict]:
        world = self.world
        if rows is None:  # one shard, rank 0's
            rank, world_size, share = 0, 1, slice(None)
        else:
            rank, world_size = world.rank, world.world_size
            share = shard_rows(rows, rank, world_size)
        if rank == world.rank:  # this rank writes shard `rank`
            tensors, extra = compute(share)
            extra = json.loads(json.dumps(extra))  # as a later run reads it back
            self.write(self.shard(part, settings, rank, world_size), part, settings, tensors, extra)
            if not world.distributed:
                return tensors, extra
        world.barrier()  # every shard written: each rank reads the whole part
        found = self.read(part, settings, world_size)
        if found is None:
            raise CompressionStorageError(f"the teacher's outputs ({part}) just written to {self.folder} cannot be "
                                          "read back: does every machine see that folder?")
        return found

    def read(self, part: str, settings: dict, world_size: int | None = None
             ) -> tuple[dict[str, torch.Tensor], dict] | None:
        """The part from the first whole set of shards with this key (of `world_size` ranks, or any)."""
        sizes = [world_size] if world_size else sorted(
            {int(path.name.rsplit("-of-", 1)[1].split(".")[0])
             for path in self.folder.glob(f"{part}-{self.digest(settings)}.rank0-of-*.safetensors")})
        for size in sizes:
            found = self.read_shards(part, settings, size)
            if found is not None:
                return found
        return None

    def read_shards(self, part: str, settings: dict, world_size: int) -> tuple[dict[str, torch.Tensor], dict] | None:
        key = json.dumps(self.key(part, settings), sort_keys=True)
        shards = []
        for rank in range(world_size):
            path = self.shard(part, settings, rank, world_size)
            if not path.is_file():
                return None
            try:
                with safe_open(str(path), framework="pt") as opened:  # memory-mapped, not copied
                    metadata = opened.metadata() or {}
                    tensors = {name: opened.get_tensor(name) for name in opened.keys()}
            except (SafetensorError, OSError) as error:
                self.log(f"  teacher outputs: {path.name} is unreadable ({error}): computing them again")
                return None
            if metadata.get("key") != key:
                self.log(f"  teacher outputs: {path.name} was computed from {self.differs(metadata.get('key'))}: "
                         "computing them again")
                return None
            shards.append((tensors, json.loads(metadata.get("extra", "{}"))))
        if len(shards) == 1:
            return shards[0]
        return {name: torch.cat([tensors[name] for tensors, _ in shards]) for name in shards[0][0]}, shards[0][1]

    def differs(self, found: str | None) -> str:
        """What another key names: another teacher, another data set, or other settings."""
        try:
            other = json.loads(found or "")
        except json.JSONDecodeError:
            return "an unknown source (no key)"
        for name, what in (("teacher", "another teacher"), ("data", "another data set")):
            if other.get(name) != self.sources[name]:
                return what
        return "other settings"

    def write(self, path: Path, part: str, settings: dict, tensors: dict[str, torch.Tensor], extra: dict) -> None:
        mine = {name: tensor.contiguous().cpu() for name, tensor in tensors.items()}
        metadata = {"key": json.dumps(self.key(part, settings), sort_keys=True), "extra": json.dumps(extra)}
        write_safely(path, save(mine, metadata=metadata), "the teacher's outputs")

    def record(self) -> dict:
        """report.json's "teacher_outputs": where they are, which parts were reused, the seconds they took."""
        return {"folder": str(self.folder), "parts": dict(self.parts), "seconds": self.seconds,
                "reused": bool(self.parts) and all(how == "reused" for how in self.parts.values())}
