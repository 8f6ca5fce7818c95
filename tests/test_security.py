"""Security of the gateway: API keys, caller identity, rate limits, CORS, secrets, pickle, SQL, SSRF, checksums.

The gateway runs with the embedded backend and the tiny models of tests/test_service.py; the
checksum test starts the real bundled tritonserver on a tampered repository.
"""

from __future__ import annotations

import logging
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import create_engine, text
from test_service import COPY, audit_json, b64, metric, model_dir, png, settings  # noqa: F401 (fixture)

from adaudit.service.app import create_app
from adaudit.service.security import TokenBuckets, digest
from adaudit.service.settings import GatewaySettings

ROOT = Path(__file__).resolve().parents[1]
ALICE_KEY, BOB_KEY = "alice-secret-key-8f3a1c", "bob-secret-key-22d9e0"
KEYS = [f"alice:{digest(ALICE_KEY)}", f"bob:{digest(BOB_KEY)}"]


@pytest.fixture
def keyed(model_dir, tmp_path):  # noqa: F811
    with TestClient(create_app(settings(model_dir, tmp_path, api_keys=KEYS))) as client:
        yield client


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def test_unauthenticated_requests_are_refused_when_keys_are_configured(keyed, tmp_path):
    for answer in (audit_json(keyed), keyed.post("/v1/audits", json={"image_base64": b64(png()), "text": COPY},
                                                  headers=bearer("not-a-key")),
                   keyed.post("/v1/audits", json={}, headers={"Authorization": f"Basic {ALICE_KEY}"}),
                   keyed.get("/v1/reviews/accuracy"), keyed.get("/v1/audits/0123"),
                   keyed.post("/v1/audits/0123/feedback", json={"labels": {"verdict": "approve"}})):
        assert answer.status_code == 401, answer.text
        assert answer.json()["kind"] == "unauthorized" and answer.headers["www-authenticate"] == "Bearer"
    assert metric(keyed, "adaudit_errors_total", kind="unauthorized") == 6
    # probes and metrics stay open: Kubernetes and Prometheus carry no keys
    assert keyed.get("/healthz").status_code == 200 and keyed.get("/readyz").status_code == 200
    assert keyed.get("/metrics").status_code == 200
    with create_engine(f"sqlite:///{tmp_path / 'log.db'}").connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM decisions")).scalar() == 0


def test_the_callers_name_is_in_the_decision_log(keyed, tmp_path):
    by_alice = keyed.post("/v1/audits", json={"image_base64": b64(png()), "text": COPY}, headers=bearer(ALICE_KEY))
    by_bob = keyed.post("/v1/audits", json={"image_base64": b64(png()), "text": COPY}, headers={"X-API-Key": BOB_KEY})
    assert by_alice.status_code == 200 and by_bob.status_code == 200, by_alice.text + by_bob.text
    request_id = by_alice.json()["request_id"]
    assert keyed.get(f"/v1/audits/{request_id}", headers=bearer(BOB_KEY)).json()["caller"] == "alice"
    with create_engine(f"sqlite:///{tmp_path / 'log.db'}").connect() as connection:
        rows = dict(connection.execute(text("SELECT request_id, caller FROM decisions")).all())
    assert rows == {request_id: "alice", by_bob.json()["request_id"]: "bob"}


def test_without_keys_the_caller_is_anonymous(model_dir, tmp_path):  # noqa: F811
    with TestClient(create_app(settings(model_dir, tmp_path))) as client:
        request_id = audit_json(client).json()["request_id"]
        assert client.get(f"/v1/audits/{request_id}").json()["caller"] == "anonymous"


def test_per_key_rate_limit_is_a_429_with_retry_after(model_dir, tmp_path):  # noqa: F811
    values = settings(model_dir, tmp_path, api_keys=KEYS, rate_limit_per_s=0.01, rate_limit_burst=2)
    with TestClient(create_app(values)) as client:
        ad = {"image_base64": b64(png()), "text": COPY}
        answers = [client.post("/v1/audits", json=ad, headers=bearer(ALICE_KEY)) for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 429]
        assert answers[2].json()["kind"] == "rate_limited" and "alice" in answers[2].json()["error"]
        assert int(answers[2].headers["retry-after"]) >= 1
        assert client.post("/v1/audits", json=ad, headers=bearer(BOB_KEY)).status_code == 200  # bob has his own
        assert metric(client, "adaudit_errors_total", kind="rate_limited") == 1


def test_token_bucket_refills_at_its_rate(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("adaudit.service.security.time.monotonic", lambda: clock[0])
    buckets = TokenBuckets(rate_per_s=2.0, burst=3)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)  # one token every 0.5 s
    clock[0] += 0.5
    assert buckets.take("a") == 0.0 and buckets.take("b") == 0.0
    clock[0] += 100
    assert [buckets.take("a") for _ in range(4)][-1] > 0  # never more than the burst saved up
    assert TokenBuckets(0, 0).take("a") == 0.0  # no limit configured


def test_api_keys_from_the_environment_and_bad_entries(monkeypatch):
    monkeypatch.setenv("ADAUDIT_API_KEYS", ",".join(KEYS))
    assert GatewaySettings().api_keys == KEYS
    monkeypatch.setenv("ADAUDIT_API_KEYS", '["%s"]' % KEYS[0])
    assert GatewaySettings().api_keys == KEYS[:1]
    monkeypatch.delenv("ADAUDIT_API_KEYS")
    for bad in ([f"alice:{ALICE_KEY}"], [digest(ALICE_KEY)], [f"al ice:{digest(ALICE_KEY)}"],
                [f"alice:{digest(ALICE_KEY)}", f"bob:{digest(ALICE_KEY)}"]):
        with pytest.raises(ValidationError) as error:
            GatewaySettings(api_keys=bad)
        assert ALICE_KEY not in str(error.value) and "api_keys" in str(error.value)


def test_secrets_never_reach_logs_answers_or_metrics(model_dir, tmp_path, caplog):  # noqa: F811
    caplog.set_level(logging.DEBUG)
    database = f"sqlite:///{tmp_path / 'log.db'}"
    with TestClient(create_app(settings(model_dir, tmp_path, api_keys=KEYS, database_url=database))) as client:
        seen = [client.post("/v1/audits", json={"image_base64": b64(png()), "text": COPY}, headers=bearer(key)).text
                for key in (ALICE_KEY, ALICE_KEY + "x", BOB_KEY)]
        seen.append(client.get("/metrics").text)
        seen.append(repr(client.app.state.settings))
        broken = client.app.state.gateway.log

        def failing(*_):
            raise RuntimeError(f"cannot write with {ALICE_KEY}")  # even a driver error quoting a secret

        broken.writer.add_decisions = failing
        broken.writer.add_decisions_now = lambda rows: False  # the thread path, which fails
        seen.append(client.post("/v1/audits", json={"image_base64": b64(png()), "text": COPY},
                                headers=bearer(ALICE_KEY)).text)
    for text_seen in (*seen, caplog.text):
        assert ALICE_KEY not in text_seen and BOB_KEY not in text_seen


def test_cors_is_off_by_default(keyed, model_dir, tmp_path):  # noqa: F811
    preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    answer = keyed.options("/v1/audits", headers=preflight)
    assert "access-control-allow-origin" not in answer.headers
    simple = keyed.post("/v1/audits", json={}, headers={"Origin": "https://evil.example", **bearer(ALICE_KEY)})
    assert "access-control-allow-origin" not in simple.headers
    allowed = settings(model_dir, tmp_path, cors_origins="https://review.example")
    with TestClient(create_app(allowed)) as client:
        ok = client.options("/v1/audits", headers={**preflight, "Origin": "https://review.example"})
        assert ok.headers["access-control-allow-origin"] == "https://review.example"
        refused = client.options("/v1/audits", headers=preflight)
        assert "access-control-allow-origin" not in refused.headers


def test_the_openapi_document_names_both_key_schemes(keyed):
    schemes = keyed.get("/openapi.json").json()["components"]["securitySchemes"]
    assert {(s["type"], s.get("scheme"), s.get("name")) for s in schemes.values()} == \
        {("http", "bearer", None), ("apiKey", None, "X-API-Key")}


# --- no pickle, SQL only through bound parameters, no fetching of URLs --------------------------
SOURCE_FOLDERS = ("adaudit", "models", "compression", "export", "service", "benchmarks", "tests")


def python_sources():
    for folder in SOURCE_FOLDERS:
        yield from (ROOT / folder).rglob("*.py")


def test_no_pickle_anywhere():
    loads = re.compile(r"torch\.load\((?![^)]*weights_only\s*=\s*True)")
    for path in python_sources():
        source = path.read_text(encoding="utf-8")
        if path.name == "test_security.py":
            continue
        assert not re.search(r"^\s*(import|from)\s+(pickle|cPickle|dill|joblib|cloudpickle)\b", source, re.M), path
        assert not loads.search(source), f"{path}: torch.load without weights_only=True"
        assert "allow_pickle=True" not in source, path


def test_sql_is_built_only_by_sqlalchemy():
    """Raw SQL in the gateway is a constant string; queries are SQLAlchemy expressions (bound parameters)."""
    for path in (ROOT / "service").glob("*.py"):
        source = path.read_text(encoding="utf-8")
        for call in re.finditer(r"\b(text|execute|exec_driver_sql)\((.*)", source):
            argument = call.group(2).strip()
            if argument.startswith(("f\"", "f'", "\"", "'")):
                assert re.match(r"^\"[^\"{}%]*\"\)|^'[^'{}%]*'\)", argument), f"{path}: {call.group(0)}"


def test_hostile_request_ids_are_plain_values(keyed, tmp_path):
    ad = {"image_base64": b64(png()), "text": COPY}
    assert keyed.post("/v1/audits", json=ad, headers=bearer(ALICE_KEY)).status_code == 200
    for hostile in ("' OR '1'='1", "x'; DROP TABLE decisions; --", "%", "_"):
        assert keyed.get(f"/v1/audits/{hostile}", headers=bearer(ALICE_KEY)).status_code == 404
        feedback = keyed.post(f"/v1/audits/{hostile}/feedback", json={"labels": {"verdict": "approve"}},
                              headers=bearer(ALICE_KEY))
        assert feedback.status_code == 404
    with create_engine(f"sqlite:///{tmp_path / 'log.db'}").connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM decisions")).scalar() == 1


def test_image_urls_are_never_fetched(keyed):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(0.5)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/ad.png"
    try:
        for body in ({"image_base64": url, "text": COPY}, {"image_base64": f"data:text/uri-list,{url}", "text": COPY},
                     {"image_url": url, "text": COPY}):
            answer = keyed.post("/v1/audits", json=body, headers=bearer(ALICE_KEY))
            assert answer.status_code in (400, 422) and answer.json()["kind"] in ("invalid_base64", "invalid_request")
        form = keyed.post("/v1/audits", files={"image": ("ad.png", url.encode(), "image/png")}, data={"text": COPY},
                          headers=bearer(ALICE_KEY))
        assert form.status_code == 400 and form.json()["kind"] == "not_an_image"
        with pytest.raises(TimeoutError):
            listener.accept()  # nobody came
    finally:
        listener.close()
    for path in (ROOT / "service").glob("*.py"):  # and nothing in the gateway could fetch one (urllib.parse only
        # quotes; triton_http.py connects to the configured Triton address, never to one from a request)
        source = path.read_text(encoding="utf-8")
        assert not re.search(r"^\s*(import|from)\s+(urllib(?!\.parse\b)|requests|httpx|aiohttp|urllib3)\b", source,
                             re.M), path


# --- Triton refuses a repository changed since export ------------------------------------------
def test_triton_refuses_a_tampered_repository(model_dir, tmp_path):  # noqa: F811
    from adaudit.export.repository import ServingSettings, export_model
    from adaudit.export.server import TritonError, TritonServer, pytriton_folder

    try:
        pytriton_folder()
    except TritonError as error:
        pytest.skip(f"tritonserver cannot run here: {error}")
    from loopback import free_port

    repo = tmp_path / "repo"
    version = export_model(model_dir / "student", repo, "student", 1, ServingSettings(max_batch_size=4,
                                                                                      preferred_batch_sizes=[4]))
    weights = version / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # one bit of one weight
    weights.write_bytes(bytes(data))
    log = tmp_path / "triton.log"
    server = TritonServer(repo, free_port(), free_port(), free_port(), log_file=log, ready_timeout=120)
    with pytest.raises(TritonError):
        server.start()
    server.stop()
    text_logged = log.read_text(errors="replace")
    assert "files changed since export: model/model.safetensors" in text_logged, text_logged[-3000:]


def test_key_tool_prints_a_key_and_its_entry():
    result = subprocess.run([sys.executable, "-m", "adaudit.service.security", "carol"], capture_output=True,
                            text=True, check=True)
    key = re.search(r"key .*: (\S+)", result.stdout).group(1)
    entry = re.search(r"entry .*: (\S+)", result.stdout).group(1)
    assert entry == f"carol:{digest(key)}" and GatewaySettings(api_keys=[entry]).api_keys == [entry]
