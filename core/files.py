"""Atomic writes: an interrupted run never leaves a folder or file that looks complete."""

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_folder(folder: Path):
    """Yield an empty staging folder beside `folder`; on success it replaces `folder`.

    On any error the staging folder is removed and `folder` is left as it was.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result should look like any new folder
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    previous = None
    if folder.exists():
        previous = folder.with_name(f".{folder.name}.previous-{os.getpid()}")
        os.replace(folder, previous)
    os.replace(staging, folder)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)


def refuse_existing_folder(folder: Path) -> None:
    """FileExistsError unless `folder` is absent or an empty folder: a command that creates a folder never
    mixes its files with someone else's."""
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise FileExistsError(f"{folder} already exists and is not empty; choose a new folder or remove it")


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_results(out: Path, stem: str, summary: dict, markdown: str) -> None:
    """A benchmark's results: OUT/<stem>.json (the figures) and OUT/<stem>.md (the report), each atomically."""
    atomic_write_text(Path(out) / f"{stem}.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(Path(out) / f"{stem}.md", markdown)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, then rename it over `path`: readers see the
    old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
