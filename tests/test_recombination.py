"""Recombined teacher-training rows: one ad's copy over another's picture, labelled by the data's rules.

The labels are checked against the generator's own plan of each ad (what its picture really shows),
not against the function's arithmetic.
"""

import json
from dataclasses import replace

import pytest
import torch

from adaudit.data.encoding import encode_split
from adaudit.data.generator import plan_ads
from adaudit.data.recombination import recombined_pairs
from adaudit.training.presets import preset_config
from adaudit.models.labels import TASKS
from adaudit.models.preprocessing import AuditProcessor
from adaudit.training.teacher import train_teacher

from conftest import quiet


@pytest.fixture(scope="module")
def train_split(dataset):
    config = preset_config("tiny", 100)
    return encode_split(dataset, "train", AuditProcessor(config), config.tasks)


def name(task, index):
    return TASKS[task][int(index)]


def test_each_row_is_labelled_as_the_generator_would_draw_it(train_split):
    plans = {plan.id: plan for plan in plan_ads(300, seed=7)}  # the `dataset` fixture's ads
    pairs = recombined_pairs(train_split, 200, mismatch_share=0.5, seed=0)
    assert len(pairs) == 200 and pairs.image_bytes.dtype == torch.uint8
    column = {task: i for i, task in enumerate(pairs.tasks)}
    row_of = {ad: i for i, ad in enumerate(train_split.ids)}
    mismatches = 0
    for row, pair_id in enumerate(pairs.ids):
        copy_ad, picture_ad = pair_id.split("~")
        assert copy_ad != picture_ad
        copy, picture = plans[copy_ad], plans[picture_ad]
        labels = {task: name(task, pairs.labels[row, i]) for task, i in column.items()}
        # the sources: a picture showing its own industry with no gambling imagery, a copy whose violation is known
        assert not picture.gambling_image and picture.photo_industry == picture.labels["industry"]
        assert copy.labels["violation"] not in ("gambling", "image_text_mismatch")
        assert torch.equal(pairs.input_ids[row], train_split.input_ids[row_of[copy_ad]])
        assert torch.equal(pairs.image_bytes[row], train_split.image_bytes[row_of[picture_ad]])
        assert labels["industry"] == copy.labels["industry"]
        for task in ("background_colour", "clutter", "logo"):
            assert labels[task] == picture.labels[task]
        if picture.photo_industry != copy.labels["industry"]:
            mismatches += 1
            assert copy.labels["violation"] == "none"  # clean copy over another industry's picture
            assert labels["violation"] == "image_text_mismatch"
        else:
            assert labels["violation"] == copy.labels["violation"]
        assert labels["verdict"] == ("approve" if labels["violation"] == "none" else "reject")
    assert 70 <= mismatches <= 130  # about half


def test_mismatch_share_and_seed(train_split):
    mismatch = TASKS["violation"].index("image_text_mismatch")
    share = lambda pairs: float((pairs.labels[:, 1] == mismatch).float().mean())  # noqa: E731
    assert share(recombined_pairs(train_split, 100, mismatch_share=0.0)) == 0.0
    assert share(recombined_pairs(train_split, 100, mismatch_share=1.0)) == 1.0
    first, second = recombined_pairs(train_split, 50, seed=3), recombined_pairs(train_split, 50, seed=3)
    assert first.ids == second.ids and first.ids != recombined_pairs(train_split, 50, seed=4).ids
    assert len(recombined_pairs(train_split, 0)) == 0
    assert len(recombined_pairs(replace(train_split, tasks=["logo"], labels=train_split.labels[:, -1:]), 0)) == 0
    with pytest.raises(ValueError, match="mismatch_share"):
        recombined_pairs(train_split, 10, mismatch_share=1.5)


def test_joined_keeps_both_splits_rows_in_order(train_split):
    head, tail = train_split.subset(torch.arange(5)), train_split.subset(torch.arange(5, 8))
    joined = head.joined(tail)
    assert joined.ids == train_split.ids[:8]
    assert torch.equal(joined.labels, train_split.labels[:8]) and torch.equal(joined.image_bytes, train_split.image_bytes[:8])
    shorter = head.subset(torch.arange(2))
    shorter.input_ids = shorter.input_ids[:, :-1]
    with pytest.raises(ValueError, match="padded copy length"):
        head.joined(shorter)


def test_teacher_trains_on_recombined_rows_and_records_them(dataset, tmp_path):
    messages = []
    metrics = train_teacher(dataset, tmp_path / "teacher", "tiny", epochs=1, limit=64, recombined=0.5,
                            log=messages.append)
    assert metrics["recombined"] == 0.5 and metrics["recombined_rows"] == 32
    assert json.loads((tmp_path / "teacher" / "metrics.json").read_text())["recombined_rows"] == 32
    assert any("64 training ads + 32 recombined" in message for message in messages)
    ablation = train_teacher(dataset, tmp_path / "text", "tiny", epochs=1, limit=16, recombined=0.5,
                             modality="text", log=quiet)
    assert ablation["recombined_rows"] == 0  # greyed pictures cannot show a mismatch
    with pytest.raises(ValueError, match="recombined"):
        train_teacher(dataset, tmp_path / "bad", "tiny", epochs=1, limit=16, recombined=-1, log=quiet)
