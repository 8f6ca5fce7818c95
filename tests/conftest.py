"""Shared fixtures: one small data set, one tiny teacher and one student for the whole session.

Everything is real: the generator renders the ads, the teacher trains, the pipeline prunes
and distils. Sizes are small so the suite stays quick on two CPU cores.
"""

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import torch

from adaudit.compression.checkpoints import working_folder
from adaudit.compression.pipeline import compress
from adaudit.compression.recipe import TINY_RECIPE, load_recipe
from adaudit.data.generator import make_dataset
from adaudit.training.teacher import train_teacher


# Under this variable (set by .ci/run) a skip is a failure: a test that cannot run because a tool, a
# package or a server is missing would otherwise pass CI green on a machine whose install step broke.
# Locally, without it, such tests skip and say why.
REQUIRE_ALL = "ADAUDIT_TESTS_REQUIRE_ALL"


def every_test_must_run() -> bool:
    return os.environ.get(REQUIRE_ALL, "") not in ("", "0")


def _as_failure(report) -> None:
    if report.skipped and every_test_must_run() and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped, and {REQUIRE_ALL} is set (every test must run): {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _as_failure(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield  # a module that skips itself at import (allow_module_level)
    _as_failure(outcome.get_result())


def quiet(message: str) -> None:
    pass


def train_until_first_checkpoint(dataset: Path, out: Path, monkeypatch, **options) -> None:
    """A tiny teacher run that dies right after its first checkpoint, as an interrupted run would."""
    from adaudit.training import teacher as teacher_module

    real_save = teacher_module.save_checkpoint

    def save_then_stop(*arguments):
        real_save(*arguments)
        raise KeyboardInterrupt

    monkeypatch.setattr(teacher_module, "save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train_teacher(dataset, out, "tiny", log=quiet, **options)
    monkeypatch.setattr(teacher_module, "save_checkpoint", real_save)


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data") / "ads"
    make_dataset(folder, n=300, seed=7)
    return folder


@pytest.fixture(scope="session")
def teacher(dataset, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("teacher") / "tiny"
    torch.manual_seed(0)
    train_teacher(dataset, folder, "tiny", epochs=3, log=quiet)
    return folder


@pytest.fixture(scope="session")
def student(teacher, dataset, tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("student") / "student"
    report = compress(teacher, dataset, folder, TINY_RECIPE, log=quiet)
    return folder, report


@pytest.fixture(scope="module")
def own_teacher(teacher, tmp_path_factory):
    """The session's tiny teacher in a folder of its own, one per test module: the teacher's outputs folder
    (beside it) starts empty, so a module that compresses sees its own outputs computed and reused."""
    folder = tmp_path_factory.mktemp("own-teacher") / "teacher"
    shutil.copytree(teacher, folder)
    return folder


@pytest.fixture(scope="session")
def tiny_recipe():
    return load_recipe(TINY_RECIPE)


def student_variant(student_folder, folder, **changes):
    """The student's architecture with some config fields changed, fresh weights, its own tokenizer."""
    import dataclasses

    from adaudit.models.configuration import AuditModelConfig
    from adaudit.models.modeling import AuditModel

    model = AuditModel.from_pretrained(student_folder)
    changed = AuditModel(dataclasses.replace(AuditModelConfig.load(student_folder), **changes).validate())
    changed.tokenizer = model.tokenizer
    changed.save_pretrained(folder)
    return folder


def wait_for(check, seconds: float, what: str):
    """Poll `check` until it returns something other than None, and return that; fail after `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value is not None:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


WIDTHS = 2  # the widths stage's place in a run whose recipe prunes the vocabulary: after it and the blocks stage


def checkpoint_inside_widths(out):
    """The checkpoint's progress once it is inside the widths stage's distillation, else None."""
    try:
        progress = json.loads((working_folder(out) / "checkpoint" / "progress.json").read_text())
    except (OSError, ValueError):
        return None
    return progress if progress["stage"] == WIDTHS and "soft_step" in progress["stage_state"] else None


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL `process` and every process it started: torchrun's ranks run in sessions of their own, so
    killing the launcher's process group would leave them running."""
    try:
        descendants = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    for each in [process, *descendants]:
        try:
            os.kill(each.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()
    psutil.wait_procs(descendants, timeout=30)


def kill_inside_widths(arguments, env=None) -> dict:
    """Start `compress`, SIGKILL it (under torchrun, every rank too) as soon as a checkpoint inside the widths
    stage is written; that checkpoint."""
    process = subprocess.Popen(arguments, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    out = arguments[arguments.index("--out") + 1]
    deadline = time.monotonic() + 900
    try:
        while process.poll() is None and time.monotonic() < deadline:
            progress = checkpoint_inside_widths(out)
            if progress is not None:
                kill_tree(process)
                return progress
            time.sleep(0.02)
    finally:
        if process.poll() is None:
            kill_tree(process)
    pytest.fail(f"compress ended (exit code {process.returncode}) before a checkpoint inside the widths stage")
