"""Augmented views for distillation: what each view row holds, and which rows count as labelled."""

import pytest
import torch

from adaudit.compression.augmentation import apply_plan, jitter, view_plan
from adaudit.compression.distillation import cache_teacher, distillation_loss
from adaudit.compression.recipe import load_recipe
from adaudit.data.encoding import encode_split
from adaudit.models.modeling import AuditModel
from adaudit.models.preprocessing import AuditProcessor

from conftest import TINY_RECIPE


@pytest.fixture(scope="module")
def ads(teacher, dataset):
    model = AuditModel.from_pretrained(teacher)
    return model, encode_split(dataset, "train", AuditProcessor.from_folder(model.config, teacher),
                               model.config.tasks, limit=40)


def test_views_pair_each_copy_with_its_own_or_another_ads_picture(ads):
    _, split = ads
    plan = view_plan(split, views=3, recombined_fraction=0.5, seed=1)
    n = len(split)
    assert plan.text_source.tolist() == list(range(n)) * 3
    recombined = ~plan.labelled
    assert 0 < int(recombined.sum()) < 3 * n
    assert (plan.image_source[recombined] != plan.text_source[recombined]).all()
    pool = apply_plan(split, plan)
    assert len(pool) == 4 * n and pool.image_bytes.dtype == torch.uint8
    assert torch.equal(pool.input_ids[:n], split.input_ids)
    assert torch.equal(pool.input_ids[n:], split.input_ids[plan.text_source])
    assert torch.equal(pool.labels[n:], split.labels[plan.text_source])
    # a view's picture is a jittered copy of its source picture: close to it, not equal
    view = pool.image_bytes[n:].float()
    source = split.image_bytes[plan.image_source].float()
    other = split.image_bytes[(plan.image_source + 1) % n].float()
    assert not torch.equal(view, source)
    assert (view - source).abs().mean() < (view - other).abs().mean()


def test_the_same_seed_gives_the_same_views(ads):
    _, split = ads
    first, second = view_plan(split, 2, 0.5, seed=3), view_plan(split, 2, 0.5, seed=3)
    assert torch.equal(first.image_source, second.image_source)
    assert torch.equal(first.image_bytes, second.image_bytes)
    assert not torch.equal(first.image_bytes, view_plan(split, 2, 0.5, seed=4).image_bytes)


def test_jitter_keeps_an_images_shape_and_range():
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    out = jitter(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert (out.float() - images.float()).abs().mean() > 0


def test_labels_of_recombined_rows_never_enter_the_loss(ads):
    model, split = ads
    settings = load_recipe(TINY_RECIPE).distillation
    plan = view_plan(split, views=1, recombined_fraction=0.5, seed=0)
    pool = apply_plan(split, plan)
    n = len(split)
    rows = torch.arange(n, len(pool))
    cache = cache_teacher(model, split).concat(cache_teacher(model, pool.subset(rows), labelled=plan.labelled))
    index = torch.arange(len(pool))
    model.eval()
    with torch.no_grad():
        before = distillation_loss(model, pool, cache, index, settings).item()
        flipped = pool.labels.clone()
        unlabelled = torch.cat([torch.zeros(n, dtype=torch.bool), ~plan.labelled])
        flipped[unlabelled] = (flipped[unlabelled] + 1) % 2
        pool.labels = flipped
        assert distillation_loss(model, pool, cache, index, settings).item() == pytest.approx(before, rel=1e-6)
        flipped[0] = (flipped[0] + 1) % 2  # a labelled row: its labels count
        assert distillation_loss(model, pool, cache, index, settings).item() != pytest.approx(before, rel=1e-6)
