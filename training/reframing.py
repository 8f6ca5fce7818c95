"""Re-framed pictures: a training picture stretched to another aspect, zoomed, shifted and re-lit, each step anew.

Why: every training ad is drawn on one of a few canvases with its title in one of three places, and the
model reads pictures squashed to a square (models/preprocessing.py). A banner of an unseen aspect, a title in
an unseen corner or at an unseen size then moves every glyph and the photo to where no training picture had
them. On the shifted split (benchmarks/shifted.py) clean ads are rejected about twice as often with their own
pictures as with training-like ones, mostly as image-text mismatch or gambling. Stretching a picture's width
against its height is what another aspect ratio does to a squashed picture; zoom and shift move the title and
the photo. Labels hold: nothing is drawn or cut away that a label reads (the generator leaves a bare border
of the background colour, and the warp repeats the border where it uncovers the canvas's edge).

The pictures are warped in the training process, on the batch's uint8 pictures at the model's own image
size: one affine warp of a batch, about 1% of a `base` training step on the 2-core machine. `Reframing`
draws which rows of a batch are re-framed, so every epoch sees fresh views.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def warp(image_bytes: torch.Tensor, scale_x: torch.Tensor, scale_y: torch.Tensor, shift_x: torch.Tensor,
         shift_y: torch.Tensor, contrast: torch.Tensor, brightness: torch.Tensor) -> torch.Tensor:
    """uint8 (n, 3, h, w) pictures through a per-picture affine warp (scale above 1 shrinks the picture, the
    edge repeated around it; shift in half-sides) and a contrast and brightness change."""
    n = len(image_bytes)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = scale_x, scale_y
    theta[:, :, 2] = torch.stack([shift_x, shift_y], 1)
    images = image_bytes.float() / 255.0
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    images = (images - mean) * contrast.view(n, 1, 1, 1) + mean + brightness.view(n, 1, 1, 1)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


def uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def reframe(image_bytes: torch.Tensor, generator: torch.Generator, aspect: float = 1.6,
            zoom: tuple[float, float] = (0.8, 1.2), shift: float = 0.12, light: float = 0.15) -> torch.Tensor:
    """Each picture's width stretched against its height by up to `aspect` either way (log-uniform), its size
    times 1/`zoom` (below 1 zooms in), moved by up to `shift` of a half-side, its contrast and brightness
    changed by up to `light`."""
    n = len(image_bytes)
    stretch = torch.exp(uniform(n, -math.log(aspect), math.log(aspect), generator)).sqrt()
    scale = uniform(n, *zoom, generator)
    shifts = uniform(n, -shift, shift, generator), uniform(n, -shift, shift, generator)
    return warp(image_bytes, scale * stretch, scale / stretch, *shifts, uniform(n, 1 - light, 1 + light, generator),
                uniform(n, -light / 2, light / 2, generator))


class Reframing:
    """Re-frames a `share` of the pictures of each batch it is given (`reframe`), from its own seeded draws."""

    def __init__(self, share: float, seed: int):
        if not 0 <= share <= 1:
            raise ValueError(f"the share of re-framed pictures must be between 0 and 1, got {share}")
        self.share = share
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, image_bytes: torch.Tensor) -> torch.Tensor:
        chosen = torch.nonzero(torch.rand(len(image_bytes), generator=self.generator) < self.share).flatten()
        if not len(chosen):
            return image_bytes
        pictures = image_bytes.clone()
        pictures[chosen] = reframe(image_bytes[chosen], self.generator)
        return pictures
