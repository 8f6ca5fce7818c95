"""Real-copy rows (training/real_copy.py): a clause of real writing in a training ad's copy, labels unchanged."""

import json

import pytest
import torch

from adaudit.data.dataset import read_split
from adaudit.data.encoding import encode_split
from adaudit.data.phrasing import BARE_HEADS, contains_trigger
from adaudit.models.labels import parse_taxonomy
from adaudit.models.preprocessing import AuditProcessor
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
