"""Evidence from the model (`explain=true`, service/evidence.py) through the FastAPI app and the embedded backend.

The model is a tiny AuditModel trained here for a few dozen steps on copies made of a small pool of
characters, where the violation is `gambling` exactly when the copy holds the phrase 赌场 (and the
picture is a random flat colour, so it carries nothing): occlusion must then find 赌场 as the top span.
"""

from __future__ import annotations

import base64
import io
import json

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
from adaudit.service.evidence import article_table, merge_spans
from adaudit.service.settings import GatewaySettings
from adaudit.training.presets import preset_config

POOL = "春夏秋冬山水花草鱼鸟风云日月星光美好新鲜香甜家居生活精选实用大方"
TRIGGER = "赌场"
GRID, MAX_CHARS = 3, 30


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


def phrase_model(steps: int = 50) -> AuditModel:
    """A tiny model whose violation (and verdict) depends on TRIGGER only: a few seconds of training."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = AuditModel(preset_config("tiny", len(build_vocabulary())))
    processor = AuditProcessor(model.config)
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3)
    gambling = TASKS["violation"].index("gambling")
    for _ in range(steps):
        texts, positive = phrase_copies(rng, 32)
        input_ids, attention_mask = processor.texts(texts)
        colours = torch.randint(0, 256, (32, 3, 1, 1), dtype=torch.uint8).expand(32, 3, 32, 32).contiguous()
        logits = model(pixel_values=processor.normalise(colours), input_ids=input_ids,
                       attention_mask=attention_mask).logits
        labels = torch.tensor(positive)
        loss = torch.nn.functional.cross_entropy(logits["violation"], labels.long() * gambling) + \
            torch.nn.functional.cross_entropy(logits["verdict"], labels.long())
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
                               explain_grid=GRID, explain_max_chars=MAX_CHARS, max_batch=4)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def png(size=(80, 60), colour=(90, 140, 200)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
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


def test_the_phrase_the_model_reacts_to_is_the_top_span(client):
    copies = [TRIGGER + "春夏秋冬山水花", "山水花草鱼鸟" + TRIGGER + "风云日月", "美好新鲜香甜家居生活" + TRIGGER,
              "Ａ级 abc，" + TRIGGER + "！精选实用"]  # full-width and ASCII words: offsets still map to characters
    for text in copies:
        answer = audit(client, text, explain=True).json()
        evidence = answer["evidence"]
        assert evidence["violation"] == "gambling" and evidence["probability"] > 0.5
        spans = evidence["copy"]["spans"]
        check_spans(text, spans)
        start = text.index(TRIGGER)
        assert overlaps(spans[0], start, start + len(TRIGGER)), (text, spans)
        assert spans[0]["score"] > 0.3 and spans == sorted(spans, key=lambda s: -s["score"])
        assert {a["violation"] for a in evidence["articles"]} == {"gambling"}
        assert "第九条" in evidence["articles"][0]["article"] and "not legal advice" in evidence["note"]


def test_an_approved_ad_explains_its_likeliest_violation_and_the_grid_has_its_shape(client):
    text = "春夏秋冬山水花草鱼鸟风云"
    response = audit(client, text, image=png((80, 60)), explain=True)
    answer = response.json()
    assert answer["violation"] == "none" and answer["suggestion"] == "pass", answer
    evidence = answer["evidence"]
    assert evidence["violation"] in TASKS["violation"][1:]
    picture = evidence["picture"]
    assert picture["grid"] == GRID and len(picture["scores"]) == GRID
    assert all(len(row) == GRID for row in picture["scores"])
    assert len(picture["cells"]) <= 3
    for cell in picture["cells"]:
        x0, y0, x1, y1 = cell["box"]
        assert 0 <= x0 < x1 <= 80 and 0 <= y0 < y1 <= 60 and 0 <= cell["row"] < GRID
    windows = len(text) - 2 + 1  # one variant per 2-character window (every character is a token), plus the grid
    assert evidence["variants"] == windows + GRID * GRID
    check_spans(text, evidence["copy"]["spans"])


def test_the_copy_explained_is_capped(client):
    text = "春夏秋冬山水花草鱼鸟风云日月星光美好新鲜香甜家居生活精选实用大方" + TRIGGER  # trigger past MAX_CHARS
    evidence = audit(client, text, explain=True).json()["evidence"]
    assert evidence["copy"]["explained_chars"] == MAX_CHARS
    assert all(span["end"] <= MAX_CHARS for span in evidence["copy"]["spans"])
    assert evidence["variants"] == MAX_CHARS - 1 + GRID * GRID


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


def test_windows_merge_where_they_overlap_or_touch():
    offsets = [(0, 0)] + [(i, i + 1) for i in range(8)] + [(0, 0)]  # [CLS] 8 characters [SEP]
    positions = list(range(1, 9))
    windows = [(a, a + 2) for a in range(7)]
    drops = [0.0, 0.1, 0.9, 0.8, 0.0, 0.0, 0.5]  # windows 2 and 3 overlap (characters 2..4), 6 stands apart
    spans = merge_spans(drops, windows, positions, offsets)
    assert [(s["start"], s["end"], s["score"]) for s in spans] == [(2, 5, 0.9), (6, 8, 0.5)]
    assert merge_spans([-0.1, -0.2], windows[:2], positions, offsets) == []
