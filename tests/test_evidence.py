"""Evidence from the model (`explain=true`, service/evidence.py) through the FastAPI app and the embedded backend.

The model is a tiny AuditModel trained here for a few dozen steps on copies made of a small pool of
characters and pictures of a random flat colour, where the violation is `gambling` exactly when the copy
holds the phrase 赌场 or the picture carries a black-and-white chequer in its top-left quarter: occlusion
must then find 赌场 as the top span (and no more than it), and the chequer's cells in the picture's grid.
"""

from __future__ import annotations

import base64
import io
import json

import jieba
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from adaudit.models.labels import TASKS
from adaudit.models.modeling import AuditModel
from adaudit.models.preprocessing import AuditProcessor
from adaudit.models.tokenizer import build_vocabulary
from adaudit.service.app import create_app
from adaudit.service.evidence import CARRYING_DROP, article_table, clauses, narrowest, refined, strongest, word_runs
from adaudit.service.settings import GatewaySettings
from adaudit.training.presets import preset_config
from benchmarks.evidence import joined, top_span_figures

POOL = "春夏秋冬山水花草鱼鸟风云日月星光美好新鲜香甜家居生活精选实用大方"
TRIGGER = "赌场"
GRID, MAX_CHARS, WINDOW = 2, 30, 4  # a grid of 2: the chequer fills the top-left cell
CHEQUER_SQUARES = 4  # the chequer is 4 x 4 squares over the picture's top-left quarter


def phrase_copies(rng: np.random.Generator, n: int) -> tuple[list[str], list[bool]]:
    """n copies from POOL, every other one with TRIGGER at a random place."""
    texts, positive = [], []
    for i in range(n):
        chars = [POOL[k] for k in rng.integers(len(POOL), size=int(rng.integers(8, 20)))]
        if i % 2 == 0:
            at = int(rng.integers(len(chars) + 1))
            chars[at:at] = list(TRIGGER)
        texts.append("".join(chars))
        positive.append(i % 2 == 0)
    return texts, positive


def chequer(size: int) -> np.ndarray:
    """A black-and-white chequer of CHEQUER_SQUARES x CHEQUER_SQUARES squares, `size` pixels a side, uint8 RGB."""
    square = np.indices((size, size)) * CHEQUER_SQUARES // size
    return np.repeat(((square.sum(axis=0) % 2) * 255).astype(np.uint8)[..., None], 3, axis=2)


def flat_pictures(rng: np.random.Generator, n: int, size: int) -> tuple[np.ndarray, list[bool]]:
    """n pictures (n, 3, size, size) of a random flat colour, one in four with the chequer in its top-left quarter."""
    pictures = np.repeat(np.repeat(rng.integers(0, 256, (n, 1, 1, 3), dtype=np.uint8), size, 1), size, 2)
    marked = [i % 4 == 1 for i in range(n)]
    for i in np.flatnonzero(marked):
        pictures[i, :size // 2, :size // 2] = chequer(size // 2)
    return np.ascontiguousarray(pictures.transpose(0, 3, 1, 2)), marked


def phrase_model(steps: int = 100) -> AuditModel:
    """A tiny model whose violation (and verdict) depends on TRIGGER and the chequer only: seconds of training."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = AuditModel(preset_config("tiny", len(build_vocabulary())))
    processor = AuditProcessor(model.config)
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3)
    gambling = TASKS["violation"].index("gambling")
    for _ in range(steps):
        texts, in_copy = phrase_copies(rng, 32)
        pictures, in_picture = flat_pictures(rng, 32, model.config.image_size)
        input_ids, attention_mask = processor.texts(texts)
        logits = model(pixel_values=processor.normalise(torch.from_numpy(pictures)), input_ids=input_ids,
                       attention_mask=attention_mask).logits
        labels = torch.tensor([a or b for a, b in zip(in_copy, in_picture)]).long()
        loss = torch.nn.functional.cross_entropy(logits["violation"], labels * gambling) + \
            torch.nn.functional.cross_entropy(logits["verdict"], labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("evidence-models")
    phrase_model().save_pretrained(folder / "student")
    yield folder
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def client(model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("evidence-log") / "log.db"
    settings = GatewaySettings(backend="embedded", model_dir=model_dir, database_url=f"sqlite:///{log}",
                               explain_grid=GRID, explain_max_chars=MAX_CHARS, explain_window=WINDOW, max_batch=4)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def png(size=(80, 60), colour=(90, 140, 200)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def chequered_png(size: int = 64, colour=(90, 140, 200)) -> bytes:
    """A flat picture with the chequer the model reacts to in its top-left quarter (a whole number of the model's
    pixels a square, so resizing keeps it)."""
    picture = np.full((size, size, 3), colour, dtype=np.uint8)
    picture[:size // 2, :size // 2] = chequer(size // 2)
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, "PNG")
    return buffer.getvalue()


def audit(client, text: str, image: bytes | None = None, **extra):
    body = {"image_base64": base64.b64encode(image or png()).decode(), "text": text, **extra}
    return client.post("/v1/audits", json=body)


def check_spans(text: str, spans: list[dict]) -> None:
    for span in spans:
        assert 0 <= span["start"] < span["end"] <= len(text)
        assert text[span["start"]:span["end"]] == span["text"]


def overlaps(span: dict, start: int, end: int) -> bool:
    return span["start"] < end and start < span["end"]


def test_explain_off_answers_without_evidence_and_the_same_other_fields(client):
    text = "春山花草" + TRIGGER + "鲜香甜家居"
    off, unset, on = audit(client, text, explain=False), audit(client, text), audit(client, text, explain=True)
    assert off.status_code == unset.status_code == on.status_code == 200, off.text
    assert b"evidence" not in off.content and b"evidence" not in unset.content
    assert on.json()["evidence"]["violation"] == on.json()["violation"] == "gambling"
    varying = {"request_id", "timings", "evidence"}
    for answer in (unset.json(), on.json()):
        for name in set(off.json()) | set(answer):
            if name not in varying:
                assert json.dumps(off.json()[name]) == json.dumps(answer[name]), name
    assert set(on.json()) - set(off.json()) == {"evidence"}


def words_of(text: str) -> list[str]:
    """jieba's words of `text` without its punctuation: what the evidence counts runs in."""
    return [word for word in jieba.cut(text) if word.strip("，！。 ")]


def test_the_phrase_the_model_reacts_to_is_the_top_span_and_no_more(client):
    copies = [TRIGGER + "春夏秋冬山水花", "山水花草鱼鸟" + TRIGGER + "风云日月", "美好新鲜香甜家居生活" + TRIGGER,
              "Ａ级 abc，" + TRIGGER + "！精选实用",  # full-width and ASCII words: offsets still map to characters
              "春山花草，鱼鸟" + TRIGGER + "风云日月星光，美好新鲜"]  # a long clause: narrowed to its phrase
    for text in copies:
        answer = audit(client, text, explain=True).json()
        evidence = answer["evidence"]
        assert evidence["violation"] == "gambling" and evidence["probability"] > 0.5
        spans = evidence["copy"]["spans"]
        check_spans(text, spans)
        start = text.index(TRIGGER)
        assert (spans[0]["start"], spans[0]["end"], spans[0]["text"]) == (start, start + len(TRIGGER), TRIGGER), spans
        assert spans[0]["score"] > 0.3 and spans == sorted(spans, key=lambda s: -s["score"])
        assert evidence["copy"]["window"] == WINDOW
        assert {a["violation"] for a in evidence["articles"]} == {"gambling"}
        assert "第九条" in evidence["articles"][0]["article"] and "not legal advice" in evidence["note"]


def test_clauses_are_scored_first_and_only_the_strongest_long_one_word_by_word(client):
    short = "春山，" + TRIGGER + "，鱼鸟"  # every clause a phrase already: one batch, a row per clause and the picture
    evidence = audit(client, short, explain=True).json()["evidence"]
    assert evidence["copy"]["spans"][0]["text"] == TRIGGER
    assert evidence["variants"] == 3 + 1 and evidence["picture"]["scores"] == []
    long = "春山花草，鱼鸟" + TRIGGER + "风云日月星光，美好新鲜"  # its middle clause has 6 words: runs of 1-4 of them
    evidence = audit(client, long, explain=True).json()["evidence"]
    middle = words_of("鱼鸟" + TRIGGER + "风云日月星光")
    runs = sum(len(middle) - size + 1 for size in range(1, WINDOW + 1))
    assert len(middle) > WINDOW and evidence["variants"] == 3 + 1 + runs


def test_a_copy_the_picture_does_not_carry_leaves_the_grid_out(client):
    evidence = audit(client, "鱼鸟" + TRIGGER + "风云", explain=True).json()["evidence"]
    picture = evidence["picture"]
    assert picture["grid"] == GRID and picture["whole"] < CARRYING_DROP
    assert picture["scores"] == [] and picture["cells"] == []


def test_a_picture_that_carries_the_class_has_its_grid_searched_and_the_chequer_found(client):
    text = "春夏秋冬，山水花草"
    plain = audit(client, text, image=png((64, 64)), explain=True).json()
    assert plain["violation"] == "none", plain
    answer = audit(client, text, image=chequered_png(64), explain=True).json()
    assert answer["violation"] == "gambling", answer
    picture = answer["evidence"]["picture"]
    assert picture["whole"] >= CARRYING_DROP
    assert len(picture["scores"]) == GRID and all(len(row) == GRID for row in picture["scores"])
    assert picture["scores"][0][0] > 0.5 and max(picture["scores"][0][1], *picture["scores"][1]) < CARRYING_DROP
    assert [(cell["row"], cell["column"], cell["box"]) for cell in picture["cells"]] == [(0, 0, [0, 0, 32, 32])]
    assert answer["evidence"]["variants"] == 2 + 1 + GRID * GRID  # two clauses, the whole picture, the grid


def test_an_approved_ad_explains_its_likeliest_violation_without_a_picture_row(client):
    text = "春夏秋冬山水花草鱼鸟风云"
    response = audit(client, text, image=png((80, 60)), explain=True)
    answer = response.json()
    assert answer["violation"] == "none" and answer["suggestion"] == "pass", answer
    evidence = answer["evidence"]
    assert evidence["violation"] in TASKS["violation"][1:] and evidence["probability"] < CARRYING_DROP
    picture = evidence["picture"]
    assert picture == {"grid": GRID, "whole": None, "scores": [], "cells": []}
    words = words_of(text)  # one clause: a row per run of WINDOW words, and no second level (nothing carries)
    assert len(words) > WINDOW and evidence["variants"] == len(words) - WINDOW + 1
    check_spans(text, evidence["copy"]["spans"])


def test_an_approved_copy_without_words_needs_no_backend_batch(client):
    evidence = audit(client, "！！！", explain=True).json()["evidence"]
    assert evidence["variants"] == 0 and evidence["copy"]["spans"] == [] and evidence["picture"]["whole"] is None


def test_the_copy_explained_is_capped(client):
    text = "春夏秋冬山水花草鱼鸟风云日月星光美好新鲜香甜家居生活精选实用大方" + TRIGGER  # trigger past MAX_CHARS
    evidence = audit(client, text, explain=True).json()["evidence"]
    assert evidence["copy"]["explained_chars"] == MAX_CHARS
    assert all(span["end"] <= MAX_CHARS for span in evidence["copy"]["spans"])
    words = words_of(text[:MAX_CHARS])  # runs of WINDOW words within the cap, the whole picture
    assert evidence["variants"] == len(words) - WINDOW + 1 + 1


def test_batch_items_and_forms_ask_for_evidence_each(client):
    image = base64.b64encode(png()).decode()
    items = [{"image_base64": image, "text": "鱼鸟" + TRIGGER, "explain": True},
             {"image_base64": image, "text": "鱼鸟" + TRIGGER}]
    answers = client.post("/v1/audits:batch", json={"items": items}).json()["items"]
    assert "evidence" in answers[0] and "evidence" not in answers[1]
    form = client.post("/v1/audits", files={"image": ("ad.png", png(), "image/png")},
                       data={"text": "花草" + TRIGGER, "explain": "true"})
    assert form.status_code == 200 and form.json()["evidence"]["copy"]["spans"][0]["text"].find("赌") >= 0
    plain = client.post("/v1/audits", files={"image": ("ad.png", png(), "image/png")}, data={"text": "花草"})
    assert plain.status_code == 200 and "evidence" not in plain.json()


def test_a_bad_explain_value_is_a_422(client):
    assert audit(client, "春山", explain="maybe").status_code == 422
    assert audit(client, "春山", explain=[1]).status_code == 422
    bad_item = {"items": [{"image_base64": base64.b64encode(png()).decode(), "text": "春山", "explain": {}}]}
    assert client.post("/v1/audits:batch", json=bad_item).status_code == 422
    form = client.post("/v1/audits", files={"image": ("ad.png", png(), "image/png")},
                       data={"text": "春山", "explain": "banana"})
    assert form.status_code == 422 and "explain" in form.json()["error"]


def test_every_violation_class_has_an_article():
    table = article_table()
    assert "legal advice" in table["note"] and table["law"] == "中华人民共和国广告法"
    for violation in TASKS["violation"][1:]:
        entries = table["articles"][violation]
        assert entries and all(entry["article"].startswith("第") and entry["summary"] for entry in entries)
    assert set(table["articles"]) == set(TASKS["violation"][1:])


def test_clauses_end_at_punctuation_symbols_and_spaces_but_not_inside_a_word():
    text = "年化收益15%，¥99→包邮 立即抢购"
    found = [[text[start:end] for start, end in words] for words in clauses(text, 64)]
    assert found == [["年化", "收益", "15%"], ["99"], ["包邮"], ["立即", "抢购"]]
    assert clauses(text, 4) == [[(0, 2), (2, 4)]]  # only the first max_chars characters
    assert clauses("！？ →\t\n\u200b", 64) == []  # control and format characters end a clause too


def test_word_runs_are_every_run_of_adjacent_words_up_to_the_longest():
    words = [(0, 2), (2, 3), (3, 6)]
    assert word_runs(words, 2) == [(0, 2), (2, 3), (3, 6), (0, 3), (2, 6)]
    assert word_runs(words, 5, 3) == [(0, 6)]
    assert word_runs(words, 2, 2) == [(0, 3), (2, 6)]


def test_the_strongest_spans_do_not_overlap_and_reach_half_the_best():
    scored = [((0, 4), 0.9), ((2, 6), 0.8), ((6, 8), 0.5), ((8, 9), 0.44), ((9, 12), -0.1)]
    assert strongest(scored) == [((0, 4), 0.9), ((6, 8), 0.5)]  # (2, 6) overlaps the best; 0.44 < 0.9 / 2
    assert strongest([((0, 2), -0.1), ((2, 4), 0.0)]) == []
    assert len(strongest([((k, k + 1), 0.5) for k in range(10)])) == 3


def test_a_span_narrows_to_its_shortest_run_that_keeps_half_its_drop():
    span = ((10, 20), 0.8)
    runs = [((10, 14), 0.7), ((14, 16), 0.5), ((16, 17), 0.3), ((8, 12), 0.9), ((14, 18), 0.6)]
    assert narrowest(span, runs) == ((14, 16), 0.5)  # (16, 17) keeps too little, (8, 12) is not inside
    assert narrowest(span, [((16, 17), 0.3)]) == span
    assert refined([span, ((0, 5), 0.6)], runs) == [((0, 5), 0.6), ((14, 16), 0.5)]  # strongest first again
    assert refined([], runs) == []


def test_the_benchmark_joins_the_copy_into_one_clause_and_finds_the_phrase_again():
    row = {"text": "这款咖啡豆，稳赚不赔月入过万，到手仅599元", "labels": {"violation": "financial_promise"}}
    clean = {"text": "这款咖啡豆，到手仅599元", "labels": {"violation": "none"}}
    [(joined_row, span)] = joined([(row, (6, 14)), (clean, (0, 1))])  # a copy without the phrase is left out
    assert joined_row["text"] == "这款咖啡豆稳赚不赔月入过万到手仅599元" and span == (5, 13)
    assert joined_row["labels"] == row["labels"] and len(clauses(joined_row["text"], 64)) == 1


def test_the_benchmark_measures_how_tight_the_top_span_is():
    text = "这款咖啡豆，稳赚不赔月入过万，到手仅599元"
    narrowed = {"copy": {"spans": [{"start": 6, "end": 8}, {"start": 0, "end": 5}]}}
    assert top_span_figures(narrowed, text, (6, 14), 64) == {"hit": True, "length": 2, "inside": 1.0,
                                                               "narrowed": True}
    clause = {"copy": {"spans": [{"start": 15, "end": 23}]}}  # the price clause, whole: misses the phrase
    assert top_span_figures(clause, text, (6, 14), 64) == {"hit": False, "length": 8, "inside": 0.0,
                                                             "narrowed": False}
    straddling = {"copy": {"spans": [{"start": 4, "end": 8}]}}  # not inside one clause: never narrowed
    assert top_span_figures(straddling, text, (6, 14), 64) == {"hit": True, "length": 4, "inside": 0.5,
                                                                 "narrowed": False}
    assert top_span_figures({"copy": {"spans": []}}, text, (6, 14), 64)["hit"] is False
