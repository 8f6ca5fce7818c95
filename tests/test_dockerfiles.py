"""Every Dockerfile of the repository, checked without building it (no docker here): each base image
has a version tag, each COPY names paths that exist in the build context (the repository root) and
that .dockerignore does not drop, and each pip install pins every package it names with ==, so an
image built next month holds what the tests ran with. An install of the project itself (`.`) that
resolves its dependencies must find each of pyproject.toml's dependencies pinned in the same file."""

from __future__ import annotations

import fnmatch
import re
import shlex
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIPPED_FOLDERS = {".venv", ".git", "runs", "node_modules", "__pycache__"}
PINNED = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9,._ -]+\])?==[A-Za-z0-9][A-Za-z0-9.+!_-]*$")
# pip options that take a value (the value is not a package)
PIP_VALUE_OPTIONS = {"-i", "--index-url", "--extra-index-url", "-f", "--find-links", "-c", "--constraint",
                     "-r", "--requirement", "-t", "--target", "--prefix", "--root", "--platform", "--python-version",
                     "--implementation", "--abi", "--trusted-host", "--cert", "--progress-bar", "-C",
                     "--config-settings", "--global-option", "--src", "--upgrade-strategy", "--timeout", "--retries"}


def dockerfiles() -> list[Path]:
    found = [path for path in ROOT.rglob("*") if path.is_file()
             and (path.name == "Dockerfile" or path.name.endswith(".Dockerfile") or path.name.startswith("Dockerfile."))
             and not SKIPPED_FOLDERS & set(path.relative_to(ROOT).parts)]
    return sorted(found)


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        joined.append(current + stripped)
        current = ""
    if current:
        joined.append(current)
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in joined]


def _substitute(text: str, arguments: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: arguments.get(m.group(1) or m.group(2), m.group(0)), text)


def _ignored(relative: str, patterns: list[str]) -> bool:
    """Whether .dockerignore drops `relative` (a path or one of its parents matches a pattern; `!` re-includes)."""
    parts = relative.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        if any(fnmatch.fnmatch(c, pattern) or (pattern.startswith("**/") and fnmatch.fnmatch(c.split("/")[-1], pattern[3:]))
               for c in candidates):
            ignored = not negate
    return ignored


def pip_requirements(command: str) -> list[tuple[list[str], bool]]:
    """For each `pip install` in a RUN command: the packages it names (local paths kept as given) and
    whether it runs with --no-deps."""
    installs = []
    for segment in re.split(r"&&|\|\||;|\|", command):
        words = shlex.split(segment)
        for start in range(len(words) - 1):
            if re.fullmatch(r"(\S*/)?pip3?", words[start]) and words[start + 1] == "install" or \
                    words[start].startswith("python") and words[start + 1:start + 4] == ["-m", "pip", "install"]:
                rest = words[start + (2 if words[start + 1] == "install" else 4):]
                packages, no_deps, skip = [], False, False
                for word in rest:
                    if skip:
                        skip = False
                    elif word in PIP_VALUE_OPTIONS:
                        skip = True
                    elif word == "--no-deps":
                        no_deps = True
                    elif not word.startswith("-"):
                        packages.append(word)
                installs.append((packages, no_deps))
                break
    return installs


def problems(text: str, root: Path = ROOT) -> list[str]:
    """What is wrong with a Dockerfile's text, built with `root` as its context; [] when nothing."""
    ignore_file = root / ".dockerignore"
    ignore = [line.strip() for line in ignore_file.read_text().splitlines()
              if line.strip() and not line.startswith("#")] if ignore_file.is_file() else []
    found, arguments, stages, pinned_names, project_installs = [], {}, set(), set(), 0
    for instruction, rest in instructions(text):
        if instruction == "ARG":
            name, _, default = rest.partition("=")
            arguments[name.strip()] = default.strip().strip('"')
        elif instruction == "FROM":
            words = _substitute(rest, arguments).split()
            image = next(word for word in words if not word.startswith("--"))
            if len(words) >= 3 and words[-2].upper() == "AS":
                stages.add(words[-1])
            if image in stages or image == "scratch":
                continue
            if "@sha256:" in image:
                continue
            name, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "")
            if not tag or tag == "latest" or not re.search(r"\d", tag) or "$" in tag:
                found.append(f"FROM {image}: the base image needs a version tag")
        elif instruction in ("COPY", "ADD"):
            words = shlex.split(rest) if not rest.lstrip().startswith("[") else __import__("json").loads(rest)
            if any(word.startswith("--from=") for word in words):
                continue
            sources = [word for word in words if not word.startswith("--")][:-1]
            for source in sources:
                if re.match(r"^[a-z]+://", source):
                    found.append(f"{instruction} {source}: a download in an image is not pinned by the repository")
                    continue
                matches = list(root.glob(source.strip("/"))) if source not in (".", "./") else [root]
                if not matches:
                    found.append(f"{instruction} {source}: no such path in the build context")
                elif all(_ignored(str(m.relative_to(root)), ignore) for m in matches if m != root):
                    if source not in (".", "./"):
                        found.append(f"{instruction} {source}: dropped by .dockerignore")
        elif instruction == "RUN":
            for packages, no_deps in pip_requirements(rest):
                for package in packages:
                    if package in (".",) or package.startswith(("./", "/")):
                        project_installs += 0 if no_deps else 1
                    elif not PINNED.match(package):
                        found.append(f"pip install {package}: not pinned with ==")
                    else:
                        pinned_names.add(_normalise(package.split("==")[0].split("[")[0]))
    if project_installs:
        dependencies = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
        for requirement in dependencies:
            name = _normalise(re.split(r"[\[<>=!~;, ]", requirement, maxsplit=1)[0])
            if name not in pinned_names:
                found.append(f"pip install .: pyproject.toml's dependency {name} is not pinned in this Dockerfile")
    return found


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_repository_has_both_dockerfiles():
    assert {str(path.relative_to(ROOT)) for path in dockerfiles()} >= {"Dockerfile", "deploy/triton.Dockerfile"}


@pytest.mark.parametrize("path", dockerfiles(), ids=lambda path: str(path.relative_to(ROOT)))
def test_every_dockerfile_is_pinned_and_copies_what_exists(path):
    assert problems(path.read_text()) == []


def test_the_native_triton_image_installs_nothing_and_the_python_backend_variant_no_gateway():
    """The default (last) stage of deploy/triton.Dockerfile is NVIDIA's image as it is: Triton's onnxruntime
    backend needs no torch; the python-backend stage installs the model's packages but not the gateway's."""
    stages, current = {}, None
    for instruction, rest in instructions((ROOT / "deploy" / "triton.Dockerfile").read_text()):
        if instruction == "FROM":
            current = rest.split()[-1]
            stages[current] = []
        elif instruction == "RUN":
            stages[current] += [p for packages, _ in pip_requirements(rest) for p in packages]
    assert list(stages)[-1] == "native" and stages["native"] == []
    names = {p.split("==")[0] for p in stages["python-backend"]}
    assert {"torch", "transformers", "onnxruntime", "."} <= names
    assert not names & {"fastapi", "uvicorn", "sqlalchemy", "nvidia-pytriton"}


@pytest.mark.parametrize("text, fragment", [
    ("FROM python:latest\n", "needs a version tag"),
    ("FROM python\n", "needs a version tag"),
    ("ARG V=3.11\nFROM python:${V}-slim\nRUN pip install fastapi\n", "pip install fastapi: not pinned"),
    ("FROM python:3.11-slim\nRUN pip install 'fastapi>=0.1' \\\n  && true\n", "not pinned"),
    ("FROM python:3.11-slim\nCOPY nowhere ./\n", "COPY nowhere: no such path"),
    ("FROM python:3.11-slim\nCOPY deploy deploy\n", "dropped by .dockerignore"),
    ("FROM python:3.11-slim\nRUN pip install . fastapi==0.1\n", "dependency torch is not pinned"),
])
def test_the_check_catches_what_it_should(text, fragment):
    assert any(fragment in problem for problem in problems(text)), problems(text)


def test_the_check_accepts_pinned_installs_stages_and_flags():
    text = ("ARG T=24.10\nFROM nvcr.io/nvidia/tritonserver:${T}-py3 AS base\nFROM base\n"
            "RUN pip install --index-url https://example.org/simple torch==2.13.0 \\\n"
            "    && python -m pip install --no-deps --ignore-requires-python . \"uvicorn[standard]==0.55.0\"\n"
            "COPY --from=base /opt /opt\nCOPY models models\n")
    assert problems(text) == []
