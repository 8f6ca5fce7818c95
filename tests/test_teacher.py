"""Teacher training: a real (tiny) run, checkpoints every epoch, resume after an interruption."""

import json

import pytest

from adaudit import teacher as teacher_module
from adaudit.models.modeling import AuditModel
from adaudit.teacher import checkpoint_folder, train_teacher

from conftest import quiet


def test_teacher_folder_and_metrics(teacher):
    metrics = json.loads((teacher / "metrics.json").read_text())
    assert metrics["preset"] == "tiny" and metrics["epochs"] == 3
    assert metrics["train_loss"][-1] < metrics["train_loss"][0]
    assert 0 <= metrics["test"]["accuracy"] <= 1
    assert not checkpoint_folder(teacher).exists()
    AuditModel.from_pretrained(teacher)


def test_interrupted_training_resumes_from_its_checkpoint(dataset, tmp_path, monkeypatch):
    out = tmp_path / "teacher"
    real_save = teacher_module.save_checkpoint

    def save_then_stop(folder, model, optimizer, state, extra):  # noqa: PLR0913
        real_save(folder, model, optimizer, state, extra)
        raise KeyboardInterrupt  # the run dies right after its first checkpoint

    monkeypatch.setattr(teacher_module, "save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train_teacher(dataset, out, "tiny", epochs=2, limit=64, log=quiet)
    assert not out.exists() and checkpoint_folder(out).exists()
    monkeypatch.setattr(teacher_module, "save_checkpoint", real_save)

    messages = []
    metrics = train_teacher(dataset, out, "tiny", epochs=2, limit=64, resume=True, log=messages.append)
    assert any("after epoch 1" in message for message in messages)
    assert len(metrics["train_loss"]) == 1  # only the second epoch ran again
    assert out.is_dir() and not checkpoint_folder(out).exists()


def test_single_modality_ablation_blanks_the_other_input(dataset, tmp_path):
    from adaudit.data.encoding import encode_split
    from adaudit.models.configuration import preset
    from adaudit.models.preprocessing import AuditProcessor
    from adaudit.teacher import blank_modality

    config = preset("tiny", 100)
    processor = AuditProcessor(config)
    split = encode_split(dataset, "test", processor, config.tasks, limit=8)
    text_only = blank_modality(split, "text", processor)
    assert text_only.image_bytes.unique().tolist() == [128] and text_only.input_ids.equal(split.input_ids)
    image_only = blank_modality(split, "image", processor)
    assert image_only.attention_mask.sum(1).tolist() == [2] * 8 and image_only.image_bytes.equal(split.image_bytes)
