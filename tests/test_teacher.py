"""Teacher training: a real (tiny) run, checkpoints every epoch, resume after an interruption."""

import json

import pytest

from adaudit.training.presets import preset_config
from adaudit.models.modeling import AuditModel
from adaudit.models.tokenizer import build_vocabulary
from adaudit.training.teacher import checkpoint_folder, train_teacher

from conftest import train_until_first_checkpoint


def test_teacher_folder_and_metrics(teacher):
    metrics = json.loads((teacher / "metrics.json").read_text())
    assert metrics["preset"] == "tiny" and metrics["epochs"] == 3
    assert metrics["train_loss"][-1] < metrics["train_loss"][0]
    assert 0 <= metrics["test"]["accuracy"] <= 1
    assert not checkpoint_folder(teacher).exists()
    AuditModel.from_pretrained(teacher)


def test_interrupted_training_resumes_from_its_checkpoint(dataset, tmp_path, monkeypatch):
    out = tmp_path / "teacher"
    train_until_first_checkpoint(dataset, out, monkeypatch, epochs=2, limit=64)
    assert not out.exists() and checkpoint_folder(out).exists()

    messages = []
    metrics = train_teacher(dataset, out, "tiny", epochs=2, limit=64, resume=True, log=messages.append)
    assert any("after epoch 1" in message for message in messages)
    assert len(metrics["train_loss"]) == 1  # only the second epoch ran again
    assert out.is_dir() and not checkpoint_folder(out).exists()


def test_single_modality_ablation_blanks_the_other_input(dataset, tmp_path):
    from adaudit.data.encoding import encode_split
    from adaudit.training.presets import preset_config
    from adaudit.models.preprocessing import AuditProcessor
    from adaudit.training.teacher import blank_modality

    config = preset_config("tiny", 100)
    processor = AuditProcessor(config)
    split = encode_split(dataset, "test", processor, config.tasks, limit=8)
    text_only = blank_modality(split, "text", processor)
    assert text_only.image_bytes.unique().tolist() == [128] and text_only.input_ids.equal(split.input_ids)
    image_only = blank_modality(split, "image", processor)
    assert image_only.attention_mask.sum(1).tolist() == [2] * 8 and image_only.image_bytes.equal(split.image_bytes)


def test_fresh_modules_learn_at_their_own_rate(teacher):
    """The parts a pretrained teacher adds around its towers get `fresh_learning_rate`; the rest
    the schedule's rate; weight decay still only on matrices outside the embeddings."""
    from adaudit.training.loop import Schedule, TrainingState, make_optimizer

    model = AuditModel.from_pretrained(teacher)
    schedule = Schedule(epochs=1, learning_rate=1e-4, fresh_learning_rate=5e-4, fresh_modules=("qformer", "heads"))
    optimizer, _ = make_optimizer(model, schedule, 10, TrainingState())
    rate = {id(p): (group["initial_lr"], group["weight_decay"]) for group in optimizer.param_groups
            for p in group["params"]}
    for name, parameter in model.named_parameters():
        learning_rate, decay = rate[id(parameter)]
        assert learning_rate == (5e-4 if name.split(".")[0] in ("qformer", "heads") else 1e-4), name
        assert (decay > 0) == (parameter.ndim >= 2 and "embeddings" not in name), name
    assert len(rate) == len(list(model.parameters()))
    # without fresh modules: the two groups (decay first) that older checkpoints' optimizer state has
    plain, _ = make_optimizer(model, Schedule(epochs=1), 10, TrainingState())
    assert [group["weight_decay"] > 0 for group in plain.param_groups] == [True, False]


@pytest.mark.parametrize("blocks", [0, 2])
def test_freeze_lower_blocks_keeps_the_embeddings_and_the_lowest_blocks_fixed(blocks):
    """The pretrained preset's --frozen-blocks: embeddings and the lowest `blocks` blocks of the vision and
    text towers stop learning; every other parameter (upper blocks, Q-Former, projector, heads) still does."""
    from adaudit.training.teacher import freeze_lower_blocks

    model = AuditModel(preset_config("tiny", len(build_vocabulary())))
    count = freeze_lower_blocks(model, blocks)
    fixed = [model.vision.embeddings, model.text.embeddings.word_embeddings,
             *(model.blocks(tower)[i] for tower in ("vision", "text") for i in range(blocks))]
    fixed_ids = {id(p) for module in fixed for p in module.parameters()}
    assert count == sum(p.numel() for module in fixed for p in module.parameters())
    for parameter in model.parameters():
        assert parameter.requires_grad == (id(parameter) not in fixed_ids)
    assert all(p.requires_grad for p in model.blocks("text")[blocks].parameters())
    assert all(p.requires_grad for p in model.qformer.parameters())


def test_the_teacher_reports_its_validation_scores_beside_the_test_scores(teacher):
    """The conftest data set has a validation split: the teacher's metrics carry its scores there, so a
    choice (epochs, a recipe) never needs the test split's."""
    metrics = json.loads((teacher / "metrics.json").read_text())
    assert set(metrics["validation"]) >= {"accuracy", "violation_macro_f1", "task_accuracy"}
    assert metrics["validation"]["samples"] == 30 and metrics["test"]["samples"] == 60
