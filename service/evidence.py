"""Evidence from the model (`explain=true`): which characters of the copy and which region of the picture
drove the answered violation, found by occlusion, plus the advertising-law article each class refers to.

Why occlusion, and why through the backend: the gateway never holds the model's weights when Triton
serves it, so gradients are out of reach; occlusion needs only forward passes, which every backend
answers. The variants go through the gateway's own batching path (`Gateway.predict`: the coalescer,
split at the model's max batch size) to the SAME target (and so the same backend and version) that
answered the ad, so the evidence explains the very model that decided.

The copy: the ad's tokens as the model saw them (after truncation to its text length) are deleted a
window of `explain_window` tokens at a time (stride 1; only tokens that start within the first
`explain_max_chars` characters), each deletion one variant row. Deleting rather than masking keeps
every variant a copy the model could have been trained on (no [MASK] it never saw). A window's score
is the drop in the explained class's probability; the windows scoring at least half the best drop
(at most `2 * TOP_SPANS`) are merged where they overlap or touch, and each merged span carries the
character offsets (the tokenizer's offsets into the copy as sent: `text[start:end]`) and its best drop.

The picture: the image as the model saw it (resized, uint8) cut into a `explain_grid` x
`explain_grid` grid; each cell painted the normalisation mean (grey, zero after normalising) in its
own variant row. Each cell's score is the probability drop; the answer gives the full score grid and
the top cells with their pixel box scaled back to the original picture.

Text and picture variants go out as one batch (rows share the model's shapes). The explained class is
the answered violation, or the most likely class other than `none` when the answer approves.
"""

from __future__ import annotations

import io
import time
from functools import lru_cache
from importlib import resources

import numpy as np
import yaml
from PIL import Image

from adaudit.models.labels import DEFAULT_TAXONOMY, Taxonomy

from .encoding import ModelSpec, Prediction

TOP_SPANS = 3
TOP_CELLS = 3
ORIENTATION_TAG = 0x0112  # EXIF: 5-8 turn the picture a quarter, swapping width and height
IMAGE_MEAN_RGB = np.array([0.485, 0.456, 0.406]) * 255  # what normalises to zero: a neutral patch


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


def copy_windows(encoding, max_chars: int, window: int) -> tuple[list[int], list[tuple[int, int]]]:
    """(content token positions, windows as (first, last + 1) indexes into those positions). Content: not a
    special token, not padding, starting within the first `max_chars` characters."""
    positions = [i for i, (special, attended, (start, end)) in enumerate(
        zip(encoding.special_tokens_mask, encoding.attention_mask, encoding.offsets))
        if not special and attended and end > start and start < max_chars]
    width = min(window, len(positions))
    return positions, [(a, a + width) for a in range(len(positions) - width + 1)] if width else []


def copy_variants(row: dict[str, np.ndarray], positions: list[int], windows: list[tuple[int, int]],
                  pad_id: int) -> dict[str, np.ndarray]:
    """One row per window: the ad's tokens with the window's deleted and the rest shifted left (padded)."""
    ids, mask = row["input_ids"][0], row["attention_mask"][0]
    length = len(ids)
    out_ids = np.full((len(windows), length), pad_id, dtype=ids.dtype)
    out_mask = np.zeros((len(windows), length), dtype=mask.dtype)
    for k, (a, b) in enumerate(windows):
        keep = np.ones(length, dtype=bool)
        keep[positions[a]:positions[b - 1] + 1] = False
        kept = int(keep.sum())
        out_ids[k, :kept], out_mask[k, :kept] = ids[keep], mask[keep]
    return {"input_ids": out_ids, "attention_mask": out_mask,
            "image_bytes": np.repeat(row["image_bytes"], len(windows), axis=0)}


def grid_cells(size: int, grid: int) -> list[tuple[int, int, int, int, int, int]]:
    """(row, column, x0, y0, x1, y1) of each cell of a size x size picture, row by row."""
    edges = np.linspace(0, size, grid + 1).round().astype(int)
    return [(r, c, int(edges[c]), int(edges[r]), int(edges[c + 1]), int(edges[r + 1]))
            for r in range(grid) for c in range(grid)]


def picture_variants(row: dict[str, np.ndarray], grid: int) -> dict[str, np.ndarray]:
    """One row per grid cell: the model-sized picture with that cell painted the normalisation mean."""
    image = row["image_bytes"][0]
    cells = grid_cells(image.shape[-1], grid)
    pictures = np.repeat(image[None], len(cells), axis=0)
    grey = IMAGE_MEAN_RGB.round().astype(image.dtype)[:, None, None]
    for k, (_, _, x0, y0, x1, y1) in enumerate(cells):
        pictures[k, :, y0:y1, x0:x1] = grey
    return {"image_bytes": pictures, "input_ids": np.repeat(row["input_ids"], len(cells), axis=0),
            "attention_mask": np.repeat(row["attention_mask"], len(cells), axis=0)}


def merge_spans(drops: list[float], windows: list[tuple[int, int]], positions: list[int], offsets) -> list[dict]:
    """The top windows (at least half the best positive drop, at most 2 * TOP_SPANS) merged where they
    overlap or touch; each span: character offsets, its best drop. Best first, at most TOP_SPANS."""
    ranked = sorted(range(len(windows)), key=lambda k: -drops[k])
    best = drops[ranked[0]] if ranked else 0.0
    chosen = sorted((windows[k], drops[k]) for k in ranked[:2 * TOP_SPANS] if drops[k] > 0 and drops[k] >= best / 2)
    merged: list[list] = []
    for (a, b), drop in chosen:
        if merged and a <= merged[-1][1]:  # overlaps or touches the previous span (token indexes)
            merged[-1][1], merged[-1][2] = max(merged[-1][1], b), max(merged[-1][2], drop)
        else:
            merged.append([a, b, drop])
    spans = [{"start": offsets[positions[a]][0], "end": offsets[positions[b - 1]][1], "score": round(drop, 6)}
             for a, b, drop in merged]
    return sorted(spans, key=lambda span: -span["score"])[:TOP_SPANS]


def original_size(ad) -> tuple[int, int]:
    """The picture's (width, height) as sent and turned upright: the decoded image may be a JPEG draft."""
    if ad.source is None or not isinstance(ad.source.image, bytes):
        return ad.image.size
    with Image.open(io.BytesIO(ad.source.image)) as header:
        width, height = header.size
        turned = header.getexif().get(ORIENTATION_TAG, 1) in (5, 6, 7, 8)
    return (height, width) if turned else (width, height)


def picture_evidence(drops: list[float], size: int, grid: int, picture_size: tuple[int, int]) -> dict:
    """The grid's scores (rows x columns) and its top cells, with pixel boxes in the original picture."""
    sx, sy = picture_size[0] / size, picture_size[1] / size
    cells = []
    for (r, c, x0, y0, x1, y1), drop in zip(grid_cells(size, grid), drops):
        cells.append({"row": r, "column": c, "score": round(drop, 6),
                      "box": [round(x0 * sx), round(y0 * sy), round(x1 * sx), round(y1 * sy)]})
    top = sorted(cells, key=lambda cell: -cell["score"])[:TOP_CELLS]
    return {"grid": grid, "scores": [[round(d, 6) for d in drops[r * grid:(r + 1) * grid]] for r in range(grid)],
            "cells": [cell for cell in top if cell["score"] > 0]}


class Explainer:
    """Makes the evidence of one answered ad; `predict(inputs) -> [Prediction]` runs a batch of rows on the
    target that answered (the gateway binds it), so Triton and the embedded backend are served alike."""

    def __init__(self, encoder, max_chars: int, grid: int, window: int):
        self.encoder, self.max_chars, self.grid, self.window = encoder, max_chars, grid, window

    def variants(self, ad, spec: ModelSpec, row: dict[str, np.ndarray]):
        """(all variant rows as one batch, content positions, windows, token offsets)."""
        processor = self.encoder.processor(spec)
        encoding = processor._encoder.encode(ad.text)  # the padded encoder the gateway's inputs came from
        positions, windows = copy_windows(encoding, self.max_chars, self.window)
        parts = [picture_variants(row, self.grid)]
        if windows:
            parts.insert(0, copy_variants(row, positions, windows, processor.tokenizer.pad_token_id))
        batch = {name: np.concatenate([part[name] for part in parts]) for name in row}
        return batch, positions, windows, encoding.offsets

    async def explain(self, predict, ad, spec: ModelSpec, row: dict[str, np.ndarray], prediction: Prediction,
                      decision) -> dict:
        """The `evidence` field of one answer (see the module's docstring)."""
        started = time.perf_counter()
        reason = spec.taxonomy.reason_task
        target_class = explained_class(prediction, decision.violation, spec.taxonomy)
        base = prediction.probabilities[reason][target_class]
        batch, positions, windows, offsets = self.variants(ad, spec, row)
        answers = await predict(batch)
        drops = [base - answer.probabilities[reason][target_class] for answer in answers]
        spans = merge_spans(drops[:len(windows)], windows, positions, offsets)
        for span in spans:
            span["text"] = ad.text[span["start"]:span["end"]]
        reasons = [r.violation for r in decision.reasons if r.violation not in (None, spec.taxonomy.clean_class)]
        return {"violation": target_class, "probability": base,
                "copy": {"spans": spans, "window": self.window, "explained_chars": min(len(ad.text), self.max_chars)},
                "picture": picture_evidence(drops[len(windows):], spec.image_size, self.grid, original_size(ad)),
                "articles": articles_for([target_class, *reasons]), "note": article_table()["note"],
                "variants": len(answers), "took_ms": round((time.perf_counter() - started) * 1000, 3)}
