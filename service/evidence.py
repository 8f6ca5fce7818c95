"""Evidence from the model (`explain=true`): which words of the copy and which region of the picture drove the
answered violation, found by occlusion, plus the advertising-law article each class refers to.

Why occlusion, and why through the backend: the gateway never holds the model's weights when Triton
serves it, so gradients are out of reach; occlusion needs only forward passes, which every backend
answers. The variants go through the gateway's own batching path (`Gateway.predict`: the coalescer,
split at the model's max batch size) to the SAME target (and so the same backend and version) that
answered the ad, so the evidence explains the very model that decided.

Why phrases, searched coarse then fine (docs/evidence.md, benchmarks/results/evidence.md): a fixed window of
characters cuts a phrase (深夜诱惑) in pieces, and deleting one piece leaves the other, which still carries the
class; every drop is then small and noise picks the top window. Deleting a whole phrase removes the class, and a
copy has far fewer phrases than characters, so the batch, which costs the time, is small.

The copy, level 1: its clauses (the jieba words between punctuation, symbols and spaces, within the first
`explain_max_chars` characters and the model's text length), one variant row each with the clause's tokens
deleted; a copy of a single clause has instead one row per run of `explain_window` adjacent words. Level 2,
only when the strongest level-1 span carries the class (its deletion drops the class at least CARRYING_DROP):
every run of 1 to `explain_window` words inside it (a clause only when it has more than `explain_window` words:
a shorter clause, set off by its writer, is already a phrase), and the shortest run that still drops the class
at least half as much as that span becomes the top span. So every span's score is the measured drop of
deleting exactly that span. Deleting rather than masking keeps every variant a copy the model could have been
trained on (no [MASK] it never saw).

The picture, level 1: one row with the whole picture (as the model saw it: resized, uint8) painted the
normalisation mean (grey, zero after normalising), unless the class's probability is itself below CARRYING_DROP
(no occlusion can then drop it that much: `whole` is null). Level 2, only when that drops the class by at least
CARRYING_DROP: one row per cell of an `explain_grid` x `explain_grid` grid, each cell painted grey; the answer
gives the full score grid and the top cells with their pixel box scaled back to the original picture. Below
CARRYING_DROP the picture does not carry the class and the grid is left out (empty `scores`).

Each level is one backend batch (copy and picture rows share the model's shapes); the second goes out only
when a clause or the picture needs it. The explained class is the answered violation, or the most likely
class other than `none` when the answer approves.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
import unicodedata
from collections.abc import Awaitable, Callable
from functools import lru_cache
from importlib import resources

import jieba
import numpy as np
import yaml
from PIL import Image

from adaudit.models.labels import DEFAULT_TAXONOMY, Taxonomy

from .encoding import ModelSpec, Prediction

TOP_SPANS = 3
TOP_CELLS = 3
# a span counts when it drops the class at least this share of the strongest span's drop; a phrase replaces its
# clause when it drops the class at least this share of the clause's drop
STRONG_SHARE = 0.5
# a part of the ad carries the class when deleting (greying) it drops the class's probability at least this
# much: only then is it searched finer (the words of the strongest span, the picture's grid); docs/evidence.md
CARRYING_DROP = 0.1
# Unicode control and format characters, punctuation, symbols, separators (spaces): where a clause ends
BREAK_CATEGORIES = "CPSZ"
ORIENTATION_TAG = 0x0112  # EXIF: 5-8 turn the picture a quarter, swapping width and height
IMAGE_MEAN_RGB = np.array([0.485, 0.456, 0.406]) * 255  # what normalises to zero: a neutral patch

Span = tuple[int, int]  # characters [start, end) of the copy as sent
Scored = tuple[Span, float]  # a span and the drop in the explained class's probability when it is deleted
Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in the picture as the model saw it


@lru_cache(maxsize=1)
def article_table() -> dict:
    """The shipped table (decisions/articles.yaml): {note, law, version, articles: {class: [..]}}. Read once;
    a reference the platform checks, not legal advice (the file says so, and every answer repeats it)."""
    text = resources.files("adaudit.decisions").joinpath("articles.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def articles_for(classes: list[str]) -> list[dict]:
    """The table's entries for `classes` (in order, each once; `none` and unknown classes give nothing)."""
    table = article_table()
    found = []
    for violation in dict.fromkeys(classes):
        for entry in table["articles"].get(violation, []):
            found.append({"violation": violation, "law": table["law"], **entry})
    return found


def explained_class(prediction: Prediction, violation: str, taxonomy: Taxonomy = DEFAULT_TAXONOMY) -> str:
    """The answered violation, or (an approved ad) the most likely class that is not the clean one (`none`
    under today's taxonomy, models/labels.py)."""
    if violation != taxonomy.clean_class:
        return violation
    others = {name: p for name, p in prediction.probabilities[taxonomy.reason_task].items()
              if name != taxonomy.clean_class}
    return max(others, key=others.get)


@lru_cache(maxsize=1)
def segmenter() -> jieba.Tokenizer:
    """jieba's word segmenter on the dictionary it ships, loaded once per process (at the first explained ad):
    phrases are made of words, which the model's one-token-per-character copy does not mark."""
    jieba.setLogLevel(logging.WARNING)  # its dictionary-loading messages are not the gateway's log
    tokenizer = jieba.Tokenizer()
    tokenizer.initialize()
    return tokenizer


def is_break(word: str) -> bool:
    """Punctuation, a symbol, a space or a control character (，！｜/→ \\n): where one clause of the copy ends and
    the next begins."""
    return all(unicodedata.category(character)[0] in BREAK_CATEGORIES for character in word)


def clauses(text: str, max_chars: int) -> list[list[Span]]:
    """The words (jieba) of each clause of the copy's first `max_chars` characters, in order."""
    found: list[list[Span]] = [[]]
    for word, start, end in segmenter().tokenize(text[:max_chars]):
        if is_break(word):
            found.append([])
        else:
            found[-1].append((start, end))
    return [words for words in found if words]


def outline(words: list[Span]) -> Span:
    """The characters a run of words covers."""
    return words[0][0], words[-1][1]


def word_runs(words: list[Span], longest: int, shortest: int = 1) -> list[Span]:
    """Every run of `shortest` to `longest` adjacent words: the phrases a clause may hold."""
    return [outline(words[first:first + size]) for size in range(shortest, min(longest, len(words)) + 1)
            for first in range(len(words) - size + 1)]


class CopyTokens:
    """The copy's tokens as the model saw them (after truncation to its text length), and which of them
    deleting a span removes: content tokens only (not special, not padding, starting within `max_chars`)."""

    def __init__(self, encoding, max_chars: int):
        self.offsets = encoding.offsets
        self.positions = [i for i, (special, attended, (start, end)) in enumerate(
            zip(encoding.special_tokens_mask, encoding.attention_mask, encoding.offsets))
            if not special and attended and end > start and start < max_chars]

    def tokens(self, span: Span) -> list[int]:
        """The positions of the content tokens that overlap `span`."""
        return [p for p in self.positions if self.offsets[p][0] < span[1] and span[0] < self.offsets[p][1]]

    def covered(self, tokens: list[int]) -> Span:
        """The characters `tokens` (in order) cover: a span as the model saw it, cut where truncation cut."""
        return self.offsets[tokens[0]][0], self.offsets[tokens[-1]][1]


def copy_variants(row: dict[str, np.ndarray], deletions: list[list[int]], pad_id: int) -> dict[str, np.ndarray]:
    """One row per deletion: the ad's tokens without those positions, the rest shifted left (padded)."""
    ids, mask = row["input_ids"][0], row["attention_mask"][0]
    length = len(ids)
    out_ids = np.full((len(deletions), length), pad_id, dtype=ids.dtype)
    out_mask = np.zeros((len(deletions), length), dtype=mask.dtype)
    for k, positions in enumerate(deletions):
        keep = np.ones(length, dtype=bool)
        keep[positions] = False
        kept = int(keep.sum())
        out_ids[k, :kept], out_mask[k, :kept] = ids[keep], mask[keep]
    return {"input_ids": out_ids, "attention_mask": out_mask,
            "image_bytes": np.repeat(row["image_bytes"], len(deletions), axis=0)}


def grid_cells(size: int, grid: int) -> list[tuple[int, int, int, int, int, int]]:
    """(row, column, x0, y0, x1, y1) of each cell of a size x size picture, row by row."""
    edges = np.linspace(0, size, grid + 1).round().astype(int)
    return [(r, c, int(edges[c]), int(edges[r]), int(edges[c + 1]), int(edges[r + 1]))
            for r in range(grid) for c in range(grid)]


def picture_variants(row: dict[str, np.ndarray], boxes: list[Box]) -> dict[str, np.ndarray]:
    """One row per box: the model-sized picture with that box painted the normalisation mean."""
    image = row["image_bytes"][0]
    pictures = np.repeat(image[None], len(boxes), axis=0)
    grey = IMAGE_MEAN_RGB.round().astype(image.dtype)[:, None, None]
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        pictures[k, :, y0:y1, x0:x1] = grey
    return {"image_bytes": pictures, "input_ids": np.repeat(row["input_ids"], len(boxes), axis=0),
            "attention_mask": np.repeat(row["attention_mask"], len(boxes), axis=0)}


def strongest(scored: list[Scored]) -> list[Scored]:
    """At most TOP_SPANS spans that do not overlap, strongest first, each with a positive drop of at least
    STRONG_SHARE of the strongest's."""
    ranked = sorted(scored, key=lambda item: -item[1])
    chosen: list[Scored] = []
    for (start, end), drop in ranked:
        if drop <= 0 or drop < STRONG_SHARE * ranked[0][1] or len(chosen) == TOP_SPANS:
            break
        if all(end <= other[0] or other[1] <= start for other, _ in chosen):
            chosen.append(((start, end), drop))
    return chosen


def narrowest(span: Scored, runs: list[Scored]) -> Scored:
    """The shortest run inside `span` that drops the class at least STRONG_SHARE of the span's drop (of two as
    short: the stronger), or `span` itself: the phrase that carries the class without the rest of its clause."""
    (start, end), drop = span
    inside = [run for run in runs if start <= run[0][0] and run[0][1] <= end and run[1] >= STRONG_SHARE * drop]
    return min(inside, key=lambda run: (run[0][1] - run[0][0], -run[1]), default=span)


def refined(spans: list[Scored], runs: list[Scored]) -> list[Scored]:
    """`spans` with the strongest narrowed to its phrase (`narrowest`), strongest first again."""
    if not spans:
        return []
    return sorted([narrowest(spans[0], runs), *spans[1:]], key=lambda item: -item[1])


def original_size(ad) -> tuple[int, int]:
    """The picture's (width, height) as sent and turned upright: the decoded image may be a JPEG draft."""
    if ad.source is None or not isinstance(ad.source.image, bytes):
        return ad.image.size
    with Image.open(io.BytesIO(ad.source.image)) as header:
        width, height = header.size
        turned = header.getexif().get(ORIENTATION_TAG, 1) in (5, 6, 7, 8)
    return (height, width) if turned else (width, height)


def picture_evidence(whole: float | None, drops: list[float], size: int, grid: int,
                     picture_size: tuple[int, int]) -> dict:
    """The whole picture's drop (None: not scored), the grid's scores (rows x columns; none when the grid was not
    searched) and its top cells, with pixel boxes in the original picture."""
    sx, sy = picture_size[0] / size, picture_size[1] / size
    cells = []
    for (r, c, x0, y0, x1, y1), drop in zip(grid_cells(size, grid), drops):
        cells.append({"row": r, "column": c, "score": round(drop, 6),
                      "box": [round(x0 * sx), round(y0 * sy), round(x1 * sx), round(y1 * sy)]})
    top = sorted(cells, key=lambda cell: -cell["score"])[:TOP_CELLS]
    return {"grid": grid, "whole": None if whole is None else round(whole, 6),
            "scores": [[round(d, 6) for d in drops[r * grid:(r + 1) * grid]] for r in range(grid)] if drops else [],
            "cells": [cell for cell in top if cell["score"] > 0]}


class Occluder:
    """Scores occluded variants of one ad, one backend batch per call: `predict(inputs) -> [Prediction]` runs the
    rows on the target that answered (the gateway binds it), `drop(answer)` reads the explained class's drop."""

    def __init__(self, predict: Callable[[dict], Awaitable[list[Prediction]]], drop: Callable[[Prediction], float],
                 row: dict[str, np.ndarray], copy: CopyTokens, pad_id: int):
        self.predict, self.drop, self.row, self.copy, self.pad_id = predict, drop, row, copy, pad_id
        self.rows = 0

    async def __call__(self, spans: list[Span], boxes: list[Box]) -> tuple[list[Scored], list[float]]:
        """A row per span the model saw (its tokens deleted) and per box (greyed) -> (each such span as its tokens
        cover it, with its drop; the drop of each box). No spans seen and no boxes: no batch."""
        seen = [tokens for span in spans if (tokens := self.copy.tokens(span))]
        if not seen and not boxes:
            return [], []
        parts = [copy_variants(self.row, seen, self.pad_id), picture_variants(self.row, boxes)]
        answers = await self.predict({name: np.concatenate([part[name] for part in parts]) for name in self.row})
        self.rows += len(answers)
        drops = [self.drop(answer) for answer in answers]
        return [(self.copy.covered(tokens), drop) for tokens, drop in zip(seen, drops)], drops[len(seen):]


class Explainer:
    """Makes the evidence of one answered ad; `predict(inputs) -> [Prediction]` runs a batch of rows on the
    target that answered (the gateway binds it), so Triton and the embedded backend are served alike."""

    def __init__(self, encoder, max_chars: int, grid: int, window: int):
        self.encoder, self.max_chars, self.grid, self.window = encoder, max_chars, grid, window

    def first_level(self, found: list[list[Span]]) -> list[Span]:
        """The copy's level 1: its clauses, or (a copy of a single clause) its runs of `window` adjacent words."""
        if len(found) > 1:
            return [outline(words) for words in found]
        return [run for words in found for run in word_runs(words, self.window, min(self.window, len(words)))]

    def refinement(self, found: list[list[Span]], spans: list[Scored]) -> list[Span]:
        """The copy's level 2: the runs of 1 to `window` words inside the strongest level-1 span, when it carries
        the class and is a run of words (a cut the writer did not mark) or a clause of more than `window` words
        (a shorter clause, set off by the writer, is already a phrase)."""
        if not spans or spans[0][1] < CARRYING_DROP:
            return []
        (start, end), _ = spans[0]
        words = [word for clause in found for word in clause if start <= word[0] and word[1] <= end]
        if len(found) > 1 and len(words) <= self.window:
            return []
        return [run for run in word_runs(words, self.window) if run != (start, end)]

    async def search(self, occlude: Occluder, text: str, size: int, base: float) -> tuple[list[Scored], dict]:
        """The copy's spans and the picture's evidence, level 1 then (where needed) level 2 (module docstring)."""
        if not segmenter.cache_info().currsize:  # loading the dictionary would stall the event loop's other requests
            await asyncio.to_thread(segmenter)
        found = clauses(text, self.max_chars)
        # greying cannot drop the class below zero: below CARRYING_DROP the picture cannot carry it, no row needed
        scored, whole = await occlude(self.first_level(found), [(0, 0, size, size)] if base >= CARRYING_DROP else [])
        cells = [box for _, _, *box in grid_cells(size, self.grid)] if whole and whole[0] >= CARRYING_DROP else []
        finer, cell_drops = await occlude(self.refinement(found, strongest(scored)), cells)
        return refined(strongest(scored), finer), {"whole": whole[0] if whole else None, "drops": cell_drops}

    async def explain(self, predict, ad, spec: ModelSpec, row: dict[str, np.ndarray], prediction: Prediction,
                      decision) -> dict:
        """The `evidence` field of one answer (see the module's docstring)."""
        started = time.perf_counter()
        reason = spec.taxonomy.reason_task
        target_class = explained_class(prediction, decision.violation, spec.taxonomy)
        base = prediction.probabilities[reason][target_class]
        processor = self.encoder.processor(spec)
        copy = CopyTokens(processor._encoder.encode(ad.text), self.max_chars)  # the encoder the inputs came from
        occlude = Occluder(predict, lambda answer: base - answer.probabilities[reason][target_class], row, copy,
                           processor.tokenizer.pad_token_id)
        scored, picture = await self.search(occlude, ad.text, spec.image_size, base)
        spans = [{"start": start, "end": end, "text": ad.text[start:end], "score": round(drop, 6)}
                 for (start, end), drop in scored]
        reasons = [r.violation for r in decision.reasons if r.violation not in (None, spec.taxonomy.clean_class)]
        return {"violation": target_class, "probability": base,
                "copy": {"spans": spans, "window": self.window, "explained_chars": min(len(ad.text), self.max_chars)},
                "picture": picture_evidence(picture["whole"], picture["drops"], spec.image_size, self.grid,
                                            original_size(ad)),
                "articles": articles_for([target_class, *reasons]), "note": article_table()["note"],
                "variants": occlude.rows, "took_ms": round((time.perf_counter() - started) * 1000, 3)}
