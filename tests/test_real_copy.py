"""Real-copy rows (training/real_copy.py): a clause of real writing in a training ad's copy, labels unchanged."""

import json

import pytest
import torch

from adaudit.compression.pipeline import compress
from adaudit.data.dataset import read_split
from adaudit.data.encoding import encode_split
from adaudit.data.phrasing import BARE_HEADS, contains_trigger
from adaudit.models.labels import parse_taxonomy
from adaudit.models.preprocessing import AuditProcessor
from adaudit.models.configuration import AuditModelConfig
from adaudit.training.presets import preset_config
from adaudit.training.real_copy import _forbidden, clauses, real_copy_rows, with_clause
from adaudit.training.teacher import train_teacher

from conftest import quiet


def test_clauses_are_many_short_chinese_and_carry_no_violation_word():
    pool = clauses()
    assert len(pool) > 10_000 and len(set(pool)) == len(pool)
    forbidden = _forbidden()
    assert "国家级" in forbidden and "百家乐" in forbidden and "最" in forbidden  # a head, a tail, a review term
    assert not set(BARE_HEADS) & set(forbidden) and "保本保息" in forbidden  # a head that is a claim by itself stays out
    for clause in pool:
        assert 4 <= len(clause) <= 16 and all("\u4e00" <= c <= "\u9fff" for c in clause)
        assert not contains_trigger(clause) and not any(word in clause for word in forbidden), clause


def test_with_clause_puts_it_at_a_clause_boundary():
    assert with_clause("甲，乙，丙", "新句", 0) == "新句，甲，乙，丙"
    assert with_clause("甲，乙，丙", "新句", 2) == "甲，乙，新句，丙"
    assert with_clause("甲，乙，丙", "新句", 9) == "甲，乙，丙，新句"


def test_rows_keep_their_source_ads_labels_and_picture_and_are_never_cut(dataset):
    config = preset_config("tiny", 100)
    processor = AuditProcessor(config)
    train = encode_split(dataset, "train", processor, config.tasks)
    texts = {record.id: record.text for record in read_split(dataset, "train")}
    rows = real_copy_rows(train, texts, 200, processor, seed=3)
    assert 150 <= len(rows) <= 200  # a copy too long for the model with its clause is left out
    position = {ad: i for i, ad in enumerate(train.ids)}
    decode = processor.tokenizer.decode
    led = 0
    for k in range(len(rows)):
        source = position[rows.ids[k].split("+real")[0]]
        assert torch.equal(rows.labels[k], train.labels[source])
        assert torch.equal(rows.image_bytes[k], train.image_bytes[source])
        assert rows.attention_mask[k, -1] == 0  # room left over: the copy (and any trigger) is whole
        added = decode(rows.input_ids[k].tolist(), skip_special_tokens=True).replace(" ", "")
        original = texts[train.ids[source]]
        assert len(added) > len(original) and contains_trigger(added) == contains_trigger(original)
        led += any(added.count(head) > original.count(head) for head in BARE_HEADS)
    assert 0.35 * len(rows) <= led <= 0.65 * len(rows)  # about half the rows carry a bare head, and no trigger
    again = real_copy_rows(train, texts, 200, processor, seed=3)
    assert torch.equal(again.input_ids, rows.input_ids)  # a seed draws the same rows
    other = parse_taxonomy({"tasks": {"decision": ["ok", "bad"], "kind": ["none", "fraud"]}, "verdict_task": "decision",
                            "reject_classes": ["bad"], "reason_task": "kind", "clean_class": "none"}, "labels.yaml")
    assert len(real_copy_rows(train, texts, 50, processor, taxonomy=other)) == 0  # a platform's own labels: none


def test_teacher_trains_on_real_copy_rows_and_records_them(dataset, tmp_path):
    messages = []
    metrics = train_teacher(dataset, tmp_path / "teacher", "tiny", epochs=1, limit=64, real_copy=0.5,
                            log=messages.append)
    assert metrics["real_copy"] == 0.5 and 24 <= metrics["real_copy_rows"] <= 32
    assert json.loads((tmp_path / "teacher" / "metrics.json").read_text())["real_copy_rows"] == metrics["real_copy_rows"]
    assert any(f"+ {metrics['real_copy_rows']} real copy" in message for message in messages)
    ablation = train_teacher(dataset, tmp_path / "image", "tiny", epochs=1, limit=16, real_copy=0.5,
                             modality="image", log=quiet)
    assert ablation["real_copy"] == 0.0 and ablation["real_copy_rows"] == 0  # a greyed copy holds no clause
    with pytest.raises(ValueError, match="real_copy"):
        train_teacher(dataset, tmp_path / "bad", "tiny", epochs=1, limit=16, real_copy=-1, log=quiet)


# a quick recipe; no common characters kept, so the student's vocabulary is the copy it distils on
QUICK = """distillation: {{samples: 48, batch_size: 16, views: 1, validation_samples: 8{real_copy}}}
vocabulary: {{characters: none}}
calibration_samples: 16
stages:
  - {{kind: blocks, keep: {{vision: 2, qformer: 1, text: 1}}, per_step: 1, epochs_per_step: 1}}
final_epochs: 1
latency_rounds: 1
"""


def test_student_distils_on_the_real_copy_its_teacher_trained_with(dataset, tmp_path):
    teacher = tmp_path / "teacher"
    train_teacher(dataset, teacher, "tiny", epochs=1, limit=64, real_copy=0.5, log=quiet)
    as_teacher, none = tmp_path / "as-teacher.yaml", tmp_path / "none.yaml"
    as_teacher.write_text(QUICK.format(real_copy=""))  # real_copy unset: the teacher's 0.5
    none.write_text(QUICK.format(real_copy=", real_copy: 0"))
    messages = []
    report = compress(teacher, dataset, tmp_path / "student", as_teacher, log=messages.append)
    # half of the 40 ads distilled on (8 held out), less any row whose copy would no longer fit
    assert 16 <= report["real_copy_rows"] <= 20 and report["distillation_samples"] == 48 + report["real_copy_rows"]
    assert report["teacher_outputs"]["parts"]["real_copy"] == "computed"
    assert json.loads((tmp_path / "student" / "recipe.json").read_text())["distillation"]["real_copy"] == 0.5
    assert any(f"{report['real_copy_rows']} real-copy rows" in message for message in messages)
    again = compress(teacher, dataset, tmp_path / "again", as_teacher, log=quiet)
    assert again["teacher_outputs"]["parts"]["real_copy"] == "reused" and again["real_copy_rows"] == report["real_copy_rows"]
    without = compress(teacher, dataset, tmp_path / "without", none, log=quiet)
    assert without["real_copy_rows"] == 0 and "real_copy" not in without["teacher_outputs"]["parts"]
    # the clauses' own characters stay in the student's vocabulary (else they would read as unknown)
    vocabulary = {name: AuditModelConfig.load(tmp_path / name).vocab_size for name in ("student", "without")}
    assert vocabulary["student"] > vocabulary["without"]
