"""Re-framed pictures (training/reframing.py): another aspect, zoom, shift and light, labels unchanged."""

import pytest
import torch

from adaudit.training.reframing import Reframing, reframe
from adaudit.training.teacher import train_teacher

from conftest import quiet


def pictures_with_a_square(n: int = 16, size: int = 64) -> torch.Tensor:
    """Dark grey canvases, each with a white 24-pixel square in the middle."""
    images = torch.full((n, 3, size, size), 40, dtype=torch.uint8)
    images[:, :, 20:44, 20:44] = 255
    return images


def square_aspects(images: torch.Tensor) -> list[float]:
    """Width over height of each picture's bright region."""
    aspects = []
    for image in images:
        bright = image[0] > 150
        rows, columns = bright.any(1).nonzero().flatten(), bright.any(0).nonzero().flatten()
        aspects.append((columns.max() - columns.min() + 1).item() / (rows.max() - rows.min() + 1).item())
    return aspects


def test_reframe_stretches_to_other_aspects_and_keeps_the_border():
    images = pictures_with_a_square()
    out = reframe(images, torch.Generator().manual_seed(0), aspect=2.0, zoom=(1.0, 1.0), shift=0.0, light=0.0)
    assert out.shape == images.shape and out.dtype == torch.uint8
    aspects = square_aspects(out)
    assert min(aspects) < 0.85 and max(aspects) > 1.18  # narrower and wider than the square it was
    assert (out[:, :, 0, 0] == 40).all() and (out[:, :, -1, -1] == 40).all()  # the bare border, repeated
    again = reframe(images, torch.Generator().manual_seed(0), aspect=2.0, zoom=(1.0, 1.0), shift=0.0, light=0.0)
    assert torch.equal(out, again)  # the same draws, the same pictures
    zoomed_out = reframe(images, torch.Generator().manual_seed(1), aspect=1.0, zoom=(1.5, 1.5), shift=0.0, light=0.0)
    assert (zoomed_out > 150).sum() < 0.6 * (images > 150).sum()  # a smaller square on the same canvas


def test_reframing_changes_its_share_of_each_batch():
    images = pictures_with_a_square(n=400)
    assert torch.equal(Reframing(0.0, seed=0)(images), images)
    changed = (Reframing(0.5, seed=0)(images) != images).flatten(1).any(1)
    assert 150 < int(changed.sum()) < 250
    assert (Reframing(1.0, seed=0)(images) != images).flatten(1).any(1).all()
    first, second = Reframing(1.0, seed=0), Reframing(1.0, seed=0)
    assert torch.equal(first(images), second(images))  # seeded: the same run re-frames the same way
    assert not torch.equal(first(images), first(images))  # and every batch afresh
    with pytest.raises(ValueError, match="between 0 and 1"):
        Reframing(1.5, seed=0)


def test_teacher_trains_on_reframed_pictures_and_records_them(dataset, tmp_path):
    messages = []
    torch.manual_seed(0)
    reframed = train_teacher(dataset, tmp_path / "reframed", "tiny", epochs=1, limit=64, reframed=0.5,
                             log=messages.append)
    torch.manual_seed(0)
    plain = train_teacher(dataset, tmp_path / "plain", "tiny", epochs=1, limit=64, log=quiet)
    assert reframed["reframed"] == 0.5 and plain["reframed"] == 0.0
    assert reframed["train_loss"] != plain["train_loss"]  # the same seed and ads: only the pictures differ
    assert any("50% of each batch's pictures re-framed" in message for message in messages)
    ablation = train_teacher(dataset, tmp_path / "text", "tiny", epochs=1, limit=16, reframed=0.5, modality="text",
                             log=quiet)
    assert ablation["reframed"] == 0.0  # grey pictures have nothing to re-frame
    with pytest.raises(ValueError, match="reframed"):
        train_teacher(dataset, tmp_path / "bad", "tiny", epochs=1, limit=16, reframed=2, log=quiet)
