"""A split decoded once and kept on disk: memory-mapped shards read a batch at a time.

`adaudit data pack --data DIR` (and the first command that reads a split) decodes every picture of the
split at the model's image size and tokenises every copy, and writes the results as NumPy `.npy` files in
`DIR/.packs/<split>-<key>/`:

    image_bytes.npy     uint8 (ads, 3, size, size)   the decoded, resized pictures
    input_ids.npy       int64 (ads, max_text_length)
    attention_mask.npy  int64 (ads, max_text_length)
    labels.npy          int64 (ads, tasks)           class indices in the tasks' order
    ids.json            the ads' ids, in the split file's order
    manifest.json       what made the pack (the key's description) and its shapes
    complete            written last: a folder without it is never read

Why `.npy` files and not safetensors or webdataset: training draws random batches, so a pack must be
readable row by row in any order; a `.npy` file is a fixed header and one flat array, so a row is an
offset, a memory map of it is a plain ndarray (`torch.from_numpy` shares it, no copy), and NumPy alone
reads it (`np.load(path, mmap_mode="r")`) to look inside. safetensors maps the same way but adds nothing
for four arrays; webdataset's tar shards are read in order, which suits streaming, not random batches.

The key is a sha256 of everything that decides the numbers: the split file's own sha256, every picture's
path, size and modification time, the data set's labels.yaml, the image size and fit, the padded tokenizer
(its full serialisation: the vocabulary, the normaliser, the text length, the pad token), the tasks and
their label names, the Pillow version (it decodes the JPEGs) and the pack format. A pack made by other preprocessing has another key, so
it is never read in its place; a folder whose manifest does not describe the key it is named after, whose
`complete` marker is missing or whose arrays have the wrong size is rebuilt.

Written atomically: into a staging folder beside the pack (core/files.py), every file flushed to disk
(fsync) and the `complete` marker written last before the rename. A full disk ends with one readable
error (`PackError`, a `DatasetError`) and the staging folder removed: no half-written pack is ever taken
for done. A lock file serialises two processes packing the same split (the ranks of a torchrun).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import mmap
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL
import torch
from torch.utils.data import DataLoader, Dataset

from adaudit.core.files import atomic_folder
from adaudit.models.labels import LABELS_FILE
from adaudit.models.preprocessing import AuditProcessor, padded_encoder

from .dataset import SPLITS, AdRecord, DatasetError, load_image, read_split

PACK_FORMAT = 1  # bump when the way a pack is decoded or laid out changes: every older pack is rebuilt
PACKS_FOLDER = ".packs"
COMPLETE_MARKER = "complete"
MANIFEST_FILE = "manifest.json"
IDS_FILE = "ids.json"
ARRAYS = ("image_bytes", "input_ids", "attention_mask", "labels")
CHUNK_ADS = 64  # ads decoded per worker task: at most PARALLEL_TOKENISING_FROM, so no tokenizer thread pool
NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class PackError(DatasetError):
    """A pack that cannot be written (a full disk, a read-only data folder); one readable line."""


@dataclass(frozen=True)
class PackKey:
    """Which pack a split needs: `name` is its folder, `description` what the name is a hash of."""
    name: str
    description: dict


def pack_key(data_dir: Path, split: str, processor: AuditProcessor, tasks: dict[str, list[str]]) -> PackKey:
    """The key of `split` as `processor` and `tasks` encode it (module docstring: what goes in)."""
    path = Path(data_dir) / f"{split}.jsonl"
    if not path.is_file():
        read_split(data_dir, split)  # raises the readable DatasetError of a missing folder or file
    encoder = padded_encoder(processor.tokenizer, processor.max_text_length).to_str()
    description = {"format": PACK_FORMAT, "split": split, "split_sha256": file_sha256(path),
                   "pictures_sha256": pictures_fingerprint(Path(data_dir), path),
                   "taxonomy_sha256": file_sha256(Path(data_dir) / LABELS_FILE),
                   "image_size": processor.image_size, "image_fit": processor.image_fit,
                   "max_text_length": processor.max_text_length,
                   "tokenizer_sha256": hashlib.sha256(encoder.encode("utf-8")).hexdigest(),
                   "tasks": tasks, "pillow": PIL.__version__}
    digest = hashlib.sha256(json.dumps(description, sort_keys=True).encode("utf-8")).hexdigest()
    return PackKey(f"{split}-{digest[:20]}", description)


def file_sha256(path: Path) -> str | None:
    """sha256 of the file at `path`, read in blocks; None when there is no such file."""
    if not path.is_file():
        return None
    with path.open("rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def pictures_fingerprint(data_dir: Path, split_file: Path) -> str:
    """sha256 over every picture's path, size and modification time, read line by line (a split file's
    lines are never all held): a picture replaced under the same name changes the key. Stat, not the
    pictures' bytes, so that checking a pack costs a fraction of building one."""
    digest = hashlib.sha256()
    try:
        with split_file.open(encoding="utf-8") as lines:
            for line in lines:
                if line.strip():
                    image = json.loads(line)["image"]
                    status = (data_dir / image).stat()
                    digest.update(f"{image}\0{status.st_size}\0{status.st_mtime_ns}\n".encode("utf-8"))
    except (ValueError, KeyError, TypeError, OSError):
        read_split(data_dir, split_file.stem)  # the readable DatasetError naming the line
        raise
    return digest.hexdigest()


def packs_folder(data_dir: Path) -> Path:
    return Path(data_dir) / PACKS_FOLDER


# --- reading -------------------------------------------------------------------------------------------

class MappedPages:
    """The memory maps of one pack, and a way to let go of the pages a batch touched.

    Linux counts every mapped page a process has read in its resident set (RSS), so a map read from end to
    end (one epoch) would end up as resident as the split held in memory. `release` drops the pages from
    this process's page tables (madvise MADV_DONTNEED); the kernel keeps them in its page cache, so the next
    read of them is a page-table fill, not disk I/O. The maps are private copy-on-write maps: a tensor
    written in place (nothing does) changes this process's copy until the next release, never the pack."""

    def __init__(self):
        self.maps: list[mmap.mmap] = []

    def release(self) -> None:
        for mapping in self.maps:
            mapping.madvise(mmap.MADV_DONTNEED)

    def array(self, path: Path) -> np.ndarray:
        """The `.npy` file at `path` as an ndarray over a memory map of it; ValueError if its size is wrong."""
        with path.open("rb") as stream:
            version = np.lib.format.read_magic(stream)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, fortran_order, dtype = read_header(stream)
            offset = stream.tell()
            size = offset + int(np.prod(shape)) * dtype.itemsize
            if fortran_order or os.fstat(stream.fileno()).st_size != size or size == offset:
                raise ValueError(f"{path} does not hold the array its header describes")
            mapping = mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_COPY)
        self.maps.append(mapping)
        return np.ndarray(shape, dtype, buffer=mapping, offset=offset)


def open_pack(folder: Path, key: PackKey) -> tuple[list[str], dict[str, torch.Tensor], MappedPages] | None:
    """(ids, tensors over the memory-mapped arrays, their pages) of a complete pack made under `key`;
    None for a folder that is missing, incomplete, made under another key or damaged."""
    try:
        if not (folder / COMPLETE_MARKER).is_file():
            return None
        manifest = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
        if manifest.get("description") != key.description:
            return None
        ids = json.loads((folder / IDS_FILE).read_text(encoding="utf-8"))
        pages = MappedPages()
        tensors = {name: torch.from_numpy(pages.array(folder / f"{name}.npy")) for name in ARRAYS}
    except (OSError, ValueError, AttributeError):  # missing, unreadable, not the JSON or arrays it should be
        return None
    if any(len(tensor) != len(ids) for tensor in tensors.values()) or len(ids) != manifest.get("ads"):
        return None
    return ids, tensors, pages


# --- writing -------------------------------------------------------------------------------------------

class ChunkDecoder(Dataset):
    """Chunk i of a split's records -> its pictures (uint8) and token ids: what a DataLoader's worker
    processes decode in parallel (decoding JPEGs is most of the time a pack takes)."""

    def __init__(self, records: list[AdRecord], processor: AuditProcessor):
        self.records, self.processor = records, processor

    def __len__(self) -> int:
        return -(-len(self.records) // CHUNK_ADS)

    def __getitem__(self, chunk: int) -> dict[str, np.ndarray]:
        records = self.records[chunk * CHUNK_ADS:(chunk + 1) * CHUNK_ADS]
        images = [load_image(record.image_path, self.processor.image_size) for record in records]
        input_ids, attention_mask = self.processor.text_arrays([record.text for record in records])
        return {"image_bytes": self.processor.image_array(images), "input_ids": input_ids,
                "attention_mask": attention_mask}


def decoded_chunks(records: list[AdRecord], processor: AuditProcessor):
    """The chunks in order, decoded by worker processes (one per core, at most 4) when there are several."""
    decoder = ChunkDecoder(records, processor)
    workers = 0 if len(decoder) < 2 else min(4, os.cpu_count() or 1)
    yield from DataLoader(decoder, batch_size=None, num_workers=workers, collate_fn=as_decoded)


def as_decoded(chunk: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The DataLoader's per-chunk step: keep the NumPy arrays (its default would turn them into tensors)."""
    return chunk


def label_array(records: list[AdRecord], tasks: dict[str, list[str]]) -> np.ndarray:
    return np.array([[names.index(record.labels[task]) for task, names in tasks.items()] for record in records],
                    dtype=np.int64).reshape(len(records), len(tasks))


def write_pack(data_dir: Path, split: str, processor: AuditProcessor, tasks: dict[str, list[str]],
               key: PackKey, log=None) -> Path:
    """Decode `split` into the pack folder named by `key`, atomically; PackError when the disk cannot take it."""
    records = read_split(Path(data_dir), split)  # every record checked before anything is written
    folder = packs_folder(data_dir) / key.name
    length, size = processor.max_text_length, processor.image_size
    shapes = {"image_bytes": ((len(records), 3, size, size), np.uint8),
              "input_ids": ((len(records), length), np.int64), "attention_mask": ((len(records), length), np.int64),
              "labels": ((len(records), len(tasks)), np.int64)}
    needed = sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for shape, dtype in shapes.values())
    if log:
        log(f"packing {len(records)} {split} ads ({needed / 2**20:.0f} MiB) into {folder}")
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(folder.parent).free
        if free < needed:  # refused before the decoding, not at its end
            raise PackError(f"cannot pack the {split} split into {folder.parent}: no room on the disk (the pack "
                            f"needs {needed / 2**20:.1f} MiB, {free / 2**20:.1f} MiB are free)")
        with atomic_folder(folder) as staging:
            write_arrays(staging, shapes, records, processor, tasks)
            for name, text in ((IDS_FILE, json.dumps([record.id for record in records])),
                               (MANIFEST_FILE, json.dumps({"description": key.description, "ads": len(records),
                                                           "shapes": {n: list(s) for n, (s, _) in shapes.items()}},
                                                          indent=2)),
                               (COMPLETE_MARKER, "")):  # the marker last
                write_synced(staging / name, text.encode("utf-8"))
    except OSError as error:
        reason = "no room on the disk" if error.errno in NO_ROOM else "cannot write there"
        raise PackError(f"cannot pack the {split} split into {folder.parent}: {reason} ({error.strerror or error}); "
                        f"the pack needs {needed / 2**20:.0f} MiB, nothing half-written was kept") from None
    return folder


def write_arrays(staging: Path, shapes: dict, records: list[AdRecord], processor: AuditProcessor,
                 tasks: dict[str, list[str]]) -> None:
    """The four `.npy` files, streamed chunk by chunk (a split is never held decoded), each fsynced."""
    with contextlib.ExitStack() as files:
        streams = {}
        for name, (shape, dtype) in shapes.items():
            streams[name] = files.enter_context((staging / f"{name}.npy").open("wb"))
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
            np.lib.format.write_array_header_2_0(streams[name], header)
        streams["labels"].write(label_array(records, tasks).tobytes())
        for chunk in decoded_chunks(records, processor):
            for name, array in chunk.items():
                streams[name].write(np.ascontiguousarray(array).tobytes())
        for stream in streams.values():
            stream.flush()
            os.fsync(stream.fileno())


def write_synced(path: Path, data: bytes) -> None:
    with path.open("wb") as stream:
        stream.write(data)
        stream.flush()
        os.fsync(stream.fileno())


@contextlib.contextmanager
def pack_lock(data_dir: Path, key: PackKey):
    """Held while one process builds a pack, so a second one waits and then reads it instead."""
    lock = packs_folder(data_dir) / f".{key.name}.lock"
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        handle = lock.open("a")
    except OSError as error:
        raise PackError(f"cannot pack into {lock.parent}: {error.strerror or error}") from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def pack_split(data_dir: Path, split: str, processor: AuditProcessor, tasks: dict[str, list[str]],
               log=None) -> tuple[Path, PackKey, bool]:
    """(folder, key, built) of `split`'s pack for this preprocessing, built first when there is none."""
    key = pack_key(data_dir, split, processor, tasks)
    folder = packs_folder(data_dir) / key.name
    if open_pack(folder, key) is not None:
        return folder, key, False
    with pack_lock(data_dir, key):
        if open_pack(folder, key) is not None:  # another process built it while this one waited
            return folder, key, False
        write_pack(data_dir, split, processor, tasks, key, log)
    return folder, key, True


def packed_arrays(data_dir: Path, split: str, processor: AuditProcessor, tasks: dict[str, list[str]],
                  log=None) -> tuple[list[str], dict[str, torch.Tensor], MappedPages]:
    """`split`'s pack for this preprocessing (built first when there is none): (ids, tensors, pages)."""
    folder, key, _ = pack_split(data_dir, split, processor, tasks, log)
    opened = open_pack(folder, key)
    if opened is None:
        raise PackError(f"the pack at {folder} was removed or damaged while it was being opened")
    return opened


def pack_data_set(data_dir: Path, processor: AuditProcessor, tasks: dict[str, list[str]], log=None) -> dict:
    """Every split of a data set packed for this preprocessing: `adaudit data pack`'s summary."""
    summary = {}
    for split in SPLITS:
        if (Path(data_dir) / f"{split}.jsonl").is_file() or split == "train":  # a folder without train: its error
            folder, _, built = pack_split(data_dir, split, processor, tasks, log)
            size = sum(path.stat().st_size for path in folder.iterdir())
            summary[split] = {"pack": str(folder), "ads": len(json.loads((folder / IDS_FILE).read_text())),
                              "mib": round(size / 2**20, 1), "built": built}
    return summary
