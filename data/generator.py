"""A deterministic generator of MAAD-like synthetic ads (MAAD itself was never released).

Every ad is a 128x128 RGB JPEG plus a line of Chinese ad copy, labelled for the six tasks
of `adaudit.models.labels.TASKS`. What each label means and how it is drawn:

* `background_colour`: the solid colour the product is shot on (a slightly jittered shade
  of white, red, yellow, blue, green or black). A 4-pixel border is always left bare, so
  the colour can be read off the edge of the image.
* `industry`: the industry of the product the *copy* advertises. Each industry has one real
  photo shipped with scikit-image / scikit-learn (coffee, a cat, a motorcycle, ...) and a few
  Chinese product names. The photo is cropped, maybe mirrored, scaled to 35-58% of the image
  and placed at random, so a model has to recognise it rather than memorise pixels.
* `logo`: "present" draws a brand mark (a filled circle or rounded square holding one
  Chinese character, 18-24 px) in a corner, on top of everything else.
* `clutter` (牛皮癣): the number of bright badges and starbursts with words like 爆款 or
  包邮 pasted over the ad, the photo included: none 0, light 1-2, heavy 4-7.
* `violation` and `verdict`: verdict is "reject" exactly when violation is not "none".
  About 47.5% of ads are approved; the rest are spread evenly over the seven violations.
  Six are carried by the copy, which then contains a trigger phrase of that category
  (exaggeration, medical_claim, financial_promise, gambling, vulgar, prohibited_goods).
  Half of the gambling ads instead have clean copy and dice, poker chips or playing cards
  drawn large in the picture. image_text_mismatch ads have clean copy selling industry A
  over the photo of another industry B, so only a model that reads both can catch them.
  Approved ads have clean copy, the matching photo and no gambling imagery.

The picture also carries a title bar with the product name the copy sells.

Copy is 12-40 characters, built from templates, selling points, prices and calls to
action. The test split is held out: it has its own templates, and its selling points,
prices and calls to action are phrases never used in training (mostly new combinations of
familiar words, e.g. 品质保障 + 质量过硬 -> 品质过硬, so a model trained from scratch meets few
unseen characters); half of its trigger phrases are combinations never seen in training. Trigger phrases are compositional (a head times a tail, e.g. 全网 x 最低价);
about 28% of the combinations are test-only, chosen so that every head and every tail
still occurs in training, which keeps the categories learnable. Each category also has
marker substrings (最, 治, 赚, 赌, ...) that clean copy never contains.

All randomness comes from numpy Generators seeded with (seed, ad index), so the same seed
gives byte-identical files, and the dataset folder is written atomically.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from adaudit.core.files import atomic_folder
from adaudit.models.labels import TASKS

IMAGE_SIZE = 128
BORDER = 4  # pixels along every edge that nothing but the background touches
JPEG_QUALITY = 92
_TITLE_HEIGHT = 16
MIN_TEXT_CHARS = 12
MAX_TEXT_CHARS = 40
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
class CopyVocabulary:
    """The phrasing of one split. {p} product, {s} selling point or trigger, {t} second selling point."""

    templates: tuple[str, ...]
    selling_points: tuple[str, ...]
    prices: tuple[str, ...]  # {n} is the amount
    calls_to_action: tuple[str, ...]


COPY: dict[str, CopyVocabulary] = {
    "train": CopyVocabulary(
        templates=(
            "{p}，{s}，{price}，{cta}", "【{p}】{s}，{cta}", "{s}的{p}，{price}", "新品{p}上市！{s}，{t}",
            "{p}限时特惠：{s}，{price}", "买{p}就选我们，{s}，{cta}", "{cta}！{p}{s}，{price}",
            "{p}｜{s}｜{t}", "今日推荐：{p}，{s}", "{p}热卖中，{s}，{price}，{cta}",
            "好物分享｜{p}，{s}，{t}", "{p}，{t}，{s}", "店长推荐{p}，{s}，{cta}", "{p}到货啦，{s}，{price}",
            "想要{p}？{s}，{cta}", "{p}官方旗舰店，{s}，{t}",
        ),
        selling_points=(
            "品质保障", "做工精细", "颜值超高", "送礼佳选", "好评如潮", "售后无忧", "包邮到家", "现货速发",
            "经典款式", "性价比高", "口碑之选", "用心设计", "精选材料", "简约大方", "轻松上手", "家人都爱",
            "送货上门", "实用耐看", "质量过硬", "款式新颖",
        ),
        prices=("仅需{n}元", "到手价{n}元", "{n}元起", "低至{n}元"),
        calls_to_action=("立即抢购", "点击购买", "快来下单", "马上咨询", "赶紧收藏", "欢迎到店"),
    ),
    # Held out: new templates and new combinations of (mostly) familiar words.
    "test": CopyVocabulary(
        templates=(
            "{p}到店啦，{s}，{price}", "《{p}》{s}，{t}，{cta}", "{s}！{p}{price}", "推荐{p}，{s}，欢迎选购",
            "{p}：{s}；{t}", "{price}就能买到{p}，{s}", "为你精选{p}，{s}，{cta}", "{p}上新，{t}，{s}",
            "这款{p}，{s}，{price}", "{cta}→{p}，{s}", "周末好物：{p}，{s}，{t}", "{p}开售，{s}，{cta}",
            "{p}/{s}/{price}", "大家都说{p}好，{s}",
        ),
        selling_points=(
            "品质过硬", "售后保障", "现货包邮", "设计简约", "颜值在线", "家人好评", "大方实用", "做工考究",
            "送礼实用", "质量保障", "经典耐看", "上手轻松",
        ),
        prices=("到手仅{n}元", "只需{n}元", "{n}元到手"),
        calls_to_action=("立即购买", "快来抢购", "点击咨询", "马上下单", "欢迎收藏"),
    ),
}
_PRICE_AMOUNTS = (9, 19, 29, 39, 49, 59, 69, 79, 88, 99, 128, 159, 199, 299, 399, 599, 999)

# Trigger phrases: per category, families of heads x tails; every combination is a phrase.
_TRIGGER_FAMILIES: dict[str, tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]] = {
    "exaggeration": (
        (("全网", "全国", "行业", "史上", "全球", "同类"), ("最低价", "第一", "最好", "最强", "顶级", "最畅销")),
        (("国家级", "世界级", "宇宙级", "顶尖级"), ("品质", "配方", "工艺", "口碑")),
        (("100%", "百分百", "保准"), ("有效", "见效", "满意", "安全")),
    ),
    "medical_claim": (
        (("治愈", "根治", "专治", "包治", "逆转", "三天治好"), ("高血压", "糖尿病", "癌症", "失眠", "脱发", "关节炎", "胃病")),
        (("降", "稳", "调节"), ("血压", "血糖", "血脂", "尿酸")),
    ),
    "financial_promise": (
        (("保本保息", "稳赚不赔", "零风险", "躺着赚钱", "无风险"), ("年化收益15%", "月入过万", "日赚千元", "收益翻倍", "一年回本")),
    ),
    "gambling": (
        (("真人", "澳门", "网上", "高赔率"), ("百家乐", "博彩", "下注", "赌场", "押注", "老虎机")),
    ),
    "vulgar": (
        (("性感", "寂寞", "深夜", "火辣", "今晚"), ("撩人", "难耐", "福利", "约吗", "诱惑")),
    ),
    "prohibited_goods": (
        (("另售", "代购", "低价出", "私信购买", "顺带出"), ("电子烟", "仿真枪", "管制刀具", "处方药", "窃听器", "针孔摄像头")),
    ),
}
# Substrings that mark a category: every trigger phrase of it contains one, clean copy none.
MARKERS: dict[str, tuple[str, ...]] = {
    "exaggeration": ("最", "第一", "顶级", "国家级", "世界级", "宇宙级", "顶尖", "100%", "百分百", "保准"),
    "medical_claim": ("治", "逆转", "癌", "血压", "血糖", "血脂", "尿酸", "失眠", "脱发", "关节炎", "胃病"),
    "financial_promise": ("保本", "赚", "风险", "收益", "月入", "回本"),
    "gambling": ("百家乐", "博彩", "下注", "赌", "押注", "老虎机", "赔率", "澳门"),
    "vulgar": ("性感", "寂寞", "深夜", "火辣", "撩", "难耐", "福利", "约吗", "诱惑"),
    "prohibited_goods": ("电子烟", "仿真枪", "管制刀具", "处方药", "窃听器", "针孔摄像头"),
}
TEXT_VIOLATIONS = tuple(_TRIGGER_FAMILIES)


def _split_triggers(families) -> dict[str, tuple[str, ...]]:
    """Head i x tail j is test-only when (i + 2j) % 7 < 2: about 28%, every head and tail kept in train."""
    splits: dict[str, list[str]] = {"train": [], "test_only": []}
    for heads, tails in families:
        for i, head in enumerate(heads):
            for j, tail in enumerate(tails):
                splits["test_only" if (i + 2 * j) % 7 < 2 else "train"].append(head + tail)
    return {split: tuple(phrases) for split, phrases in splits.items()}


TRIGGERS: dict[str, dict[str, tuple[str, ...]]] = {
    category: _split_triggers(families) for category, families in _TRIGGER_FAMILIES.items()
}


def categories_in(text: str) -> set[str]:
    """The text-violation categories whose markers occur in `text`."""
    return {category for category, markers in MARKERS.items() if any(m in text for m in markers)}


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
    render_seed: tuple[int, int, int]


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


def plan_ads(n: int, seed: int = 0, test_fraction: float = 0.2, validation_fraction: float = 0.0) -> list[AdPlan]:
    """The labels, copy and drawing seed of ads ad-000000 .. ad-{n-1}; test gets round(n * test_fraction),
    validation round(n * validation_fraction) of the others.

    The validation ads are drawn from the training distribution (the training templates and
    phrases): they are what choices (recipes, thresholds, epochs) are made on, so they must not
    carry the test split's held-out phrasing. Drawn after the test split, from their own stream, so
    a seed's test split and every ad's content are the same whatever the validation fraction."""
    n_test, n_validation = round(n * test_fraction), round(n * validation_fraction)
    if not 0 < n_test < n - n_validation or n_validation < 0:
        raise ValueError(f"n={n}, test_fraction={test_fraction} and validation_fraction={validation_fraction} "
                         "leave an empty train or test split")
    rng = np.random.default_rng(seed)
    quota = _violation_quota(n)
    quota = [quota[i] for i in rng.permutation(n)]
    test_indices = set(rng.permutation(n)[:n_test].tolist())
    others = [i for i in np.random.default_rng([seed, 2]).permutation(n).tolist() if i not in test_indices]
    validation_indices = set(others[:n_validation])
    return [_plan_ad(seed, i, "test" if i in test_indices else "validation" if i in validation_indices else "train",
                     *quota[i]) for i in range(n)]


def _plan_ad(seed: int, index: int, split: str, violation: str, gambling_image: bool) -> AdPlan:
    rng = np.random.default_rng([seed, index, 0])
    phrasing = "test" if split == "test" else "train"  # validation ads are worded as training ads are
    industry = _pick(rng, TASKS["industry"])
    product = _pick(rng, PRODUCTS[industry])
    photo_industry = industry
    if violation == "image_text_mismatch":
        photo_industry = _pick(rng, [other for other in TASKS["industry"] if other != industry])
    clutter = _pick(rng, TASKS["clutter"])
    low, high = _CLUTTER_STICKERS[clutter]
    text_violation = violation if violation in TEXT_VIOLATIONS and not gambling_image else None
    labels = {
        "verdict": "approve" if violation == "none" else "reject",
        "violation": violation,
        "industry": industry,
        "background_colour": _pick(rng, TASKS["background_colour"]),
        "clutter": clutter,
        "logo": _pick(rng, TASKS["logo"]),
    }
    return AdPlan(
        id=f"ad-{index:06d}",
        split=split,
        text=_compose_text(rng, phrasing, product, text_violation),
        labels=labels,
        product=product,
        photo_industry=photo_industry,
        gambling_image=gambling_image,
        n_stickers=int(rng.integers(low, high + 1)),
        render_seed=(seed, index, 1),
    )


def _compose_text(rng: np.random.Generator, split: str, product: str, violation: str | None) -> str:
    """Copy for `product` from the split's vocabulary; with `violation`, a trigger takes the {s} slot."""
    vocabulary = COPY[split]
    expected = {violation} if violation else set()
    for _ in range(100):
        first, second = rng.choice(len(vocabulary.selling_points), size=2, replace=False)
        text = _pick(rng, vocabulary.templates).format(
            p=product,
            s=_pick_trigger(rng, violation, split) if violation else vocabulary.selling_points[first],
            t=vocabulary.selling_points[second],
            price=_pick(rng, vocabulary.prices).format(n=_pick(rng, _PRICE_AMOUNTS)),
            cta=_pick(rng, vocabulary.calls_to_action),
        )
        if MIN_TEXT_CHARS <= len(text) <= MAX_TEXT_CHARS and categories_in(text) == expected:
            return text
    raise RuntimeError(f"no {split} copy for {product!r} with violation {violation!r} fits the rules")


def _pick_trigger(rng: np.random.Generator, category: str, split: str) -> str:
    pool = TRIGGERS[category]["train"]
    if split == "test" and rng.random() < 0.5:
        pool = TRIGGERS[category]["test_only"]
    return _pick(rng, pool)


# ---------------------------------------------------------------- drawing


@lru_cache(maxsize=None)
def _photo(industry: str) -> Image.Image:
    """The industry's photo as RGB, long side 256 px."""
    array = _photo_loaders()[industry]()
    image = Image.fromarray(array).convert("RGB")
    image.thumbnail((256, 256), Image.Resampling.LANCZOS)
    return image


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


def render_ad(plan: AdPlan) -> Image.Image:
    """Draw the ad: background, title bar, product photo, stickers, gambling imagery, logo."""
    rng = np.random.default_rng(plan.render_seed)
    shade = np.add(BACKGROUND_RGB[plan.labels["background_colour"]], rng.integers(-10, 11, size=3))
    background = tuple(int(c) for c in np.clip(shade, 0, 255))
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), background)
    title_on_top = bool(rng.random() < 0.5)
    _draw_title(image, plan.product, background, title_on_top)
    _paste_photo(image, rng, plan.photo_industry, title_on_top)
    for _ in range(plan.n_stickers):
        _paste_inside(image, rng, _sticker(rng, background))
    if plan.gambling_image:
        _paste_inside(image, rng, _gambling_cluster(rng), shadow=True)
    if plan.labels["logo"] == "present":
        _draw_logo(image, rng, background)
    return image


def _draw_title(image: Image.Image, title: str, background, on_top: bool) -> None:
    """The product name on a bar of a darker (light backgrounds) or lighter shade of the background."""
    draw = ImageDraw.Draw(image)
    font = _font(12)
    width = draw.textlength(title, font=font) + 10
    left = (IMAGE_SIZE - width) / 2
    top = BORDER + 1 if on_top else IMAGE_SIZE - BORDER - 1 - _TITLE_HEIGHT
    toward = 0 if _ink(background)[0] < 128 else 255
    bar = tuple(round(0.6 * c + 0.4 * toward) for c in background)
    draw.rounded_rectangle((left, top, left + width, top + _TITLE_HEIGHT), radius=4, fill=bar)
    draw.text((IMAGE_SIZE / 2, top + _TITLE_HEIGHT / 2), title, font=font, fill=_ink(bar), anchor="mm")


def _paste_photo(image: Image.Image, rng: np.random.Generator, industry: str, title_on_top: bool) -> None:
    """A random crop of the photo, maybe mirrored, covering 35-58% of the image, clear of the title bar."""
    source = _photo(industry)
    crop_w, crop_h = (int(side * f) for side, f in zip(source.size, rng.uniform(0.78, 1.0, size=2)))
    x, y = int(rng.integers(source.width - crop_w + 1)), int(rng.integers(source.height - crop_h + 1))
    photo = source.crop((x, y, x + crop_w, y + crop_h))
    if rng.random() < 0.5:
        photo = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    region_w = IMAGE_SIZE - 2 * BORDER
    region_h = region_w - _TITLE_HEIGHT - 2
    region_top = BORDER + _TITLE_HEIGHT + 2 if title_on_top else BORDER
    area = rng.uniform(0.35, 0.58) * IMAGE_SIZE**2
    scale = min(math.sqrt(area / (crop_w * crop_h)), region_w / crop_w, region_h / crop_h)
    width, height = round(crop_w * scale), round(crop_h * scale)
    photo = photo.resize((width, height), Image.Resampling.BILINEAR)
    left = BORDER + int(rng.integers(region_w - width + 1))
    top = region_top + int(rng.integers(region_h - height + 1))
    image.paste(photo, (left, top))


def _paste_inside(image: Image.Image, rng: np.random.Generator, tile: Image.Image, shadow: bool = False) -> None:
    """Alpha-paste an RGBA tile at a random place inside the bare border."""
    room = IMAGE_SIZE - 2 * BORDER
    left = BORDER + int(rng.integers(room - tile.width + 1))
    top = BORDER + int(rng.integers(room - tile.height + 1))
    if shadow:
        dark = Image.new("RGBA", tile.size, (0, 0, 0, 255))
        mask = tile.getchannel("A").point(lambda a: a * 2 // 5)
        offset = min(2, IMAGE_SIZE - BORDER - left - tile.width, IMAGE_SIZE - BORDER - top - tile.height)
        image.paste(dark, (left + offset, top + offset), mask)
    image.paste(tile, (left, top), tile)


def _rotated(tile: Image.Image, rng: np.random.Generator, degrees: float) -> Image.Image:
    return tile.rotate(float(rng.uniform(-degrees, degrees)), resample=Image.Resampling.BICUBIC, expand=True)


def _sticker(rng: np.random.Generator, background) -> Image.Image:
    """A clutter badge: a rounded label, a starburst or a round badge with a short promotional word."""
    word = _pick(rng, _STICKER_WORDS)
    colour = _contrasting(rng, STICKER_RGB, background)
    font = _font(int(rng.integers(10, 13)))
    text_w = math.ceil(font.getlength(word))
    shape = int(rng.integers(3))
    if shape == 0:
        size = (text_w + 8, font.size + 8)
    else:
        side = text_w + (16 if shape == 1 else 10)
        size = (side, side)
    tile = Image.new("RGBA", size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(tile)
    box = (0, 0, size[0] - 1, size[1] - 1)
    if shape == 0:
        draw.rounded_rectangle(box, radius=3, fill=colour, outline=(255, 255, 255), width=1)
    elif shape == 1:
        draw.polygon(_starburst(size[0] / 2, spikes=int(rng.integers(9, 13))), fill=colour)
    else:
        draw.ellipse(box, fill=colour, outline=(255, 255, 255), width=1)
    draw.text((size[0] / 2, size[1] / 2), word, font=font, fill=_ink(colour), anchor="mm")
    return _rotated(tile, rng, 25)


def _starburst(radius: float, spikes: int) -> list[tuple[float, float]]:
    points = []
    for k in range(2 * spikes):
        r = radius if k % 2 == 0 else radius * 0.72
        angle = math.pi * k / spikes
        points.append((radius + r * math.cos(angle), radius + r * math.sin(angle)))
    return points


def _gambling_cluster(rng: np.random.Generator) -> Image.Image:
    """Two or three big dice, poker chips or playing cards, overlapping like a casino still life."""
    makers = {"dice": (_die, _die), "chips": (_chip, _chip, _chip), "cards": (_card, _card),
              "mixed": (_card, _die, _chip)}
    items = [_rotated(make(rng), rng, 30) for make in makers[_pick(rng, tuple(makers))]]
    canvas = Image.new("RGBA", (IMAGE_SIZE - 2 * BORDER, IMAGE_SIZE - 2 * BORDER), (0, 0, 0, 0))
    x = 0
    for item in items:
        canvas.alpha_composite(item, (x, int(rng.integers(0, 10))))
        x += int(item.width * rng.uniform(0.55, 0.75))
    return canvas.crop(canvas.getbbox())


_PIPS = {1: [(1, 1)], 2: [(0, 0), (2, 2)], 3: [(0, 0), (1, 1), (2, 2)], 4: [(0, 0), (0, 2), (2, 0), (2, 2)],
         5: [(0, 0), (0, 2), (1, 1), (2, 0), (2, 2)], 6: [(0, 0), (0, 1), (0, 2), (2, 0), (2, 1), (2, 2)]}


def _die(rng: np.random.Generator) -> Image.Image:
    """A white die; as on Chinese dice, the pips of 1 and 4 are red."""
    size = int(rng.integers(26, 33))
    tile = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(tile)
    draw.rounded_rectangle((0, 0, size - 1, size - 1), radius=size // 5, fill=(250, 250, 250),
                           outline=(70, 70, 70), width=2)
    value = int(rng.integers(1, 7))
    colour = (210, 20, 30) if value in (1, 4) else (20, 20, 20)
    radius = size * (0.15 if value == 1 else 0.09)
    for row, col in _PIPS[value]:
        cx, cy = size * (0.25 + 0.25 * col), size * (0.25 + 0.25 * row)
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=colour)
    return tile


def _chip(rng: np.random.Generator) -> Image.Image:
    """A poker chip: a coloured disc with white edge marks and an inner ring."""
    size = int(rng.integers(28, 35))
    colour = _pick(rng, _CHIP_RGB)
    tile = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(tile)
    box = (0, 0, size - 1, size - 1)
    draw.ellipse(box, fill=colour, outline=(30, 30, 30))
    for k in range(8):
        draw.pieslice(box, k * 45 - 8, k * 45 + 8, fill=(250, 250, 250))
    inset = size * 0.2
    draw.ellipse((inset, inset, size - 1 - inset, size - 1 - inset), fill=colour, outline=(250, 250, 250), width=2)
    return tile


def _card(rng: np.random.Generator) -> Image.Image:
    """A playing card: rank in the corner, a big suit in the middle."""
    width = int(rng.integers(24, 29))
    height = round(width * 1.4)
    suit = _pick(rng, "♠♥♦♣")
    colour = (200, 20, 30) if suit in "♥♦" else (20, 20, 20)
    tile = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(tile)
    draw.rounded_rectangle((0, 0, width - 1, height - 1), radius=3, fill=(250, 250, 250), outline=(90, 90, 90))
    draw.text((3, 1), _pick(rng, "AKQJ"), font=_font(10), fill=colour)
    draw.text((width / 2, height / 2 + 2), suit, font=_font(round(height * 0.5)), fill=colour, anchor="mm")
    return tile


def _draw_logo(image: Image.Image, rng: np.random.Generator, background) -> None:
    """A brand mark in a random corner: a circle or rounded square holding one character."""
    size = int(rng.integers(18, 25))
    corner = int(rng.integers(4))
    left = BORDER + 1 if corner % 2 == 0 else IMAGE_SIZE - BORDER - 1 - size
    top = BORDER + 1 if corner < 2 else IMAGE_SIZE - BORDER - 1 - size
    colour = _contrasting(rng, _LOGO_RGB, background, minimum=120.0)
    box = (left, top, left + size - 1, top + size - 1)
    draw = ImageDraw.Draw(image)
    if rng.random() < 0.5:
        draw.ellipse(box, fill=colour, outline=_ink(colour), width=1)
    else:
        draw.rounded_rectangle(box, radius=size // 4, fill=colour, outline=_ink(colour), width=1)
    character = _pick(rng, _BRAND_CHARACTERS)
    draw.text((left + size / 2, top + size / 2), character, font=_font(round(size * 0.62)),
              fill=_ink(colour), anchor="mm")


# ---------------------------------------------------------------- writing


def _record(plan: AdPlan) -> dict:
    return {"id": plan.id, "image": f"images/{plan.id}.jpg", "text": plan.text, "labels": plan.labels}


def make_dataset(out_dir: Path, n: int = 6000, seed: int = 0, test_fraction: float = 0.2,
                 validation_fraction: float = 0.1) -> dict:
    """Write n ads to out_dir (train.jsonl, validation.jsonl, test.jsonl, images/) atomically; return counts.

    validation.jsonl is written only when `validation_fraction` leaves it at least one ad.

    Refuses an out_dir that exists and is not empty. The same seed gives byte-identical files.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir} already exists and is not empty; choose a new folder or remove it")
    plans = plan_ads(n, seed, test_fraction, validation_fraction)
    lines: dict[str, list[str]] = {"train": [], "test": []}
    if any(plan.split == "validation" for plan in plans):
        lines["validation"] = []
    with atomic_folder(out_dir) as staging:
        (staging / "images").mkdir()
        for plan in plans:
            render_ad(plan).save(staging / "images" / f"{plan.id}.jpg", quality=JPEG_QUALITY, subsampling=0)
            lines[plan.split].append(json.dumps(_record(plan), ensure_ascii=False) + "\n")
        for split, rows in lines.items():
            (staging / f"{split}.jsonl").write_text("".join(rows), encoding="utf-8")
    counts = {split: Counter(p.labels["violation"] for p in plans if p.split == split) for split in lines}
    return {
        "out_dir": str(out_dir),
        "seed": seed,
        "ads": {split: len(rows) for split, rows in lines.items()},
        "violation": {split: {name: count[name] for name in TASKS["violation"]}
                      for split, count in counts.items()},
    }
