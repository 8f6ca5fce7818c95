"""Generator version 2: ads laid out and worded with the variety real ads have, and a shifted split.

Version 1 drew every ad on a 128x128 square with the title centred on a bar at the top or bottom,
one JPEG quality and a narrow set of copy; a model trained on it met nothing else. Here:

* the canvas is a square, portrait or landscape banner, 256-1080 px a side; the title's size and
  position (a bar at the top or bottom, a column beside the photo), the photo's place and the JPEG
  quality and chroma subsampling vary; everything drawn scales with the canvas's short side, and a
  bare border of the background colour is always left (the `background_colour` label reads it);
* the copy (data/phrasing.py) holds prices, discounts, coupons, delivery, origins, specs, seasonal
  offers and several registers, with hard negatives beside each violation's phrasings, and the
  trigger goes in any slot of the template;
* `test_shifted` ads use canvases, title positions and sizes, JPEG qualities, copy templates and
  phrasings that no training ad uses: how far a model's figures fall on them is how much it learnt
  the generator rather than the task.

Labels follow the same rules as version 1 (data/drawing.py `draw_labels`); only the drawing and wording differ.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from .drawing import (_CLUTTER_STICKERS, BACKGROUND_RGB, BORDER, AdPlan, Layout, _draw_logo, _font,
                      _gambling_cluster, _ink, _paste_inside, _photo_loaders, _pick, _sticker, _violation_quota,
                      draw_labels, random_crop)
from .phrasing import PHRASING, TRIGGER_FAMILIES, TRIGGERS, contains_trigger

TEXT_VIOLATIONS = tuple(TRIGGER_FAMILIES)  # the violations the copy may carry (version 1's too)
MIN_CHARS, MAX_CHARS = 6, 40  # 40: the copy, digits split into pieces, stays within 48 tokens

# (width, height) per layout family: squares, portraits (3:4, 9:16, 4:5, 2:3), landscapes and banners
CANVASES = {
    "train": ((256, 256), (400, 400), (512, 512), (800, 800), (1080, 1080), (810, 1080), (608, 1080),
              (1080, 810), (1080, 608), (1080, 360), (640, 320)),
    "shifted": ((300, 300), (640, 640), (960, 960), (720, 900), (480, 720), (360, 640), (1000, 523), (970, 250)),
}
TITLES = {"train": ("top", "bottom", "side-right"), "shifted": ("top-left", "bottom-right", "over-photo", "side-left")}
TITLE_SCALES = {"train": ((0.9, 1.5),), "shifted": ((0.6, 0.85), (1.6, 2.0))}  # times 12 px per 128 px of short side
JPEG_QUALITIES = {"train": (70, 95), "shifted": (45, 65)}
_OFFER_NUMBERS = {"n": (9, 19, 29, 39, 49, 59, 69, 79, 88, 99, 128, 159, 199, 299, 399, 599, 999),
                  "m": (3, 5, 10, 20, 30, 50), "d": (5, 6, 7, 7.5, 8, 8.8, 9, 9.5)}


def plan_varied_ads(splits: list[tuple[str, str, bool]], seed: int, n_shifted: int) -> list[AdPlan]:
    """Version 2 plans: the given (split, violation, picture gambling) ads, then n_shifted `test_shifted`
    ads with their own violation quota, numbered after them."""
    rng = np.random.default_rng([seed, 4])
    quota = _violation_quota(n_shifted) if n_shifted else []
    shifted = [("test_shifted", *quota[i]) for i in rng.permutation(n_shifted)]
    return [_plan_varied(seed, index, *assigned) for index, assigned in enumerate(splits + shifted)]


def _plan_varied(seed: int, index: int, split: str, violation: str, gambling_image: bool) -> AdPlan:
    rng = np.random.default_rng([seed, index, 2])
    phrasing = {"test": "test", "test_shifted": "shifted"}.get(split, "train")
    look = "shifted" if split == "test_shifted" else "train"
    labels, product, photo_industry, clutter = draw_labels(rng, violation)
    low, high = _CLUTTER_STICKERS[clutter]
    text_violation = violation if violation in TEXT_VIOLATIONS and not gambling_image else None
    width, height = _pick(rng, CANVASES[look])
    low_scale, high_scale = _pick(rng, TITLE_SCALES[look])
    layout = Layout(int(width), int(height), _pick(rng, TITLES[look]), float(rng.uniform(low_scale, high_scale)))
    quality = int(rng.integers(JPEG_QUALITIES[look][0], JPEG_QUALITIES[look][1] + 1))
    return AdPlan(
        id=f"ad-{index:06d}", split=split, text=compose_copy(rng, phrasing, product, text_violation),
        labels=labels, product=product, photo_industry=photo_industry, gambling_image=gambling_image,
        n_stickers=int(rng.integers(low, high + 1)), render_seed=(seed, index, 3), layout=layout,
        jpeg=(quality, 2 if look == "shifted" else int(_pick(rng, (0, 2)))),
    )


def compose_copy(rng: np.random.Generator, phrasing: str, product: str, violation: str | None) -> str:
    """Copy for `product` in the named phrasing; with `violation`, one of its triggers fills a random slot
    of the template (the selling point, the offer or the fact)."""
    words = PHRASING[phrasing]
    expected = {violation} if violation else set()
    numbers = {key: _pick(rng, values) for key, values in _OFFER_NUMBERS.items()}
    for _ in range(200):
        template = _pick(rng, words.templates)
        slots = {"s": _pick(rng, words.selling_points), "o": _pick(rng, words.offers).format(**numbers),
                 "f": _pick(rng, words.facts).format(**numbers)}
        free = [k for k in "sof" if "{" + k + "}" in template]
        if violation:
            taken = _pick(rng, free)
            slots[taken] = _pick(rng, TRIGGERS[violation][phrasing])
            free.remove(taken)
        if free and rng.random() < 0.5:
            slots[_pick(rng, free)] = _pick(rng, words.hard_negatives).format(**numbers)
        text = template.format(p=product, cta=_pick(rng, words.calls_to_action), **slots)
        if MIN_CHARS <= len(text) <= MAX_CHARS and contains_trigger(text) == expected:
            return text
    raise RuntimeError(f"no {phrasing} copy for {product!r} with violation {violation!r} fits the rules")


# ---------------------------------------------------------------- drawing


@lru_cache(maxsize=None)
def _full_photo(industry: str) -> Image.Image:
    """The industry's photo at its own resolution (version 1 keeps 256 px; large canvases need more)."""
    return Image.fromarray(_photo_loaders()[industry]()).convert("RGB")


def render_varied(plan: AdPlan) -> Image.Image:
    """Draw a version 2 ad: background, title, photo, stickers, gambling imagery, logo."""
    layout = plan.layout
    rng = np.random.default_rng(plan.render_seed)
    shade = np.add(BACKGROUND_RGB[plan.labels["background_colour"]], rng.integers(-10, 11, size=3))
    background = tuple(int(c) for c in np.clip(shade, 0, 255))
    image = Image.new("RGB", (layout.width, layout.height), background)
    scale, border = layout.scale, max(BORDER, round(BORDER * layout.scale))
    title_box, region = _title_and_photo_regions(image, plan.product, layout, border)
    if layout.title != "over-photo":
        _draw_title(image, plan.product, background, title_box)
    photo_box = _paste_photo(image, rng, plan.photo_industry, region)
    if layout.title == "over-photo":  # a bar across the photo's lower part
        left, top, right, bottom = photo_box
        height = title_box[3] - title_box[1]
        width = title_box[2] - title_box[0]
        x = (left + right - width) // 2
        y = max(border + 1, bottom - height - round(4 * scale))
        _draw_title(image, plan.product, background, (x, y, x + width, y + height))
    for _ in range(plan.n_stickers):
        _paste_inside(image, rng, _sticker(rng, background, scale), border=border)
    if plan.gambling_image:
        room = (layout.width - 2 * border, layout.height - 2 * border)
        _paste_inside(image, rng, _gambling_cluster(rng, room, scale), shadow=True, border=border, scale=scale)
    if plan.labels["logo"] == "present":
        _draw_logo(image, rng, background, border, scale)
    return image


def _title_and_photo_regions(image: Image.Image, title: str, layout: Layout, border: int):
    """(title box, photo region), each (left, top, right, bottom): the title's bar sized to its text, and
    the rest of the canvas inside the border that the photo may take."""
    width, height = image.size
    side = layout.title.startswith("side")
    room = (0.4 * width if side else width) - 2 * border - 2
    size = max(8, round(12 * layout.scale * layout.title_scale))
    while size > 8 and _font(size).getlength(title) + size > room:
        size -= 1
    bar_w, bar_h = math.ceil(_font(size).getlength(title) + size), round(size * 1.4)
    inner = (border, border, width - border, height - border)
    gap = max(2, round(2 * layout.scale))
    if layout.title in ("top", "top-left"):
        left = border + 1 if layout.title == "top-left" else (width - bar_w) // 2
        box = (left, border + 1, left + bar_w, border + 1 + bar_h)
        return box, (inner[0], box[3] + gap, inner[2], inner[3])
    if layout.title in ("bottom", "bottom-right"):
        left = width - border - 1 - bar_w if layout.title == "bottom-right" else (width - bar_w) // 2
        box = (left, height - border - 1 - bar_h, left + bar_w, height - border - 1)
        return box, (inner[0], inner[1], inner[2], box[1] - gap)
    if side:
        column = round(0.4 * width)
        left = width - column + (column - bar_w) // 2 if layout.title == "side-right" else (column - bar_w) // 2
        top = (height - bar_h) // 2
        box = (left, top, left + bar_w, top + bar_h)
        photo = (inner[0], inner[1], width - column, inner[3]) if layout.title == "side-right" else \
            (column, inner[1], inner[2], inner[3])
        return box, photo
    return (0, 0, bar_w, bar_h), inner  # over-photo: placed once the photo is


def _draw_title(image: Image.Image, title: str, background, box) -> None:
    """The product name on a rounded bar of a darker (light backgrounds) or lighter shade of the background."""
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = box
    size = round((bottom - top) / 1.4)
    toward = 0 if _ink(background)[0] < 128 else 255
    bar = tuple(round(0.6 * c + 0.4 * toward) for c in background)
    draw.rounded_rectangle(box, radius=max(2, size // 3), fill=bar)
    draw.text(((left + right) / 2, (top + bottom) / 2), title, font=_font(size), fill=_ink(bar), anchor="mm")


def _paste_photo(image: Image.Image, rng: np.random.Generator, industry: str, region) -> tuple[int, int, int, int]:
    """A random crop of the photo, maybe mirrored, covering 35-58% of the canvas (as the region allows), at
    a random place in the region; returns where it went."""
    photo = random_crop(_full_photo(industry), rng)
    crop_w, crop_h = photo.size
    region_w, region_h = region[2] - region[0], region[3] - region[1]
    area = rng.uniform(0.35, 0.58) * image.width * image.height
    scale = min(math.sqrt(area / (crop_w * crop_h)), region_w / crop_w, region_h / crop_h)
    width, height = max(1, round(crop_w * scale)), max(1, round(crop_h * scale))
    photo = photo.resize((width, height), Image.Resampling.BILINEAR)
    left = region[0] + int(rng.integers(region_w - width + 1))
    top = region[1] + int(rng.integers(region_h - height + 1))
    image.paste(photo, (left, top))
    return left, top, left + width, top + height
