"""A deterministic generator of MAAD-like synthetic ads (MAAD itself was never released).

Two versions (`make_dataset(generator=...)`, `adaudit data make --generator`): version 1, described
here, and version 2 (data/variety.py, data/phrasing.py), which draws the same labels on canvases of
many sizes and shapes, with broader copy and a `test_shifted` split. Version 1 stays byte for byte
what it was, so the figures measured on it can be made again. Both draw from data/drawing.py.

In version 1 every ad is a 128x128 RGB JPEG plus a line of Chinese ad copy, labelled for the six tasks
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

import numpy as np
from PIL import Image, ImageDraw

from adaudit.core.files import atomic_folder, refuse_existing_folder
from adaudit.models.labels import TASKS

from .drawing import (  # noqa: F401 (BACKGROUND_RGB, STICKER_RGB, PRODUCTS, APPROVE_SHARE: also read from here)
    _CLUTTER_STICKERS, APPROVE_SHARE, BACKGROUND_RGB, BORDER, IMAGE_SIZE, PRODUCTS, STICKER_RGB, AdPlan,
    _draw_logo, _font, _gambling_cluster, _ink, _paste_inside, _photo_loaders, _pick, _sticker, _violation_quota,
    draw_labels, random_crop,
)
from .variety import plan_varied_ads, render_varied

JPEG_QUALITY = 92
GENERATOR_VERSIONS = (1, 2)  # 1: the original 128x128 ads; 2: varied canvases and copy, a shifted split
LATEST_GENERATOR = GENERATOR_VERSIONS[-1]
_TITLE_HEIGHT = 16
MIN_TEXT_CHARS = 12
MAX_TEXT_CHARS = 40


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


def plan_ads(n: int, seed: int = 0, test_fraction: float = 0.2, validation_fraction: float = 0.0,
             generator: int = 1, shifted_fraction: float = 0.0) -> list[AdPlan]:
    """The labels, copy and drawing seed of ads ad-000000 .. ad-{n-1}; test gets round(n * test_fraction),
    validation round(n * validation_fraction) of the others.

    The validation ads are drawn from the training distribution (the training templates and
    phrases): they are what choices (recipes, thresholds, epochs) are made on, so they must not
    carry the test split's held-out phrasing. Drawn after the test split, from their own stream, so
    a seed's test split and every ad's content are the same whatever the validation fraction.

    `generator` 2 (data/variety.py) adds varied canvases and copy, and round(n * shifted_fraction)
    more ads in a `test_shifted` split; 1 is the original generator, byte for byte."""
    if generator not in GENERATOR_VERSIONS:
        raise ValueError(f"generator version {generator} does not exist; versions: "
                         f"{', '.join(map(str, GENERATOR_VERSIONS))}")
    splits = _assign_splits(n, seed, test_fraction, validation_fraction)
    if generator == 1:
        return [_plan_ad(seed, i, *assigned) for i, assigned in enumerate(splits)]
    return plan_varied_ads(splits, seed, round(n * shifted_fraction))


def _assign_splits(n: int, seed: int, test_fraction: float, validation_fraction: float) -> list[tuple[str, str, bool]]:
    """(split, violation, gambling drawn in the picture) of each of n ads."""
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
    return [("test" if i in test_indices else "validation" if i in validation_indices else "train", *quota[i])
            for i in range(n)]


def _plan_ad(seed: int, index: int, split: str, violation: str, gambling_image: bool) -> AdPlan:
    rng = np.random.default_rng([seed, index, 0])
    phrasing = "test" if split == "test" else "train"  # validation ads are worded as training ads are
    labels, product, photo_industry, clutter = draw_labels(rng, violation)
    low, high = _CLUTTER_STICKERS[clutter]
    text_violation = violation if violation in TEXT_VIOLATIONS and not gambling_image else None
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


def render_ad(plan: AdPlan) -> Image.Image:
    """Draw the ad: background, title bar, product photo, stickers, gambling imagery, logo."""
    if plan.layout is not None:
        return render_varied(plan)
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
    photo = random_crop(_photo(industry), rng)
    crop_w, crop_h = photo.size
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


# ---------------------------------------------------------------- writing


def _record(plan: AdPlan) -> dict:
    return {"id": plan.id, "image": f"images/{plan.id}.jpg", "text": plan.text, "labels": plan.labels}


def make_dataset(out_dir: Path, n: int = 6000, seed: int = 0, test_fraction: float = 0.2,
                 validation_fraction: float = 0.1, generator: int = 1, shifted_fraction: float = 0.2) -> dict:
    """Write n ads to out_dir (train.jsonl, validation.jsonl, test.jsonl, images/) atomically; return counts.

    validation.jsonl is written only when `validation_fraction` leaves it at least one ad. `generator` 2
    also writes test_shifted.jsonl: round(n * shifted_fraction) more ads, laid out and worded as no
    training ad is (data/variety.py). The version is recorded in the summary and in generator.json.
    The default stays 1 so that callers written for it (fixtures, the demo) keep their ads; the
    command line's default is the newest version.

    Refuses an out_dir that exists and is not empty. The same seed gives byte-identical files.
    """
    out_dir = Path(out_dir)
    refuse_existing_folder(out_dir)
    plans = plan_ads(n, seed, test_fraction, validation_fraction, generator, shifted_fraction)
    lines: dict[str, list[str]] = {"train": [], "test": []}
    for split in ("validation", "test_shifted"):
        if any(plan.split == split for plan in plans):
            lines[split] = []
    with atomic_folder(out_dir) as staging:
        (staging / "images").mkdir()
        for plan in plans:
            quality, subsampling = plan.jpeg
            render_ad(plan).save(staging / "images" / f"{plan.id}.jpg", quality=quality, subsampling=subsampling)
            lines[plan.split].append(json.dumps(_record(plan), ensure_ascii=False) + "\n")
        for split, rows in lines.items():
            (staging / f"{split}.jsonl").write_text("".join(rows), encoding="utf-8")
        provenance = {"generator": generator, "n": n, "seed": seed, "test_fraction": test_fraction,
                      "validation_fraction": validation_fraction}
        if generator > 1:
            provenance["shifted_fraction"] = shifted_fraction
        (staging / "generator.json").write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
    counts = {split: Counter(p.labels["violation"] for p in plans if p.split == split) for split in lines}
    return {
        "out_dir": str(out_dir),
        "seed": seed,
        "generator": generator,
        "ads": {split: len(rows) for split, rows in lines.items()},
        "violation": {split: {name: count[name] for name in TASKS["violation"]}
                      for split, count in counts.items()},
    }
