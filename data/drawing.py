"""What every version of the ad generator draws an ad from: the products and their photos, the colours,
the plan of one ad and how its labels are drawn, and the pieces pasted on a canvas (stickers, gambling
imagery, the logo), each at a `scale` of version 1's 128 px sizes.

data/generator.py (version 1, and the data set writer) and data/variety.py (version 2) both build on
it; keeping it apart lets them share it without importing each other. Version 1's ads depend on every
random draw made here in its order: tests/test_generator_variety.py checks they are still the same bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from adaudit.models.labels import TASKS


IMAGE_SIZE = 128
BORDER = 4  # pixels along every edge that nothing but the background touches
APPROVE_SHARE = 0.475
FONT_PATH = Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc")
BACKGROUND_RGB: dict[str, tuple[int, int, int]] = {
    "white": (242, 242, 242),
    "red": (205, 35, 40),
    "yellow": (245, 200, 35),
    "blue": (35, 85, 195),
    "green": (45, 150, 75),
    "black": (25, 25, 25),
}
STICKER_RGB: tuple[tuple[int, int, int], ...] = (
    (255, 40, 150),  # hot pink
    (255, 120, 0),  # orange
    (0, 200, 230),  # cyan
    (170, 0, 255),  # violet
)
_LOGO_RGB = ((25, 35, 110), (0, 120, 120), (130, 40, 150), (250, 250, 250), (150, 90, 20))
_CHIP_RGB = ((200, 30, 30), (30, 70, 190), (20, 130, 60), (30, 30, 30))
_STICKER_WORDS = ("爆款", "限时", "特价", "包邮", "秒杀", "清仓", "5折", "热卖", "抢购", "满减", "新品", "促销")
_BRAND_CHARACTERS = "优品鲜乐美汇星佳禾源恒安"
_CLUTTER_STICKERS = {"none": (0, 0), "light": (1, 2), "heavy": (4, 7)}


def _photo_loaders() -> dict:
    from skimage import data
    from sklearn.datasets import load_sample_image

    return {
        "food_beverage": data.coffee,
        "pets": data.chelsea,
        "vehicles": lambda: data.stereo_motorcycle()[0],
        "toys": data.rocket,
        "education": data.astronaut,
        "home": data.clock,
        "finance": data.coins,
        "electronics": data.camera,
        "travel": lambda: load_sample_image("china.jpg"),
        "flowers": lambda: load_sample_image("flower.jpg"),
    }


PRODUCTS: dict[str, tuple[str, ...]] = {
    "food_beverage": ("咖啡", "拿铁", "挂耳咖啡", "冷萃咖啡", "咖啡豆", "美式咖啡"),
    "pets": ("猫粮", "猫砂", "宠物玩具", "猫抓板", "猫罐头", "逗猫棒"),
    "vehicles": ("摩托车", "电动摩托", "机车头盔", "摩托车配件", "越野机车"),
    "toys": ("火箭模型", "航天拼装玩具", "火箭积木", "太空玩具", "发射台模型"),
    "education": ("航天科普课", "少儿编程课", "宇航员体验营", "科学实验课", "天文兴趣班"),
    "home": ("挂钟", "静音时钟", "北欧挂钟", "复古座钟", "电子闹钟"),
    "finance": ("纪念币", "收藏金币", "古钱币", "硬币收藏册", "银币套装"),
    "electronics": ("相机", "单反镜头", "微单相机", "胶片相机", "相机三脚架"),
    "travel": ("古镇跟团游", "旅游套餐", "古建筑摄影团", "自由行套餐", "寺庙祈福游"),
    "flowers": ("鲜花束", "玫瑰花礼盒", "鲜切花", "花艺礼盒", "同城鲜花速递"),
}


@dataclass(frozen=True)
class Layout:
    """A version 2 canvas: its size, and where and how large its title is."""

    width: int
    height: int
    title: str  # where the title goes (data/variety.py TITLES)
    title_scale: float

    @property
    def scale(self) -> float:
        """What version 1's 128 px sizes are multiplied by."""
        return min(self.width, self.height) / 128


@dataclass(frozen=True)
class AdPlan:
    """Everything decided about one ad before it is drawn."""

    id: str
    split: str
    text: str
    labels: dict[str, str]
    product: str  # the product the copy sells; also the title drawn in the picture
    photo_industry: str  # differs from labels["industry"] only for image_text_mismatch
    gambling_image: bool
    n_stickers: int
    render_seed: tuple[int, ...]
    layout: Layout | None = None  # generator version 2: the canvas and where the title goes (data/variety.py)
    jpeg: tuple[int, int] = (92, 0)  # JPEG quality and chroma subsampling (0: 4:4:4, 2: 4:2:0)


def random_crop(source: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A random crop of 78-100% of each side of a product photo, mirrored half the time: both generators' photos
    (the draws in this order, so generator 1's ads stay what they were)."""
    crop_w, crop_h = (int(side * f) for side, f in zip(source.size, rng.uniform(0.78, 1.0, size=2)))
    x, y = int(rng.integers(source.width - crop_w + 1)), int(rng.integers(source.height - crop_h + 1))
    photo = source.crop((x, y, x + crop_w, y + crop_h))
    return photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else photo


def _pick(rng: np.random.Generator, options: Sequence):
    return options[int(rng.integers(len(options)))]


def _violation_quota(n: int) -> list[tuple[str, bool]]:
    """(violation, gambling drawn in the image) for n ads: 47.5% approved, the rest round-robin."""
    n_approved = round(n * APPROVE_SHARE)
    rejected = TASKS["violation"][1:]
    quota = [("none", False)] * n_approved
    for k in range(n - n_approved):
        violation = rejected[k % len(rejected)]
        quota.append((violation, violation == "gambling" and (k // len(rejected)) % 2 == 1))
    return quota


def draw_labels(rng: np.random.Generator, violation: str) -> tuple[dict[str, str], str, str, str]:
    """(labels, product, photo industry, clutter) of one ad, in the order version 1 draws them."""
    industry = _pick(rng, TASKS["industry"])
    product = _pick(rng, PRODUCTS[industry])
    photo_industry = industry
    if violation == "image_text_mismatch":
        photo_industry = _pick(rng, [other for other in TASKS["industry"] if other != industry])
    clutter = _pick(rng, TASKS["clutter"])
    labels = {
        "verdict": "approve" if violation == "none" else "reject",
        "violation": violation,
        "industry": industry,
        "background_colour": _pick(rng, TASKS["background_colour"]),
        "clutter": clutter,
        "logo": _pick(rng, TASKS["logo"]),
    }
    return labels, product, photo_industry, clutter


@lru_cache(maxsize=None)
def _font(size: int) -> ImageFont.FreeTypeFont:
    if not FONT_PATH.is_file():
        raise FileNotFoundError(f"CJK font {FONT_PATH} is missing; install the fonts-wqy-microhei package")
    return ImageFont.truetype(str(FONT_PATH), size)


def _ink(fill: Sequence[int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on `fill`."""
    luminance = 0.299 * fill[0] + 0.587 * fill[1] + 0.114 * fill[2]
    return (20, 20, 20) if luminance > 140 else (255, 255, 255)


def _contrasting(rng: np.random.Generator, palette, background, minimum: float = 110.0):
    return _pick(rng, [colour for colour in palette if math.dist(colour, background) >= minimum])


def _paste_inside(image: Image.Image, rng: np.random.Generator, tile: Image.Image, shadow: bool = False,
                  border: int = BORDER, scale: float = 1.0) -> None:
    """Alpha-paste an RGBA tile at a random place inside the bare border (`border` px, the shadow `scale`d)."""
    left = border + int(rng.integers(image.width - 2 * border - tile.width + 1))
    top = border + int(rng.integers(image.height - 2 * border - tile.height + 1))
    if shadow:
        dark = Image.new("RGBA", tile.size, (0, 0, 0, 255))
        mask = tile.getchannel("A").point(lambda a: a * 2 // 5)
        offset = min(round(2 * scale), image.width - border - left - tile.width,
                     image.height - border - top - tile.height)
        image.paste(dark, (left + offset, top + offset), mask)
    image.paste(tile, (left, top), tile)


def _rotated(tile: Image.Image, rng: np.random.Generator, degrees: float) -> Image.Image:
    return tile.rotate(float(rng.uniform(-degrees, degrees)), resample=Image.Resampling.BICUBIC, expand=True)


def _sticker(rng: np.random.Generator, background, scale: float = 1.0) -> Image.Image:
    """A clutter badge: a rounded label, a starburst or a round badge with a short promotional word;
    `scale` times version 1's size (generator version 2 draws on larger canvases)."""
    word = _pick(rng, _STICKER_WORDS)
    colour = _contrasting(rng, STICKER_RGB, background)
    font = _font(round(int(rng.integers(10, 13)) * scale))
    text_w = math.ceil(font.getlength(word))
    shape = int(rng.integers(3))
    line = max(1, round(scale))
    if shape == 0:
        size = (text_w + round(8 * scale), font.size + round(8 * scale))
    else:
        side = text_w + round((16 if shape == 1 else 10) * scale)
        size = (side, side)
    tile = Image.new("RGBA", size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(tile)
    box = (0, 0, size[0] - 1, size[1] - 1)
    if shape == 0:
        draw.rounded_rectangle(box, radius=round(3 * scale), fill=colour, outline=(255, 255, 255), width=line)
    elif shape == 1:
        draw.polygon(_starburst(size[0] / 2, spikes=int(rng.integers(9, 13))), fill=colour)
    else:
        draw.ellipse(box, fill=colour, outline=(255, 255, 255), width=line)
    draw.text((size[0] / 2, size[1] / 2), word, font=font, fill=_ink(colour), anchor="mm")
    return _rotated(tile, rng, 25)


def _starburst(radius: float, spikes: int) -> list[tuple[float, float]]:
    points = []
    for k in range(2 * spikes):
        r = radius if k % 2 == 0 else radius * 0.72
        angle = math.pi * k / spikes
        points.append((radius + r * math.cos(angle), radius + r * math.sin(angle)))
    return points


def _gambling_cluster(rng: np.random.Generator, room: tuple[int, int] = (IMAGE_SIZE - 2 * BORDER,) * 2,
                      scale: float = 1.0) -> Image.Image:
    """Two or three big dice, poker chips or playing cards, overlapping like a casino still life, within `room`."""
    makers = {"dice": (_die, _die), "chips": (_chip, _chip, _chip), "cards": (_card, _card),
              "mixed": (_card, _die, _chip)}
    items = [_rotated(make(rng, scale), rng, 30) for make in makers[_pick(rng, tuple(makers))]]
    canvas = Image.new("RGBA", room, (0, 0, 0, 0))
    x = 0
    for item in items:
        canvas.alpha_composite(item, (x, int(rng.integers(0, round(10 * scale)))))
        x += int(item.width * rng.uniform(0.55, 0.75))
    return canvas.crop(canvas.getbbox())


_PIPS = {1: [(1, 1)], 2: [(0, 0), (2, 2)], 3: [(0, 0), (1, 1), (2, 2)], 4: [(0, 0), (0, 2), (2, 0), (2, 2)],
         5: [(0, 0), (0, 2), (1, 1), (2, 0), (2, 2)], 6: [(0, 0), (0, 1), (0, 2), (2, 0), (2, 1), (2, 2)]}


def _die(rng: np.random.Generator, scale: float = 1.0) -> Image.Image:
    """A white die; as on Chinese dice, the pips of 1 and 4 are red."""
    size = round(int(rng.integers(26, 33)) * scale)
    tile = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(tile)
    draw.rounded_rectangle((0, 0, size - 1, size - 1), radius=size // 5, fill=(250, 250, 250),
                           outline=(70, 70, 70), width=max(2, round(2 * scale)))
    value = int(rng.integers(1, 7))
    colour = (210, 20, 30) if value in (1, 4) else (20, 20, 20)
    radius = size * (0.15 if value == 1 else 0.09)
    for row, col in _PIPS[value]:
        cx, cy = size * (0.25 + 0.25 * col), size * (0.25 + 0.25 * row)
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=colour)
    return tile


def _chip(rng: np.random.Generator, scale: float = 1.0) -> Image.Image:
    """A poker chip: a coloured disc with white edge marks and an inner ring."""
    size = round(int(rng.integers(28, 35)) * scale)
    colour = _pick(rng, _CHIP_RGB)
    tile = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(tile)
    box = (0, 0, size - 1, size - 1)
    draw.ellipse(box, fill=colour, outline=(30, 30, 30))
    for k in range(8):
        draw.pieslice(box, k * 45 - 8, k * 45 + 8, fill=(250, 250, 250))
    inset = size * 0.2
    draw.ellipse((inset, inset, size - 1 - inset, size - 1 - inset), fill=colour, outline=(250, 250, 250),
                 width=max(2, round(2 * scale)))
    return tile


def _card(rng: np.random.Generator, scale: float = 1.0) -> Image.Image:
    """A playing card: rank in the corner, a big suit in the middle."""
    width = round(int(rng.integers(24, 29)) * scale)
    height = round(width * 1.4)
    suit = _pick(rng, "♠♥♦♣")
    colour = (200, 20, 30) if suit in "♥♦" else (20, 20, 20)
    tile = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(tile)
    draw.rounded_rectangle((0, 0, width - 1, height - 1), radius=round(3 * scale), fill=(250, 250, 250),
                           outline=(90, 90, 90))
    draw.text((round(3 * scale), round(scale)), _pick(rng, "AKQJ"), font=_font(round(10 * scale)), fill=colour)
    draw.text((width / 2, height / 2 + 2), suit, font=_font(round(height * 0.5)), fill=colour, anchor="mm")
    return tile


def _draw_logo(image: Image.Image, rng: np.random.Generator, background, border: int = BORDER,
               scale: float = 1.0) -> None:
    """A brand mark in a random corner: a circle or rounded square holding one character."""
    size = round(int(rng.integers(18, 25)) * scale)
    corner = int(rng.integers(4))
    left = border + 1 if corner % 2 == 0 else image.width - border - 1 - size
    top = border + 1 if corner < 2 else image.height - border - 1 - size
    colour = _contrasting(rng, _LOGO_RGB, background, minimum=120.0)
    box = (left, top, left + size - 1, top + size - 1)
    draw = ImageDraw.Draw(image)
    if rng.random() < 0.5:
        draw.ellipse(box, fill=colour, outline=_ink(colour), width=max(1, round(scale)))
    else:
        draw.rounded_rectangle(box, radius=size // 4, fill=colour, outline=_ink(colour), width=max(1, round(scale)))
    character = _pick(rng, _BRAND_CHARACTERS)
    draw.text((left + size / 2, top + size / 2), character, font=_font(round(size * 0.62)),
              fill=_ink(colour), anchor="mm")
