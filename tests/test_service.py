"""The audit gateway end to end with the embedded backend: tiny models, a real SQLite log, TestClient.

Two tiny models are saved as MODEL_DIR/student and MODEL_DIR/teacher. Their verdict and
violation heads get opposite biases (the student approves with violation "none", the teacher
rejects for "gambling"), so every shadow comparison is a disagreement and every canary answer
is recognisable.
"""

from __future__ import annotations

import asyncio
import base64
import io
import re
import sqlite3
import struct
import threading
import time
import zlib
from datetime import datetime, timezone
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import ValidationError
from sqlalchemy import create_engine, text

from adaudit.training.presets import preset_config
from adaudit.models.labels import TASKS
from adaudit.models.modeling import AuditModel
from adaudit.models.tokenizer import build_vocabulary
from adaudit.service.app import create_app
from adaudit.service.decision_log import DecisionLog, PostgresDecisionWriter, SqliteDecisionWriter
from adaudit.service.encoding import ModelSpec, Prediction
from adaudit.service.gateway import backends_by_target
from adaudit.service.metrics import GatewayMetrics
from adaudit.service.policy import TrafficPolicy
from adaudit.service.settings import GatewaySettings
from adaudit.service.shadow import ShadowJob, ShadowMirror

COPY = "限时特价，全网最低价！"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def biased_model(seed: int, verdict: str, violation: str) -> AuditModel:
    torch.manual_seed(seed)
    model = AuditModel(preset_config("tiny", len(build_vocabulary()))).eval()
    with torch.no_grad():
        model.heads["verdict"].bias[TASKS["verdict"].index(verdict)] += 8.0
        model.heads["violation"].bias[TASKS["violation"].index(violation)] += 8.0
    return model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    biased_model(0, "approve", "none").save_pretrained(folder / "student")
    biased_model(1, "reject", "gambling").save_pretrained(folder / "teacher")
    return folder


def settings(model_dir, tmp_path, **overrides) -> GatewaySettings:
    values = dict(backend="embedded", model_dir=model_dir, database_url=f"sqlite:///{tmp_path / 'log.db'}",
                  max_batch=4, max_text_chars=50, max_image_bytes=100_000, max_image_pixels=1_000_000,
                  max_body_bytes=300_000, review_sample_rate=0.0)  # the review queue: the policy's alone
    return GatewaySettings(**{**values, **overrides})


@pytest.fixture
def client(model_dir, tmp_path):
    with TestClient(create_app(settings(model_dir, tmp_path))) as test_client:
        yield test_client


def png(size=(64, 48), colour="red") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def noise_png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.frombytes("RGB", (side, side), torch.randint(0, 256, (side * side * 3,), dtype=torch.uint8).numpy()
                    .tobytes()).save(buffer, "PNG")
    return buffer.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A few hundred bytes that declare a width x height image: a decompression bomb's header."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + \
        chunk(b"IEND", b"")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def audit_json(client, image=None, copy=COPY, **extra):
    return client.post("/v1/audits", json={"image_base64": b64(image or png()), "text": copy, **extra})


def metric(client, name: str, **labels) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in client.get("/metrics").text.splitlines():
        match = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(3))
    return total


def wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


# --- the happy paths -----------------------------------------------------------------------
def test_audit_json_returns_labels_model_and_timings(client):
    answer = audit_json(client, ad_id="ad-1")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["verdict"], body["violation"], body["model"], body["version"], body["arm"]) == \
        ("approve", "none", "student", "1", "primary")
    assert body["ad_id"] == "ad-1" and len(body["request_id"]) == 32
    assert 0.5 < body["verdict_score"] <= 1 and 0 < body["violation_score"] <= 1
    assert set(body["attributes"]) == set(TASKS) - {"verdict", "violation"}
    assert all(label in TASKS[task] for task, label in body["attributes"].items())
    assert set(body["scores"]) == set(TASKS)
    assert body["timings"]["total_ms"] >= body["timings"]["inference_ms"] > 0


def test_multipart_and_json_preprocess_identically(client):
    image = png((80, 60), "blue")
    via_json = audit_json(client, image).json()
    via_form = client.post("/v1/audits", files={"image": ("ad.png", image, "image/png")},
                           data={"text": COPY, "ad_id": "ad-2"})
    assert via_form.status_code == 200, via_form.text
    assert via_form.json()["scores"] == via_json["scores"]
    assert via_form.json()["ad_id"] == "ad-2"


def test_batch_answers_in_order_and_matches_single_audits(client):
    images = [png(colour=c) for c in ("red", "green", "white")]
    copies = [COPY, "纯天然蜂蜜，产地直供", "新款跑鞋"]
    batch = client.post("/v1/audits:batch", json={"items": [{"image_base64": b64(i), "text": t, "ad_id": f"b{n}"}
                                                            for n, (i, t) in enumerate(zip(images, copies))]})
    assert batch.status_code == 200, batch.text
    items = batch.json()["items"]
    assert [item["ad_id"] for item in items] == ["b0", "b1", "b2"]
    assert len({item["request_id"] for item in items}) == 3
    for item, image, copy in zip(items, images, copies):
        single = audit_json(client, image, copy).json()
        assert item["attributes"] == single["attributes"]
        assert item["scores"] == pytest.approx(single["scores"], abs=1e-4)
    bare_list = client.post("/v1/audits:batch", json=[{"image_base64": b64(images[0]), "text": COPY}])
    assert bare_list.status_code == 200 and len(bare_list.json()["items"]) == 1


def test_every_decision_is_logged_and_readable(client, tmp_path):
    answers = [audit_json(client, ad_id=f"log-{i}").json() for i in range(3)]
    logged = client.get(f"/v1/audits/{answers[1]['request_id']}")
    assert logged.status_code == 200
    decision = logged.json()
    for field in ("request_id", "ad_id", "verdict", "violation", "attributes", "scores", "model", "version", "arm"):
        assert decision[field] == answers[1][field], field
    assert decision["feedback"] is None and decision["latency_ms"] > 0
    with create_engine(f"sqlite:///{tmp_path / 'log.db'}").connect() as connection:
        rows = connection.execute(text("SELECT request_id, model, version, arm, ad_id, latency_ms FROM decisions")).all()
    assert {row[0] for row in rows} == {a["request_id"] for a in answers}
    assert all(row[1:4] == ("student", "1", "primary") and row[5] > 0 for row in rows)


def test_feedback_joins_decisions_into_reviewed_accuracy(client):
    first, second = (audit_json(client).json()["request_id"] for _ in range(2))
    right = client.post(f"/v1/audits/{first}/feedback", json={"labels": {"verdict": "approve", "violation": "none"},
                                                              "reviewer": "r1"})
    assert right.status_code == 200, right.text
    assert right.json()["correct"] == {"verdict": True, "violation": True}
    wrong = client.post(f"/v1/audits/{second}/feedback", json={"labels": {"verdict": "reject"}})
    assert wrong.json()["correct"] == {"verdict": False}
    assert client.get(f"/v1/audits/{first}").json()["feedback"] == {"verdict": "approve", "violation": "none"}
    accuracy = {(r["model"], r["task"]): r for r in client.get("/v1/reviews/accuracy").json()}
    assert accuracy[("student", "verdict")] == {"model": "student", "version": "1", "task": "verdict", "reviewed": 2,
                                                "correct": 1, "accuracy": 0.5}
    assert accuracy[("student", "violation")]["accuracy"] == 1.0
    assert metric(client, "adaudit_reviewed_total", model="student", task="verdict", outcome="correct") == 1
    assert metric(client, "adaudit_reviewed_total", model="student", task="verdict", outcome="incorrect") == 1
    again = client.post(f"/v1/audits/{first}/feedback", json={"labels": {"verdict": "approve"}})
    assert again.status_code == 409 and "already" in again.json()["error"]


def test_metrics_have_their_names_and_move_with_traffic(client):
    names = ("adaudit_request_duration_seconds", "adaudit_inference_duration_seconds", "adaudit_predictions_total",
             "adaudit_shadow_agreements_total", "adaudit_shadow_disagreements_total", "adaudit_shadow_queue_depth",
             "adaudit_shadow_dropped_total", "adaudit_reviewed_total", "adaudit_errors_total",
             "adaudit_in_flight_requests")
    exposition = client.get("/metrics")
    assert exposition.headers["content-type"].startswith("text/plain")
    for name in names:
        assert f"# TYPE {name} " in exposition.text, name
    route = dict(route="/v1/audits", model="student", outcome="ok")
    before = metric(client, "adaudit_request_duration_seconds_count", **route)
    predictions = metric(client, "adaudit_predictions_total", model="student", task="verdict", label="approve")
    for _ in range(3):
        audit_json(client)
    assert metric(client, "adaudit_request_duration_seconds_count", **route) == before + 3
    assert metric(client, "adaudit_inference_duration_seconds_count", model="student") >= 3
    assert metric(client, "adaudit_predictions_total", model="student", task="verdict", label="approve") == \
        predictions + 3
    client.post("/v1/audits", content=b"x", headers={"content-type": "text/plain"})
    assert metric(client, "adaudit_errors_total", kind="unsupported_media_type") == 1
    assert metric(client, "adaudit_request_duration_seconds_count", route="/v1/audits",
                  outcome="client_error") == 1
    assert metric(client, "adaudit_in_flight_requests") == 1  # the /metrics request itself


def test_health_and_openapi(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    spec = client.get("/openapi.json").json()
    for path in ("/v1/audits", "/v1/audits:batch", "/v1/audits/{request_id}", "/v1/audits/{request_id}/feedback",
                 "/healthz", "/readyz", "/metrics", "/v1/reviews/accuracy", "/v1/shadow/disagreements"):
        assert path in spec["paths"], path
    body = spec["paths"]["/v1/audits"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(body)
    assert client.get("/docs").status_code == 200


# --- shadow and canary ---------------------------------------------------------------------
def test_shadow_mirrors_compares_and_stores_disagreements(model_dir, tmp_path):
    with TestClient(create_app(settings(model_dir, tmp_path, shadow_fraction=1.0))) as client:
        answers = [audit_json(client, ad_id=f"s{i}").json() for i in range(4)]
        assert all(a["shadowed"] and a["model"] == "student" for a in answers)
        pair = dict(primary="student", primary_version="1", shadow="teacher")  # every shadow metric: the version
        wait_for(lambda: metric(client, "adaudit_shadow_comparisons_total", **pair) == 4)
        assert metric(client, "adaudit_shadow_disagreements_total", task="verdict", primary_label="approve",
                      shadow_label="reject", **pair) == 4
        assert metric(client, "adaudit_shadow_disagreements_total", task="violation", primary_label="none",
                      shadow_label="gambling", **pair) == 4
        assert metric(client, "adaudit_shadow_agreements_total", **pair) == 0
        wait_for(lambda: len(client.get("/v1/shadow/disagreements").json()) == 4)
        stored = {d["request_id"]: d for d in client.get("/v1/shadow/disagreements").json()}
        assert set(stored) == {a["request_id"] for a in answers}
        first = stored[answers[0]["request_id"]]
        assert first["primary"]["labels"]["verdict"] == "approve" and first["shadow"]["labels"]["verdict"] == "reject"
        assert (first["shadow_model"], first["shadow_version"]) == ("teacher", "1")
        assert (first["primary_model"], first["primary_version"]) == ("student", "1")
        targets = client.get("/readyz").json()["targets"]
        assert {arm: (t["model"], t["ready"]) for arm, t in targets.items()} == \
            {"primary": ("student", True), "shadow": ("teacher", True)}


def test_shadow_metrics_keep_a_canary_version_apart_from_the_primary_version(model_dir, tmp_path):
    """Version 1 of `audited` (the student's weights) is primary, version 2 (the teacher's) the canary, and
    every ad is mirrored to the teacher: the canary version agrees with it on every ad, the primary version
    on none. Counted per version they stay 1.0 and 0.0; blended they would be the canary's share."""
    versions = tmp_path / "versions"
    for version, source in (("1", "student"), ("2", "teacher")):
        (versions / "audited").mkdir(parents=True, exist_ok=True)
        (versions / "audited" / version).symlink_to(model_dir / source)
    (versions / "teacher").symlink_to(model_dir / "teacher")
    with TestClient(create_app(settings(versions, tmp_path, primary_model="audited", primary_version="1",
                                        canary_model="audited", canary_version="2", canary_fraction=0.5,
                                        shadow_fraction=1.0))) as client:
        arms = [audit_json(client, ad_id=f"v{i}").json()["arm"] for i in range(12)]
        assert set(arms) == {"primary", "canary"}
        wait_for(lambda: metric(client, "adaudit_shadow_comparisons_total") == 12)
        for version, arm, agreeing in (("1", "primary", 0), ("2", "canary", arms.count("canary"))):
            labels = dict(primary="audited", primary_version=version, shadow="teacher")
            assert metric(client, "adaudit_shadow_comparisons_total", **labels) == arms.count(arm)
            assert metric(client, "adaudit_shadow_agreements_total", task="verdict", **labels) == agreeing
        assert metric(client, "adaudit_shadow_disagreements_total", primary_version="2") == 0
        wait_for(lambda: len(client.get("/v1/shadow/disagreements").json()) == arms.count("primary"))
        rows = client.get("/v1/shadow/disagreements").json()
        assert {(r["primary_model"], r["primary_version"]) for r in rows} == {("audited", "1")}


def test_a_failing_shadow_never_touches_the_answer(model_dir, tmp_path):
    with TestClient(create_app(settings(model_dir, tmp_path, shadow_fraction=1.0, shadow_model="absent"))) as client:
        answer = audit_json(client)
        assert answer.status_code == 200 and answer.json()["verdict"] == "approve"
        wait_for(lambda: metric(client, "adaudit_errors_total", kind="shadow_failed") == 1)


def test_shadow_queue_overflow_is_dropped_and_counted():
    async def scenario():
        metrics = GatewayMetrics()
        policy = TrafficPolicy(GatewaySettings(backend="triton", shadow_fraction=1.0))
        mirror = ShadowMirror(policy.shadow, None, None, metrics, queue_size=2, workers=1)  # workers not started
        job = ShadowJob("r", "student", "1", Prediction({}, {}), {}, (), None)
        return [mirror.offer(job) for _ in range(3)], metrics

    import asyncio
    accepted, metrics = asyncio.run(scenario())
    assert accepted == [True, True, False]
    assert metrics.shadow_dropped.labels("student", "1")._value.get() == 1
    assert metrics.shadow_queue_depth.labels("student", "1")._value.get() == 2


def test_shadow_batches_queued_ads_and_keeps_to_its_busy_fraction():
    """A worker takes up to shadow_batch queued ads per shadow call; with busy_fraction f, after a call
    that took d seconds the next starts at least d * (1 - f) / f later. The shadow model here is a fake
    (a coroutine that sleeps d and agrees), standing in for the backend call."""
    import asyncio

    duration, fraction = 0.05, 0.25

    async def scenario():
        metrics = GatewayMetrics()
        policy = TrafficPolicy(GatewaySettings(backend="triton", shadow_fraction=1.0))
        calls = []

        async def fake_shadow(jobs):
            calls.append((asyncio.get_running_loop().time(), len(jobs)))
            await asyncio.sleep(duration)
            spec = ModelSpec("teacher", "1", 32, 8, {})
            return spec, [job.prediction for job in jobs]

        mirror = ShadowMirror(policy.shadow, fake_shadow, None, metrics, queue_size=64, workers=1, batch=4,
                              busy_fraction=fraction)
        answer = Prediction({"verdict": "approve", "violation": "none"}, {"verdict": 0.9, "violation": 0.9})
        for i in range(10):
            assert mirror.offer(ShadowJob(f"r{i}", "student", "1", answer, {}, (), None))
        mirror.start()
        await asyncio.wait_for(mirror.drain(), 10)
        await mirror.stop()
        return calls, metrics

    calls, metrics = asyncio.run(scenario())
    assert [size for _, size in calls] == [4, 4, 2]
    gaps = [later - earlier for (earlier, _), (later, _) in zip(calls, calls[1:])]
    assert all(gap >= duration / fraction * 0.95 for gap in gaps), gaps  # the call, then three times as long idle
    assert metrics.shadow_comparisons.labels("student", "1", "teacher")._value.get() == 10
    assert metrics.shadow_queue_depth.labels("student", "1")._value.get() == 0
    with pytest.raises(ValueError, match="busy_fraction"):
        ShadowMirror(None, None, None, metrics, queue_size=1, workers=1, busy_fraction=0)


def test_a_failing_canary_falls_back_to_the_primary(model_dir, tmp_path):
    """The canary's model is missing (a rollout gone wrong): the primary answers every ad, each fallback is
    counted, and the decision log records the arm that really answered."""
    with TestClient(create_app(settings(model_dir, tmp_path, canary_model="nowhere", canary_fraction=1.0))) as client:
        bodies = [audit_json(client, ad_id=f"ad-{i}") for i in range(3)]
        assert [b.status_code for b in bodies] == [200] * 3, bodies[0].text
        assert {(b.json()["model"], b.json()["arm"]) for b in bodies} == {("student", "primary")}
        assert metric(client, "adaudit_errors_total", kind="canary_failed") == 3
        explained = audit_json(client, ad_id="ad-explained", explain=True)  # its evidence comes from the primary too
        assert explained.status_code == 200 and explained.json()["arm"] == "primary", explained.text
        assert explained.json()["evidence"]["variants"] >= 1
        logged = client.get(f"/v1/audits/{bodies[0].json()['request_id']}").json()
        assert (logged["model"], logged["arm"]) == ("student", "primary")
        ready = client.get("/readyz").json()
        assert ready["ready"] is True and ready["models"] == {"student": True, "nowhere": False}


def test_canary_is_sticky_per_ad_id(model_dir, tmp_path):
    with TestClient(create_app(settings(model_dir, tmp_path, canary_model="teacher", canary_fraction=0.5))) as client:
        arms = {}
        for round_ in range(2):
            for i in range(12):
                body = audit_json(client, ad_id=f"ad-{i}").json()
                assert body["model"] == ("teacher" if body["arm"] == "canary" else "student")
                assert body["verdict"] == ("reject" if body["arm"] == "canary" else "approve")
                assert arms.setdefault(f"ad-{i}", body["arm"]) == body["arm"]
        assert set(arms.values()) == {"primary", "canary"}
    policy = TrafficPolicy(settings(model_dir, tmp_path, canary_model="teacher", canary_fraction=0.3))
    wider = TrafficPolicy(settings(model_dir, tmp_path, canary_model="teacher", canary_fraction=0.6))
    for i in range(200):  # raising the fraction only moves ads into the canary
        if policy.target(f"ad-{i}").arm == "canary":
            assert wider.target(f"ad-{i}").arm == "canary"


# --- bad input: 4xx JSON naming the problem, never a 500 ----------------------------------
def truncated_png() -> bytes:
    data = noise_png(40)
    return data[: len(data) // 2]


BAD_AUDITS = {
    "not an image": (lambda: {"json": {"image_base64": b64(b"hello, not an image"), "text": COPY}}, 400, "not_an_image"),
    "truncated image": (lambda: {"json": {"image_base64": b64(truncated_png()), "text": COPY}}, 400, "corrupt_image"),
    "decompression bomb header": (lambda: {"json": {"image_base64": b64(png_declaring(60000, 60000)), "text": COPY}},
                                  413, "decompression_bomb"),
    "too many pixels": (lambda: {"json": {"image_base64": b64(png((1200, 1000))), "text": COPY}}, 413,
                        "decompression_bomb"),
    "image over the limit": (lambda: {"files": {"image": ("a.png", noise_png(200), "image/png")},
                                      "data": {"text": COPY}}, 413, "image_too_large"),
    "body over the limit": (lambda: {"content": b"{" + b" " * 400_000 + b"}",
                                     "headers": {"content-type": "application/json"}}, 413, "body_too_large"),
    "empty text": (lambda: {"json": {"image_base64": b64(png()), "text": ""}}, 400, "text_empty"),
    "whitespace text": (lambda: {"json": {"image_base64": b64(png()), "text": " \n\t\u3000"}}, 400, "text_empty"),
    "text too long": (lambda: {"json": {"image_base64": b64(png()), "text": "字" * 51}}, 422, "text_too_long"),
    "non-UTF-8 form text": (lambda: {"files": {"image": ("a.png", png(), "image/png")},
                                     "data": {"text": "caf\xe9".encode("latin-1")}}, 400, "text_not_utf8"),
    "non-UTF-8 JSON body": (lambda: {"content": '{"image_base64": "", "text": "café"}'.encode("latin-1"),
                                     "headers": {"content-type": "application/json"}}, 400, "body_not_utf8"),
    "lone surrogate": (lambda: {"content": ('{"image_base64": "%s", "text": "\\ud800"}' % b64(png())).encode(),
                                "headers": {"content-type": "application/json"}}, 400, "text_not_utf8"),
    "wrong content type": (lambda: {"content": b"text=hello", "headers": {"content-type": "text/plain"}}, 415,
                           "unsupported_media_type"),
    "no content type": (lambda: {"content": b"{}"}, 415, "unsupported_media_type"),
    "malformed JSON": (lambda: {"content": b'{"text": ', "headers": {"content-type": "application/json"}}, 400,
                       "invalid_json"),
    "invalid base64": (lambda: {"json": {"image_base64": "@@@not base64@@@", "text": COPY}}, 400, "invalid_base64"),
    "missing image": (lambda: {"json": {"text": COPY}}, 422, "invalid_request"),
    "unknown field": (lambda: {"json": {"image_base64": b64(png()), "text": COPY, "colour": 1}}, 422,
                      "invalid_request"),
    "form without text": (lambda: {"files": {"image": ("a.png", png(), "image/png")}}, 422, "invalid_request"),
    # just over max_image_bytes, so the body (sized for the limit's base64) still fits
    "base64 image over the limit": (lambda: {"json": {"image_base64": b64(png().ljust(100_200, b"\0")), "text": COPY}},
                                    413, "image_too_large"),
    # PostgreSQL refuses NUL in text: it must be a 422 here, not a failed decision-log commit (503)
    "ad_id with a NUL": (lambda: {"json": {"image_base64": b64(png()), "text": COPY, "ad_id": "ad\u00001"}}, 422,
                         "invalid_request"),
    "form ad_id with a control character": (lambda: {"files": {"image": ("a.png", png(), "image/png")},
                                                      "data": {"text": COPY, "ad_id": "ad\x1b[31m"}}, 422,
                                            "invalid_request"),
}


@pytest.mark.parametrize("case", list(BAD_AUDITS))
def test_bad_audit_input_is_a_4xx_json_error(client, case):
    make, status, kind = BAD_AUDITS[case]
    answer = client.post("/v1/audits", **make())
    assert answer.status_code == status, answer.text
    assert answer.json()["kind"] == kind and answer.json()["error"]


def test_bad_batches_and_feedback_are_4xx_json_errors(client):
    item = {"image_base64": b64(png()), "text": COPY}
    over = client.post("/v1/audits:batch", json={"items": [item] * 5})
    assert (over.status_code, over.json()["kind"]) == (413, "batch_too_large")
    assert "limit is 4" in over.json()["error"]
    empty = client.post("/v1/audits:batch", json={"items": []})
    assert (empty.status_code, empty.json()["kind"]) == (422, "batch_empty")
    named = client.post("/v1/audits:batch", json=[item, {"image_base64": b64(b"nope"), "text": COPY}])
    assert named.status_code == 400 and named.json()["error"].startswith("items[1].image")
    assert client.post("/v1/audits:batch", files={"image": ("a.png", png(), "image/png")}).status_code == 415

    request_id = audit_json(client).json()["request_id"]
    unknown = client.post("/v1/audits/0123456789abcdef/feedback", json={"labels": {"verdict": "approve"}})
    assert (unknown.status_code, unknown.json()["kind"]) == (404, "unknown_request")
    label = client.post(f"/v1/audits/{request_id}/feedback", json={"labels": {"verdict": "maybe"}})
    assert (label.status_code, label.json()["kind"]) == (422, "unknown_label")
    assert "approve, reject" in label.json()["error"]
    task = client.post(f"/v1/audits/{request_id}/feedback", json={"labels": {"mood": "happy"}})
    assert (task.status_code, task.json()["kind"]) == (422, "unknown_label")
    nothing = client.post(f"/v1/audits/{request_id}/feedback", json={"labels": {}})
    assert nothing.status_code == 422
    nul = client.post(f"/v1/audits/{request_id}/feedback", json={"labels": {"verdict": "reject"}, "reviewer": "a\u0000b"})
    assert (nul.status_code, nul.json()["kind"]) == (422, "invalid_request") and "U+0000" in nul.json()["error"]
    assert client.get(f"/v1/audits/{request_id}").json()["feedback"] is None  # nothing stored
    assert client.get("/v1/audits/nope").status_code == 404
    assert client.get("/v1/nowhere").json()["kind"] == "not_found"
    assert client.get("/v1/audits:batch").status_code == 405


def test_model_not_ready_is_503_and_recovers_by_itself(model_dir, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    with TestClient(create_app(settings(models, tmp_path))) as client:
        down = audit_json(client)
        assert down.status_code == 503 and down.json()["kind"] == "model_not_ready"
        assert "student" in down.json()["error"] and down.headers["retry-after"]
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["ready"] is False
        assert metric(client, "adaudit_request_duration_seconds_count", route="/v1/audits", model="student",
                      outcome="unavailable") == 1
        (models / "student").symlink_to(model_dir / "student")
        assert client.get("/readyz").status_code == 200
        assert audit_json(client).status_code == 200


def test_a_failing_log_or_an_unexpected_error_never_gives_a_500(client):
    gateway = client.app.state.gateway

    def broken(*_):
        raise RuntimeError("disk full")

    gateway.log.writer.add_decisions = broken
    gateway.log.writer.add_decisions_now = lambda rows: False  # as it answers for any error: the thread path then fails
    answer = audit_json(client)
    assert answer.status_code == 503  # no answer without its decision-log row (tests/test_reliability.py)
    assert answer.json()["kind"] == "decision_log_unavailable"
    assert metric(client, "adaudit_errors_total", kind="decision_log_unavailable") == 1

    async def crash(*_):
        raise RuntimeError("a bug")

    gateway.audit = crash
    failed = audit_json(client)
    assert failed.status_code == 503 and failed.json()["kind"] == "internal"
    assert client.get("/healthz").status_code == 200  # the worker lives on


def test_one_small_lone_ad_is_decoded_on_the_event_loop_and_others_in_a_worker_thread(client, monkeypatch):
    """One small ad with no other audit in flight is decoded and encoded inline (no thread hop at batch 1);
    an ad that comes while another is in flight, a batch, or a large picture, in a worker thread."""
    gateway = client.app.state.gateway
    decoded_on, loop_thread, second_decoded = [], [], threading.Event()
    decode, infer = gateway._decode_and_encode, gateway.backend.infer

    def recording_decode(*args):
        decoded_on.append(threading.get_ident())
        if len(decoded_on) == 2:
            second_decoded.set()
        return decode(*args)

    async def infer_once_both_are_in(*args):
        loop_thread.append(threading.get_ident())
        if len(loop_thread) == 1:  # the first audit waits here until the second has been decoded
            await asyncio.to_thread(second_decoded.wait, 30)
        return await infer(*args)

    gateway._decode_and_encode, gateway.backend.infer = recording_decode, infer_once_both_are_in
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(audit_json, client)
        deadline = time.monotonic() + 30
        while not decoded_on and time.monotonic() < deadline:
            time.sleep(0.005)
        second = pool.submit(audit_json, client)
        assert first.result().status_code == 200 and second.result().status_code == 200
    assert second_decoded.is_set() and len(decoded_on) == 2
    assert decoded_on[0] == loop_thread[0]  # alone when it came in: inline
    assert decoded_on[1] != loop_thread[0]  # the first one in flight: a worker thread
    item = {"image_base64": b64(png()), "text": COPY}
    assert client.post("/v1/audits:batch", json={"items": [item, item]}).status_code == 200
    assert decoded_on[-1] != loop_thread[0]  # a batch: a worker thread
    monkeypatch.setattr("adaudit.service.gateway.INLINE_IMAGE_BYTES", len(png()) - 1)
    assert audit_json(client).status_code == 200
    assert decoded_on[-1] != loop_thread[0]  # a picture over the inline limit: a worker thread
    monkeypatch.undo()
    assert audit_json(client).status_code == 200
    assert decoded_on[-1] == loop_thread[0] and gateway.audits_in_flight == 0  # alone and small again: inline


def test_a_lone_audit_is_logged_in_place_and_a_held_lock_sends_it_to_a_worker_thread(client, tmp_path, monkeypatch):
    """A lone audit's row is committed on the event loop when SQLite's write lock is free that instant;
    with the lock held elsewhere the in-place write gives up at once (nothing written) and the thread
    path waits for the lock; every CHECKPOINT_EVERY in-place rows a WAL checkpoint runs in a thread."""
    gateway = client.app.state.gateway
    in_place, in_threads, checkpoints = [], [], []
    writer = gateway.log.writer
    add_now, add, checkpoint = writer.add_decisions_now, writer.add_decisions, writer.checkpoint

    def recording_add_now(rows):
        written = add_now(rows)
        in_place.append((threading.get_ident(), written))
        return written

    def recording_add(rows):
        in_threads.append(threading.get_ident())
        return add(rows)

    def recording_checkpoint():
        checkpoints.append(threading.get_ident())
        checkpoint()

    monkeypatch.setattr(writer, "add_decisions_now", recording_add_now)
    monkeypatch.setattr(writer, "add_decisions", recording_add)
    monkeypatch.setattr(writer, "checkpoint", recording_checkpoint)
    monkeypatch.setattr("adaudit.service.decision_log.CHECKPOINT_EVERY", 3)
    answers = [audit_json(client).json()["request_id"] for _ in range(3)]
    loop_thread = in_place[0][0]
    assert in_place == [(loop_thread, True)] * 3 and in_threads == []
    deadline = time.monotonic() + 10
    while not checkpoints and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(checkpoints) == 1 and checkpoints[0] != loop_thread

    database = tmp_path / "log.db"
    blocker = sqlite3.connect(database, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the write lock (readers carry on)
    release = threading.Timer(0.3, blocker.rollback)
    release.start()
    try:
        started = time.monotonic()
        held = audit_json(client)
    finally:
        release.join()
        blocker.close()
    assert held.status_code == 200 and time.monotonic() - started >= 0.25  # it waited for the lock, in a thread
    assert in_place[-1] == (loop_thread, False) and in_threads and in_threads[-1] != loop_thread
    assert audit_json(client).status_code == 200 and in_place[-1] == (loop_thread, True)  # in place again
    with sqlite3.connect(database) as reader:
        logged = {row[0] for row in reader.execute("SELECT request_id FROM decisions")}
    assert logged >= {*answers, held.json()["request_id"]} and len(logged) == 5


def test_a_row_written_in_place_reads_back_as_one_written_through_sqlalchemy(tmp_path):
    """SQLite's add_decisions_now runs SQLAlchemy's compiled INSERT on the DBAPI connection: the same stored values
    (time zone, JSON, Boolean) as add_decisions; a row short of a column is left to add_decisions."""
    log = DecisionLog(f"sqlite:///{tmp_path / 'log.db'}")
    log.prepare_schema()
    row = {"created_at": datetime(2026, 12, 2, 17, 30, 5, 123456, tzinfo=timezone.utc), "ad_id": "ad-7",
           "model": "student", "version": "3", "arm": "canary", "verdict": "reject", "violation": "gambling",
           "violation_score": 0.8125, "latency_ms": 4.5, "shadowed": True, "caller": "partner",
           "suggestion": "block", "policy_name": "strict", "policy_version": "2", "review_sample": True,
           "reasons": [{"rule": "violation.gambling.block_at", "score": 0.8125, "threshold": 0.7}],
           "outputs": {"labels": {"verdict": "reject", "violation": "gambling", "logo": "有"},
                       "scores": {"verdict": 0.75, "violation": 0.8125, "logo": float("nan")}}}
    assert log.writer.add_decisions_now([{**row, "request_id": "in-place"}])
    log.add_decisions([{**row, "request_id": "through-sqlalchemy"}])
    in_place, through = log.decision("in-place"), log.decision("through-sqlalchemy")
    assert in_place.pop("request_id") == "in-place" and through.pop("request_id") == "through-sqlalchemy"
    assert repr(in_place) == repr(through)  # repr: NaN == NaN
    assert in_place["created_at"] == row["created_at"] and in_place["shadowed"] is True

    short = {key: value for key, value in row.items() if key not in ("shadowed", "caller")}
    assert not log.writer.add_decisions_now([{**short, "request_id": "short"}]) and log.decision("short") is None
    log.add_decisions([{**short, "request_id": "short"}])
    assert log.decision("short")["shadowed"] is False  # the column's default, from SQLAlchemy
    log.close()


def test_the_database_url_picks_the_decision_writer(tmp_path):
    """The SQLite-only fast path (in place, WAL checkpoints) exists in the SQLite strategy alone; PostgreSQL
    gets a pinged pool with the connect and checkout timeouts."""
    assert isinstance(DecisionLog(f"sqlite:///{tmp_path / 'log.db'}").writer, SqliteDecisionWriter)
    memory = DecisionLog("sqlite://").writer
    assert isinstance(memory, SqliteDecisionWriter) and not memory.add_decisions_now([{}])  # in memory: never
    server = DecisionLog("postgresql+psycopg://adaudit@127.0.0.1:1/postgres", lock_timeout_s=2.5, pool_size=3,
                         max_overflow=1).writer
    assert type(server) is PostgresDecisionWriter and not hasattr(server, "add_decisions_now")
    assert server.engine_options(server.url, 2.5) == {"pool_pre_ping": True, "pool_timeout": 2.5, "pool_size": 3,
                                                      "max_overflow": 1, "connect_args": {"connect_timeout": 3}}
    assert (server.engine.pool.size(), server.engine.pool._max_overflow) == (3, 1)


# --- settings ------------------------------------------------------------------------------
def test_settings_from_env_and_yaml(tmp_path, monkeypatch):
    file = tmp_path / "gateway.yaml"
    file.write_text("backend: embedded\nmodel_dir: /srv/models\nshadow_fraction: 0.5\nmax_batch: 8\n")
    monkeypatch.setenv("ADAUDIT_SETTINGS_FILE", str(file))
    monkeypatch.setenv("ADAUDIT_SHADOW_FRACTION", "0.25")
    loaded = GatewaySettings()
    assert (loaded.backend, str(loaded.model_dir), loaded.shadow_fraction, loaded.max_batch) == \
        ("embedded", "/srv/models", 0.25, 8)  # the environment wins over the file
    assert GatewaySettings(max_batch=2).max_batch == 2  # and arguments (CLI flags) over both
    file.write_text("backend: embedded\nmodel_dir: /srv\nshadow_fractoin: 0.5\n")
    with pytest.raises(ValidationError, match="shadow_fractoin"):
        GatewaySettings()
    monkeypatch.delenv("ADAUDIT_SETTINGS_FILE")
    with pytest.raises(ValidationError, match="canary_model"):
        GatewaySettings(canary_fraction=0.1)
    with pytest.raises(ValidationError, match="model_dir"):
        GatewaySettings(backend="embedded")
    with pytest.raises(ValidationError):
        GatewaySettings(shadow_fraction=1.5)


def test_each_target_gets_the_backend_of_its_own_triton_address():
    """One backend per distinct Triton address: the shadow's own, the canary's on the primary's (its default)."""
    made = []

    def make(settings):
        made.append(settings.triton_url)
        return type("Backend", (), {"name": "triton", "url": settings.triton_url})()

    chosen = backends_by_target(GatewaySettings(triton_url="primary:8000", shadow_triton_url="teacher:8000",
                                                shadow_fraction=1.0), make)
    assert made == ["primary:8000", "teacher:8000"]
    assert {arm: backend.url for arm, backend in chosen.items()} == \
        {"primary": "primary:8000", "canary": "primary:8000", "shadow": "teacher:8000"}
    assert chosen["primary"] is chosen["canary"]
    made.clear()
    same = backends_by_target(GatewaySettings(triton_url="a:8000", canary_triton_url="a:8000"), make)
    assert made == ["a:8000"] and len({id(b) for b in same.values()}) == 1
    with pytest.raises(ValidationError, match="shadow_triton_url|host:port"):
        GatewaySettings(shadow_triton_url="teacher")


def test_database_settings_pool_and_migration_at_start(monkeypatch):
    """The pool sizes reach a server database's engine; the schema is upgraded at start on SQLite (the only
    writer) and only checked on a server database, unless database_migrate_on_start says otherwise."""
    defaults = GatewaySettings()
    assert (defaults.database_pool_size, defaults.database_max_overflow) == (5, 10)  # SQLAlchemy's own
    assert defaults.migrates_on_start() and GatewaySettings(database_url="sqlite://").migrates_on_start()
    server = "postgresql+psycopg://adaudit@db:5432/adaudit"
    monkeypatch.setenv("ADAUDIT_DATABASE_URL", server)
    monkeypatch.setenv("ADAUDIT_DATABASE_POOL_SIZE", "4")
    monkeypatch.setenv("ADAUDIT_DATABASE_MAX_OVERFLOW", "0")
    loaded = GatewaySettings()
    assert (loaded.database_pool_size, loaded.database_max_overflow) == (4, 0) and not loaded.migrates_on_start()
    monkeypatch.setenv("ADAUDIT_DATABASE_MIGRATE_ON_START", "true")
    assert GatewaySettings().migrates_on_start()
    assert not GatewaySettings(database_url="sqlite://", database_migrate_on_start=False).migrates_on_start()
    for bad in ({"database_pool_size": 0}, {"database_max_overflow": -1}):
        with pytest.raises(ValidationError, match=next(iter(bad))):
            GatewaySettings(**bad)
