"""The Triton model repository that `adaudit export` writes (the live server is in test_service_triton)."""

import json

import pytest

from adaudit.export.repository import ServingSettings, export_model, verify_checksums
from adaudit.models.modeling import ModelFolderError


def test_repository_layout_and_config(student, tmp_path):
    folder, _ = student
    repo = tmp_path / "repo"
    version = export_model(folder, repo, "student", 1, ServingSettings(max_batch_size=16, preferred_batch_sizes=[4, 16]))
    assert sorted(p.name for p in version.iterdir()) == ["checksums.json", "model", "model.py"]
    model_files = {p.name for p in (version / "model").iterdir()}  # the student's pruned vocabulary: tokenizer.json
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= model_files and "vocab.txt" not in model_files
    config = (repo / "student" / "config.pbtxt").read_text()
    assert 'backend: "python"' in config and "max_batch_size: 16" in config
    assert "preferred_batch_size: [ 4, 16 ]" in config and "kind: KIND_CPU" in config
    assert "version_policy: { latest: { num_versions: 2 } }" in config
    assert 'name: "violation" data_type: TYPE_FP32 dims: [ 8 ]' in config
    assert 'key: "threads" value: { string_value: "0" }' in config
    assert "dims: [ 3, 32, 32 ]" in config  # the tiny student's image size
    checksums = json.loads((version / "checksums.json").read_text())
    assert 'key: "tokenizer" value: { string_value: "tokenizer.json" }' in config  # the gateway must read it
    assert set(checksums) == {"model.py"} | {f"model/{name}" for name in model_files}


def test_a_new_version_rolls_out_beside_the_old(student, tmp_path):
    folder, _ = student
    repo = tmp_path / "repo"
    export_model(folder, repo, "student", 1, ServingSettings())
    export_model(folder, repo, "student", 2, ServingSettings(instance_kind="KIND_GPU"))
    assert sorted(p.name for p in (repo / "student").iterdir()) == ["1", "2", "config.pbtxt"]
    assert "kind: KIND_GPU" in (repo / "student" / "config.pbtxt").read_text()


def test_changed_files_fail_the_checksum(student, tmp_path):
    version = export_model(student[0], tmp_path / "repo", "student", 1, ServingSettings())
    verify_checksums(version)
    with open(version / "model" / "model.safetensors", "r+b") as stream:
        stream.seek(-4, 2)
        stream.write(b"\0\0\0\1")
    with pytest.raises(ValueError, match="model/model.safetensors"):
        verify_checksums(version)


def test_a_broken_model_folder_is_not_exported(tmp_path):
    with pytest.raises(ModelFolderError):
        export_model(tmp_path / "missing", tmp_path / "repo", "student", 1, ServingSettings())
    assert not (tmp_path / "repo").exists()


def test_cpu_priority_is_written_and_checked(student, tmp_path):
    export_model(student[0], tmp_path / "repo", "teacher", 1, ServingSettings(cpu_priority="idle"))
    assert 'key: "cpu_priority" value: { string_value: "idle" }' in (tmp_path / "repo" / "teacher" / "config.pbtxt").read_text()
    with pytest.raises(ValueError, match="cpu_priority"):
        ServingSettings(cpu_priority="high")
