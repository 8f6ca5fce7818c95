"""Cuts: each removes exactly what it is asked, physically, and keeps a working model."""

import pytest
import torch

from adaudit.compression.importance import UnitMasks, top_indices
from adaudit.compression.structure import cut, remove_blocks, shrink_hidden, shrink_widths
from adaudit.training.presets import preset_config
from adaudit.models.modeling import AuditModel

from test_model import random_inputs


@pytest.fixture()
def model():
    torch.manual_seed(1)
    return AuditModel(preset_config("tiny", 300)).eval()


def logits(model, inputs):
    with torch.inference_mode():
        return model(**inputs).logits


def assert_same(a, b, tolerance=1e-5):
    for task in a:
        assert torch.allclose(a[task], b[task], atol=tolerance), task


def test_cut_that_keeps_everything_is_the_identity(model):
    inputs = random_inputs(model.config)
    assert_same(logits(model, inputs), logits(cut(model, model.config), inputs), 0)


def test_removing_blocks_equals_skipping_them(model):
    inputs = random_inputs(model.config)
    pruned = remove_blocks(model, {"text": [0, 2]})
    assert len(pruned.text.encoder.layer) == 2 and len(pruned.config.text.blocks) == 2
    for new, old in ((0, 0), (1, 2)):
        assert torch.equal(pruned.text.encoder.layer[new].output.dense.weight,
                           model.text.encoder.layer[old].output.dense.weight)
    del model.text.encoder.layer[1]  # the same model, built by hand
    assert_same(logits(model, inputs), logits(pruned, inputs))


def test_zero_masks_equal_the_physical_cut(model):
    """The soft masks that fade units out, at zero, give exactly the model the cut produces."""
    inputs = random_inputs(model.config)
    kept_heads = {"vision": [torch.tensor([0, 3])] * 3, "text": [torch.tensor([1])] * 3}
    kept_neurons = {"qformer": [torch.arange(0, 128, 3)] * 2, "text": [torch.tensor([5, 9, 60])] * 3}
    kept_cross = [torch.tensor([2])] * 2
    masks = UnitMasks(model)
    for tower, per_block in kept_heads.items():
        for mask, kept in zip(masks.heads[tower], per_block):
            mask.zero_()[kept] = 1
    for tower, per_block in kept_neurons.items():
        for mask, kept in zip(masks.neurons[tower], per_block):
            mask.zero_()[kept] = 1
    for mask, kept in zip(masks.cross_heads, kept_cross):
        mask.zero_()[kept] = 1
    masked = logits(model, inputs)
    masks.remove()
    pruned = shrink_widths(model, kept_heads, kept_neurons, kept_cross)
    assert_same(masked, logits(pruned, inputs))
    assert [b.heads for b in pruned.config.vision.blocks] == [2, 2, 2]
    assert [b.intermediate_size for b in pruned.config.text.blocks] == [3, 3, 3]
    assert pruned.text.encoder.layer[0].attention.self.query.weight.shape == (pruned.config.text.head_dim, 64)
    assert pruned.qformer.encoder.layer[0].crossattention.attention.key.weight.shape[0] == pruned.config.qformer.head_dim
    assert pruned.num_parameters() < model.num_parameters()


def test_hidden_cut_shrinks_every_consumer(model):
    pruned = shrink_hidden(model, {"vision": torch.arange(0, 64, 2), "qformer": torch.arange(24), "text": torch.arange(40)})
    assert pruned.vision.embeddings.patch_embeddings.projection.out_channels == 32
    assert pruned.qformer.encoder.layer[0].crossattention.attention.key.in_features == 32
    assert pruned.query_tokens.shape[-1] == 24 and pruned.projector.weight.shape == (40, 24)
    assert pruned.text.embeddings.word_embeddings.weight.shape == (300, 40)
    assert all(head.in_features == 40 for head in pruned.heads.values())
    assert torch.equal(pruned.text.embeddings.word_embeddings.weight, model.text.embeddings.word_embeddings.weight[:, :40])
    out = pruned(**random_inputs(model.config)).logits
    assert all(torch.isfinite(v).all() for v in out.values())


def test_cut_refuses_a_config_that_does_not_match(model):
    config = preset_config("tiny", 300)
    config.text.hidden_size = 10
    with pytest.raises(RuntimeError, match="config needs"):
        cut(model, config)


def test_top_indices_are_sorted_and_stable():
    assert top_indices(torch.tensor([0.1, 0.9, 0.5, 0.9]), 2).tolist() == [1, 3]
    assert top_indices(torch.tensor([3.0, 1.0, 2.0]), 2).tolist() == [0, 2]
