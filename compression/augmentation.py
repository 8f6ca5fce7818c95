"""More to learn from the same distillation ads: augmented views the teacher labels once.

A small student fed the same 2,000 ads for many epochs memorises them (its training loss keeps
falling while test accuracy stops rising). "A good teacher is patient and consistent" (Beyer et
al., CVPR 2022) fixes that by showing teacher and student the *same* augmented input, so the
teacher's soft labels stay exact for every view. Here the views are made once, the teacher
runs over them once (its outputs are cached like the originals'), and every stage distils on
originals + views. Two kinds of view, both built only from the distillation ads themselves:

- jittered: the ad's picture zoomed, shifted and re-lit a little (a random affine warp plus
  brightness and contrast), its copy unchanged. Labels still hold.
- recombined: the ad's copy paired with *another* distillation ad's (jittered) picture. Most
  such pairs are image-text mismatches, the cross-modal skill a pruned student loses first; only
  the teacher's soft labels say what each pair is, so these rows are `labelled=False` and get no
  cross-entropy on labels.

`view_plan` fixes, per view row, which ad gives the copy and which the picture; `apply_plan`
builds the rows for any tokenisation of the same ads, so the teacher (its own vocabulary) and a
student with a pruned vocabulary see exactly the same views. `make_views` does both for a recipe
and caches the teacher's outputs on the views (`Views`), on disk too when given the teacher's outputs folder
(teacher_outputs.py: keyed by the teacher, the data and the views' seed and settings; the plan itself is
cheap and made again every run).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from adaudit.data.encoding import EncodedSplit
from adaudit.models.modeling import AuditModel
from adaudit.training.reframing import uniform, warp

from .distillation import TeacherCache, cache_teacher
from .recipe import Recipe
from .teacher_outputs import TeacherOutputs


@dataclass
class ViewPlan:
    text_source: torch.Tensor  # (views * n,) which ad gives the copy (and the labels)
    image_source: torch.Tensor  # (views * n,) which ad gives the picture
    image_bytes: torch.Tensor  # uint8 (views * n, 3, size, size): the jittered pictures

    @property
    def labelled(self) -> torch.Tensor:
        return self.text_source == self.image_source


def jitter(image_bytes: torch.Tensor, generator: torch.Generator, zoom: float = 0.15, shift: float = 0.08,
           light: float = 0.15) -> torch.Tensor:
    """Random zoom-in (up to `zoom`), shift (fraction of the side), brightness and contrast, per image: the
    aspect kept (training/reframing.py's `reframe` also changes it, for teacher training)."""
    n = len(image_bytes)
    scale = uniform(n, 1 - zoom, 1.0, generator)
    shift_x, shift_y = uniform(n, -shift, shift, generator), uniform(n, -shift, shift, generator)
    contrast, brightness = uniform(n, 1 - light, 1 + light, generator), uniform(n, -light / 2, light / 2, generator)
    return warp(image_bytes, scale, scale, shift_x, shift_y, contrast, brightness)


def view_plan(split: EncodedSplit, views: int, recombined_fraction: float, seed: int) -> ViewPlan:
    """`views` extra rows per ad; in each, a `recombined_fraction` of the ads take another ad's picture."""
    generator = torch.Generator().manual_seed(seed)
    n = len(split)
    text_sources, image_sources, images = [], [], []
    for _ in range(views):
        text_source = torch.arange(n)
        image_source = text_source.clone()
        recombined = torch.rand(n, generator=generator) < recombined_fraction
        if recombined.any():
            others = torch.randint(1, max(n, 2), (n,), generator=generator)  # never the ad itself
            image_source[recombined] = (text_source[recombined] + others[recombined]) % n
        text_sources.append(text_source)
        image_sources.append(image_source)
        images.append(jitter(split.image_bytes[image_source], generator))
    if not views:
        empty = torch.zeros(0, dtype=torch.long)
        return ViewPlan(empty, empty, split.image_bytes[:0])
    return ViewPlan(torch.cat(text_sources), torch.cat(image_sources), torch.cat(images))


def apply_plan(split: EncodedSplit, plan: ViewPlan) -> EncodedSplit:
    """`split` followed by the plan's view rows, the copy (token ids) taken from `split` itself."""
    source = plan.text_source
    ids = [f"{split.ids[t]}~{split.ids[i]}" for t, i in zip(source.tolist(), plan.image_source.tolist())]
    return split.joined(EncodedSplit(ids, plan.image_bytes, split.input_ids[source], split.attention_mask[source],
                                     split.labels[source], split.tasks))


@dataclass
class Views:
    plan: ViewPlan
    cache: TeacherCache  # the teacher's outputs on the view rows alone

    def extend(self, train: EncodedSplit, cache: TeacherCache) -> tuple[EncodedSplit, TeacherCache]:
        """The ads (as some model tokenises them) followed by their views, with the teacher's outputs on all."""
        return apply_plan(train, self.plan), cache.concat(self.cache)


def make_views(teacher: AuditModel, train: EncodedSplit, recipe: Recipe, log,
               outputs: TeacherOutputs | None = None) -> Views | None:
    """Augmented views of the distillation ads (not of the held-out ones), labelled by the teacher once; with
    `outputs`, its labels are read from disk when an earlier run of the same teacher, data and views made them."""
    settings = recipe.distillation
    if not settings.views:
        return None
    kept = train.subset(torch.arange(len(train) - settings.held_out_count(len(train))))
    plan = view_plan(kept, settings.views, settings.recombined_fraction, recipe.seed)
    rows = torch.arange(len(kept), len(kept) + len(plan.text_source))

    def label(share: slice = slice(None)) -> TeacherCache:  # the views `share` (this rank's, under torchrun)
        return cache_teacher(teacher, apply_plan(kept, plan).subset(rows[share]), labelled=plan.labelled[share])

    if outputs is None:
        cache = label()
    else:
        key = {"seed": recipe.seed, "ads": len(train), "kept": len(kept), "views": settings.views,
               "recombined_fraction": settings.recombined_fraction,
               # the rows' copy: distillation ads with real-copy rows among them make other views
               "copy": hashlib.sha256(kept.input_ids.numpy().tobytes()).hexdigest()[:16]}
        cache = TeacherCache.from_tensors(
            outputs.get("views", key, lambda share: (label(share).tensors(), {}), rows=len(rows))[0])
    log(f"  {len(rows)} augmented views of {len(kept)} distillation ads ({int((~plan.labelled).sum())} recombined)")
    return Views(plan, cache)
