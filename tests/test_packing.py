"""Splits packed on disk (data/packing.py): the same numbers as decoding in memory, keyed by the preprocessing,
rebuilt when foreign or damaged, never half-written, and read without keeping the pages read."""

import json
import resource
import shutil
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from adaudit.compression.recipe import DistillationSettings
from adaudit.data.dataset import read_split
from adaudit.data.encoding import encode_records, encode_split
from adaudit.data.packing import COMPLETE_MARKER, MANIFEST_FILE, packs_folder
from adaudit.models.preprocessing import AuditProcessor
from adaudit.models.tokenizer import build_vocabulary, make_tokenizer
from adaudit.training.presets import preset_config

TINY = preset_config("tiny", len(build_vocabulary()))


def processor(image_size: int = TINY.image_size, tokenizer=None) -> AuditProcessor:
    return AuditProcessor(replace(TINY, image_size=image_size), tokenizer)


@pytest.fixture
def data(dataset, tmp_path) -> Path:
    """A copy of the session's data set, without its packs: these tests build, damage and rebuild them."""
    folder = tmp_path / "ads"
    shutil.copytree(dataset, folder, ignore=shutil.ignore_patterns(".packs"))
    return folder


def packs(folder: Path) -> list[str]:
    return sorted(path.name for path in packs_folder(folder).iterdir() if not path.name.startswith("."))


def test_packed_batches_equal_the_in_memory_ones(data):
    built = []
    packed = encode_split(data, "train", processor(), TINY.tasks, log=built.append)
    in_memory = encode_records(read_split(data, "train"), processor(), TINY.tasks)
    assert len(built) == 1 and packed.pages is not None and in_memory.pages is None
    assert packed.ids == in_memory.ids and packed.tasks == in_memory.tasks
    for index in torch.randperm(len(packed), generator=torch.Generator().manual_seed(0)).split(32):
        batch, expected = packed.inputs(index), in_memory.inputs(index)
        assert batch.keys() == expected.keys() and all(torch.equal(batch[k], expected[k]) for k in batch)
        assert torch.equal(packed.labels[index], in_memory.labels[index])
    head = encode_split(data, "train", processor(), TINY.tasks, limit=10, log=built.append)
    assert len(built) == 1  # read from the pack just built
    assert head.ids == in_memory.ids[:10] and torch.equal(head.image_bytes, in_memory.image_bytes[:10])
    subset = packed.subset(torch.tensor([5, 1, 3]))
    assert torch.equal(subset.input_ids, in_memory.input_ids[[5, 1, 3]])


def test_other_preprocessing_gets_its_own_pack(data):
    encode_split(data, "test", processor(), TINY.tasks)
    bigger = encode_split(data, "test", processor(image_size=48), TINY.tasks)
    vocabulary = build_vocabulary()
    fewer = encode_split(data, "test", processor(tokenizer=make_tokenizer(vocabulary[:len(vocabulary) // 2])),
                         TINY.tasks)
    tasks = dict(TINY.tasks)
    tasks["logo"] = list(reversed(tasks["logo"]))
    relabelled = encode_split(data, "test", processor(), tasks)
    assert len(packs(data)) == 4
    assert bigger.image_bytes.shape[-1] == 48
    assert not torch.equal(fewer.input_ids, encode_split(data, "test", processor(), TINY.tasks).input_ids)
    assert torch.equal(relabelled.labels[:, -1], 1 - encode_split(data, "test", processor(), TINY.tasks).labels[:, -1])
    assert len(packs(data)) == 4  # the first pack read again, not rebuilt


def test_changed_data_is_packed_again(data):
    before = encode_split(data, "validation", processor(), TINY.tasks)
    lines = (data / "validation.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    (data / "validation.jsonl").write_text("".join(lines[1:]), encoding="utf-8")
    after = encode_split(data, "validation", processor(), TINY.tasks)
    assert after.ids == before.ids[1:] and len(packs(data)) == 2
    picture = data / read_split(data, "validation")[0].image_path.relative_to(data)
    shutil.copyfile(data / read_split(data, "validation")[1].image_path.relative_to(data), picture)
    replaced = encode_split(data, "validation", processor(), TINY.tasks)
    assert len(packs(data)) == 3 and torch.equal(replaced.image_bytes[0], replaced.image_bytes[1])


@pytest.mark.parametrize("damage", ["manifest of another preprocessing", "no complete marker", "truncated pictures"])
def test_a_foreign_or_damaged_pack_is_rebuilt_never_read(data, damage):
    built = []
    reference = encode_split(data, "test", processor(), TINY.tasks, log=built.append)
    pictures, labels = reference.image_bytes.clone(), reference.labels.clone()
    del reference  # a map of a file truncated under it would fault (SIGBUS) when read
    folder = packs_folder(data) / packs(data)[0]
    if damage == "manifest of another preprocessing":
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
        manifest["description"]["image_size"] = 48
        (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    elif damage == "no complete marker":
        (folder / COMPLETE_MARKER).unlink()
    else:
        with (folder / "image_bytes.npy").open("r+b") as stream:
            stream.truncate(stream.seek(0, 2) - 3072)
    rebuilt = encode_split(data, "test", processor(), TINY.tasks, log=built.append)
    assert len(built) == 2 and packs(data) == [folder.name]
    assert torch.equal(rebuilt.image_bytes, pictures) and torch.equal(rebuilt.labels, labels)


def test_reading_a_pack_keeps_none_of_its_pages(data):
    """Each batch lets go of the pages it read (madvise): a whole pass leaves the map's resident size at 0,
    where without it the whole file would stay counted in the process's RSS."""
    split = encode_split(data, "train", processor(), TINY.tasks)
    for index in split.batches(16, torch.Generator().manual_seed(0)):
        split.inputs(index)
    assert mapped_resident_kib("image_bytes.npy") == 0
    split.image_bytes.sum()  # read without letting go: the whole file is resident
    assert mapped_resident_kib("image_bytes.npy") >= split.image_bytes.numel() // 1024 - 4
    split.release()
    assert mapped_resident_kib("image_bytes.npy") == 0


def mapped_resident_kib(name: str) -> int:
    """The resident kB of this process's maps of files called `name` (/proc/self/smaps)."""
    total, counting = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 5 and "-" in fields[0] and ":" in fields[3]:  # a map's first line: range perms ... path
            counting = len(fields) >= 6 and fields[5].endswith(f"/{name}")
        elif counting and fields[0] == "Rss:":
            total += int(fields[1])
    return total


def no_room_to_write(limit: int):
    def apply():  # in the child: files may grow to `limit` bytes; a longer write fails (EFBIG), no signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    return apply


def test_a_full_disk_ends_with_one_error_and_no_pack(data):
    command = [sys.executable, "-m", "adaudit.cli", "data", "pack", "--data", str(data), "--preset", "tiny"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, preexec_fn=no_room_to_write(64_000))
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "no room on the disk" in errors[0] and "nothing half-written" in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert packs(data) == [] and not [p for p in packs_folder(data).iterdir() if ".partial-" in p.name]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)  # room again: packed in full
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert all(entry["built"] for entry in summary.values()) and len(packs(data)) == len(summary)
    again = json.loads(subprocess.run(command, capture_output=True, text=True, timeout=300).stdout)
    assert not any(entry["built"] for entry in again.values())
    assert again["train"]["ads"] == len(read_split(data, "train"))


def test_distillation_samples_have_no_upper_cap():
    assert DistillationSettings().samples == 2000
    assert DistillationSettings(samples=60_000).samples == 60_000
