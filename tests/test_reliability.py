"""Reliability of the gateway: overload shedding, graceful shutdown, database outages, a slow shadow model.

Real parts only: the gateway on a loopback port (in a thread, or its own uvicorn process for
SIGTERM), SQLite files, a throwaway PostgreSQL cluster (skipped with the reason when it cannot
start), the tiny models of tests/test_service.py. Requests are held in flight by sending all of
their body but the last byte over a raw socket, so no test depends on timing. The Triton faults
are in tests/test_reliability_triton.py; load, recovery times and latency figures in
benchmarks/reliability.py.
"""

from __future__ import annotations

import json
import sqlite3
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from loopback import GatewayProcess, ServerThread, finish_request, held_request
from sqlalchemy import create_engine, text
from test_service import COPY, audit_json, b64, biased_model, metric, model_dir, png, settings, wait_for  # noqa: F401

from adaudit.training.presets import preset_config
from benchmarks.postgres import PostgresCluster, PostgresUnavailable
from adaudit.models.modeling import AuditModel
from adaudit.models.tokenizer import build_vocabulary
from adaudit.service.app import create_app
from adaudit.service.schema import upgrade_schema

AD = json.dumps({"image_base64": b64(png()), "text": COPY}).encode()


def decisions(url: str) -> dict[str, str | None]:
    """request_id -> caller of every logged decision."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return dict(connection.execute(text("SELECT request_id, caller FROM decisions")).all())
    finally:
        engine.dispose()


# --- overload -----------------------------------------------------------------------------------
def test_over_the_in_flight_limit_requests_are_shed_at_once_and_the_rest_finish(model_dir, tmp_path):  # noqa: F811
    values = settings(model_dir, tmp_path, max_in_flight=2)
    with ServerThread(create_app(values)) as server:
        held = [held_request(server.url, "/v1/audits", AD) for _ in range(2)]
        wait_for(lambda: metric_of(server.url, "adaudit_in_flight_requests") >= 3)  # the two, and this /metrics
        shed = httpx.post(f"{server.url}/v1/audits", content=AD, headers={"content-type": "application/json"})
        assert shed.status_code == 503 and shed.json()["kind"] == "overloaded", shed.text
        assert shed.headers["retry-after"] == "1"
        assert httpx.get(f"{server.url}/healthz").status_code == 200  # probes are never shed
        assert httpx.get(f"{server.url}/readyz").status_code == 200
        answers = [finish_request(*request) for request in held]
        assert [status for status, _ in answers] == [200, 200]
        after = httpx.post(f"{server.url}/v1/audits", content=AD, headers={"content-type": "application/json"})
        assert after.status_code == 200
        assert metric_of(server.url, "adaudit_errors_total", kind="overloaded") == 1
    logged = decisions(values.database_url)
    assert set(logged) == {json.loads(body)["request_id"] for _, body in answers} | {after.json()["request_id"]}


def metric_of(url: str, name: str, **labels) -> float:
    class Client:
        @staticmethod
        def get(path):
            return httpx.get(url + path)

    return metric(Client, name, **labels)


# --- graceful shutdown ----------------------------------------------------------------------------
def test_sigterm_lets_in_flight_requests_finish_and_flushes_the_logs(model_dir, tmp_path):  # noqa: F811
    database = f"sqlite:///{tmp_path / 'decisions.db'}"
    env = {"ADAUDIT_BACKEND": "embedded", "ADAUDIT_MODEL_DIR": str(model_dir), "ADAUDIT_DATABASE_URL": database,
           "ADAUDIT_SHADOW_FRACTION": "1.0", "ADAUDIT_SHADOW_WORKERS": "1"}
    gateway = GatewayProcess(env, tmp_path).start()
    try:
        before = [httpx.post(f"{gateway.url}/v1/audits", content=AD, headers={"content-type": "application/json"})
                  for _ in range(3)]
        held = [held_request(gateway.url, "/v1/audits", AD) for _ in range(3)]
        wait_for(lambda: metric_of(gateway.url, "adaudit_in_flight_requests") >= 4)
        gateway.terminate()
        wait_for(lambda: "Waiting for connections to close" in gateway.output())
        with pytest.raises(httpx.TransportError):  # no new connections once it is stopping
            httpx.post(f"{gateway.url}/v1/audits", content=AD, headers={"content-type": "application/json"})
        answers = [finish_request(*request) for request in held]
        # uvicorn re-raises the signal once it has shut down cleanly: exit by SIGTERM, after the lifespan's end
        assert gateway.process.wait(60) in (0, -15), gateway.output()[-3000:]
    finally:
        gateway.stop()
    assert [status for status, _ in answers] == [200, 200, 200], answers
    answered = {a.json()["request_id"] for a in before} | {json.loads(body)["request_id"] for _, body in answers}
    assert set(decisions(database)) == answered  # every answer has its row, nothing more
    engine = create_engine(database)
    with engine.connect() as connection:  # the biased models disagree on every ad: one row per mirrored ad
        compared = {row[0] for row in connection.execute(text("SELECT request_id FROM shadow_disagreements"))}
    engine.dispose()
    assert compared == answered
    assert "Application shutdown complete" in gateway.output()


# --- the decision log unavailable: no answer without its row --------------------------------------
def test_a_locked_sqlite_log_fails_the_request_and_recovers(model_dir, tmp_path):  # noqa: F811
    values = settings(model_dir, tmp_path, request_timeout_s=0.3)
    with TestClient(create_app(values)) as client:
        first = audit_json(client)
        assert first.status_code == 200
        blocker = sqlite3.connect(tmp_path / "log.db", timeout=0.1)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            locked = audit_json(client)
        finally:
            blocker.rollback()
            blocker.close()
        assert locked.status_code == 503 and locked.json()["kind"] == "decision_log_unavailable", locked.text
        assert locked.headers["retry-after"] == "1" and "request_id" not in locked.json()
        second = audit_json(client)
        assert second.status_code == 200
        assert metric(client, "adaudit_errors_total", kind="decision_log_unavailable") == 1
    assert set(decisions(values.database_url)) == {first.json()["request_id"], second.json()["request_id"]}


@pytest.fixture
def postgres():
    try:
        cluster = PostgresCluster.started()
    except PostgresUnavailable as error:
        print(f"\nskipping: {error}")
        pytest.skip(str(error))
    yield cluster
    cluster.remove()


def test_postgresql_log_outage_is_a_503_and_it_recovers(model_dir, tmp_path, postgres):  # noqa: F811
    engine = create_engine(postgres.url)
    upgrade_schema(engine)  # `adaudit db upgrade`: a gateway on a server database runs no DDL
    engine.dispose()
    values = settings(model_dir, tmp_path, database_url=postgres.url, request_timeout_s=2)
    with TestClient(create_app(values)) as client:
        first = audit_json(client, ad_id="pg-1")
        assert first.status_code == 200, first.text
        feedback = client.post(f"/v1/audits/{first.json()['request_id']}/feedback",
                               json={"labels": {"verdict": "approve"}})
        assert feedback.status_code == 200 and feedback.json()["correct"] == {"verdict": True}
        postgres.stop("immediate")  # the database crashes
        down = audit_json(client)
        assert down.status_code == 503 and down.json()["kind"] == "decision_log_unavailable", down.text
        assert client.get(f"/v1/audits/{first.json()['request_id']}").status_code == 503
        postgres.start()
        back = audit_json(client, ad_id="pg-2")  # stale pooled connections are replaced (pool_pre_ping)
        assert back.status_code == 200, back.text
        assert client.get(f"/v1/audits/{first.json()['request_id']}").json()["feedback"] == {"verdict": "approve"}
        accuracy = client.get("/v1/reviews/accuracy").json()
        assert accuracy == [{"model": "student", "version": "1", "task": "verdict", "reviewed": 1, "correct": 1,
                             "accuracy": 1.0}]
    logged = decisions(postgres.url)
    assert logged == {first.json()["request_id"]: "anonymous", back.json()["request_id"]: "anonymous"}


# --- a slow shadow model never touches the answer --------------------------------------------------
def test_a_slow_shadow_model_leaves_the_answers_alone(model_dir, tmp_path):  # noqa: F811
    slow = tmp_path / "models"
    slow.mkdir()
    (slow / "student").symlink_to(model_dir / "student")
    torch.manual_seed(3)
    AuditModel(preset_config("small", len(build_vocabulary()))).save_pretrained(slow / "teacher")  # 96 px, ~10x the work
    ads = [png((40 + i, 30), colour) for i, colour in enumerate(("red", "green", "blue", "white", "black", "grey"))]
    (tmp_path / "alone").mkdir()
    with TestClient(create_app(settings(model_dir, tmp_path / "alone"))) as alone:
        expected = [audit_json(alone, image).json()["scores"] for image in ads]
    mirrored = settings(slow, tmp_path, shadow_fraction=1.0, shadow_queue_size=1, shadow_workers=1)
    with TestClient(create_app(mirrored)) as client:
        with ThreadPoolExecutor(6) as pool:  # all at once: the one-slot queue overflows
            answers = list(pool.map(lambda image: audit_json(client, image), ads * 3))
        assert all(a.status_code == 200 and a.json()["shadowed"] for a in answers)
        assert [a.json()["scores"] for a in answers] == expected * 3  # the primary's answers, unchanged
        pair = dict(primary="student", shadow="teacher")
        wait_for(lambda: metric(client, "adaudit_shadow_comparisons_total", **pair)
                 + metric(client, "adaudit_shadow_dropped_total") == len(answers), timeout=60)
        assert metric(client, "adaudit_errors_total", kind="shadow_failed") == 0
