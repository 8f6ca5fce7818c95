"""The gateway against a real Triton: the tritonserver that nvidia-pytriton bundles, on free loopback ports.

Two tiny models are exported with `export_model` into a model repository and served by
`TritonServer`; the same model folders back an embedded gateway. Checked: Triton's answers
equal the embedded backend's (single and batch), /readyz, shadow traffic through Triton, a 503
after the request timeout while Triton hangs (SIGSTOP), and a 503 while Triton is crashed
(SIGKILL) followed by recovery on its own once it is restarted (recovery times:
benchmarks/reliability.py). Skipped, with the
reason, only when the server cannot run here (nvidia-pytriton missing or the binary failing).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from adaudit.compression.vocabulary import corpus_characters, prune_vocabulary
from adaudit.export.repository import ServingSettings, export_model
from adaudit.export.server import TritonError, TritonServer, pytriton_folder, session_alive
from adaudit.training.presets import preset_config
from adaudit.models.labels import TASKS
from adaudit.models.modeling import AuditModel
from adaudit.models.tokenizer import build_vocabulary
from adaudit.service.app import create_app
from adaudit.service.settings import GatewaySettings
from adaudit.service.shadow import COMPARED_TASKS
from conftest import wait_for
from benchmarks.serving import free_ports
from loopback import random_png_base64

try:
    pytriton_folder()
except TritonError as error:
    print(f"\nskipping the Triton integration tests: {error}")
    pytest.skip(f"tritonserver cannot run here: {error}", allow_module_level=True)

COPIES = ["限时特价，全网最低价！", "纯天然蜂蜜，产地直供", "新款跑鞋 包邮", "理财稳赚不赔，月收益20%", "可爱猫咪玩具", "祖传秘方，三天根治"]


ADS = [{"image_base64": random_png_base64(i, 40 + i, 56), "text": copy, "ad_id": f"t{i}"} for i, copy in enumerate(COPIES)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, student):
    folder = tmp_path_factory.mktemp("models")
    shutil.copytree(student[0], folder / "compressed")  # what `compress` made of the tiny teacher
    for seed, name in enumerate(("student", "teacher")):
        torch.manual_seed(seed)
        model = AuditModel(preset_config("tiny", len(build_vocabulary())))
        if name == "teacher":  # a teacher that finds gambling everywhere: its answers differ from the student's
            with torch.no_grad():
                model.heads["violation"].bias[TASKS["violation"].index("gambling")] += 8.0
        model.save_pretrained(folder / name)
    # a student whose vocabulary was pruned (compression's first stage): it brings its own tokenizer.json
    pruned, _ = prune_vocabulary(AuditModel.from_pretrained(folder / "student"), COPIES, corpus_characters("none"))
    pruned.save_pretrained(folder / "pruned")
    return folder


@pytest.fixture(scope="module")
def triton(model_dir, tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    serving = ServingSettings(max_batch_size=8, preferred_batch_sizes=[4, 8], max_queue_delay_microseconds=100)
    # the students on ONNX Runtime (model.onnx, the default engine); the teacher on eager PyTorch, as a
    # shadow on these CPUs: SCHED_IDLE
    chosen = {"student": serving, "teacher": dataclasses.replace(serving, cpu_priority="idle", engine="torch"),
              "pruned": serving}
    for name, settings in chosen.items():
        export_model(model_dir / name, repo, name, 1, settings)
    export_model(model_dir / "compressed", repo, "compressed", 1, serving)
    # one model name, two served versions (a canary rollout): the student's weights, then the teacher's
    export_model(model_dir / "student", repo, "audited", 1, serving)
    export_model(model_dir / "teacher", repo, "audited", 2, serving)
    log = tmp_path_factory.mktemp("triton") / "tritonserver.log"
    server = TritonServer(repo, *free_ports(3), log_file=log, ready_timeout=120)
    try:
        server.start()
    except (TritonError, OSError) as error:
        text = log.read_text(errors="replace") if log.exists() else ""
        if "failed to load" in text or "Failed to initialize Python stub" in text:  # it runs: our models failed
            pytest.fail(f"tritonserver could not load the exported models: {error}\n{text[-3000:]}")
        print(f"\nskipping: tritonserver cannot run here: {error}\n{text[-2000:]}")
        pytest.skip(f"tritonserver cannot run here: {error}")
    yield server
    server.stop()


def gateway(model_dir, tmp_path, backend: str, triton=None, protocol: str = "http", **overrides) -> TestClient:
    settings = GatewaySettings(backend=backend, model_dir=model_dir, triton_protocol=protocol,
                               triton_url=triton.url_for(protocol) if triton else "x:1",
                               database_url=f"sqlite:///{tmp_path / backend}-{protocol}.db", max_batch=8,
                               **{"request_timeout_s": 10, **overrides})
    return TestClient(create_app(settings))


def labels(answer: dict) -> dict:
    return {"verdict": answer["verdict"], "violation": answer["violation"], **answer["attributes"]}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_triton_answers_equal_the_embedded_backend(model_dir, tmp_path, triton, protocol):
    with gateway(model_dir, tmp_path, "triton", triton, protocol) as remote, \
            gateway(model_dir, tmp_path, "embedded") as local:
        assert remote.get("/readyz").json()["ready"] is True
        for ad in ADS:
            via_triton, in_process = remote.post("/v1/audits", json=ad), local.post("/v1/audits", json=ad)
            assert via_triton.status_code == 200, via_triton.text
            assert labels(via_triton.json()) == labels(in_process.json())
            assert via_triton.json()["scores"] == pytest.approx(in_process.json()["scores"], abs=1e-4)
            assert (via_triton.json()["model"], via_triton.json()["version"]) == ("student", "1")
        batch = remote.post("/v1/audits:batch", json={"items": ADS})
        assert batch.status_code == 200, batch.text
        expected = local.post("/v1/audits:batch", json={"items": ADS}).json()["items"]
        assert [labels(a) for a in batch.json()["items"]] == [labels(a) for a in expected]
        with ThreadPoolExecutor(len(ADS)) as pool:  # concurrent requests: Triton's dynamic batcher merges them
            concurrent = list(pool.map(lambda ad: remote.post("/v1/audits", json=ad).json(), ADS * 2))
        assert [labels(a) for a in concurrent] == [labels(a) for a in expected] * 2


def stub_of(model: str) -> int:
    """The pid of the python-backend stub process that runs `model`'s instance."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            arguments = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if arguments and arguments[0].endswith(b"triton_python_backend_stub") and \
                any(f"/{model}/1/model.py".encode() in a for a in arguments):
            return int(cmdline.parent.name)
    raise AssertionError(f"no python-backend stub runs {model}")


def test_a_shadow_exported_at_idle_cpu_priority_runs_under_sched_idle(triton):
    assert os.sched_getscheduler(stub_of("teacher")) == os.SCHED_IDLE
    assert os.sched_getscheduler(stub_of("student")) == os.SCHED_OTHER


def mirror_three_ads(client, primary: str, shadow: str, version: str = "1") -> None:
    """Audit three ads with every ad mirrored; wait until all three are compared (counted under the
    answering model's version)."""
    for ad in ADS[:3]:
        assert client.post("/v1/audits", json=ad).json()["shadowed"] is True
    deadline = time.monotonic() + 20
    while (f'adaudit_shadow_comparisons_total{{primary="{primary}",primary_version="{version}",shadow="{shadow}"}}'
           ' 3.0') not in client.get("/metrics").text:
        assert time.monotonic() < deadline, client.get("/metrics").text
        time.sleep(0.05)


def test_shadow_traffic_through_triton(model_dir, tmp_path, triton):
    """Every mirrored ad whose answers differ between student and teacher (verdict or violation, each decided
    under the same policy) is stored for review, with both answers as each model would have given them (the
    embedded backend says what they are)."""
    with gateway(model_dir, tmp_path, "embedded", shadow_model=None) as local:
        student_labels = [labels(local.post("/v1/audits", json=ad).json()) for ad in ADS[:3]]
    with gateway(model_dir, tmp_path, "embedded", primary_model="teacher", shadow_model=None) as local:
        teacher_labels = [labels(local.post("/v1/audits", json=ad).json()) for ad in ADS[:3]]
    # the shadow compares answers (each decided under the same policy) on the verdict and the violation
    differing = {ad["ad_id"] for ad, mine, theirs in zip(ADS, student_labels, teacher_labels)
                 if any(mine[task] != theirs[task] for task in COMPARED_TASKS)}
    assert differing, "the student and the gambling-biased teacher should answer some ad differently"
    with gateway(model_dir, tmp_path, "triton", triton, shadow_fraction=1.0) as client:
        mirror_three_ads(client, "student", "teacher")
        wait_for(lambda: len(client.get("/v1/shadow/disagreements").json()) == len(differing) or None, 10,
                 "the stored disagreements")
        stored = client.get("/v1/shadow/disagreements").json()
        ad_of = {client.get(f"/v1/audits/{row['request_id']}").json()["ad_id"]: row for row in stored}
        assert set(ad_of) == differing
        for ad, mine, theirs in zip(ADS, student_labels, teacher_labels):
            if ad["ad_id"] in differing:
                row = ad_of[ad["ad_id"]]
                assert (row["primary_model"], row["shadow_model"]) == ("student", "teacher")
                assert row["primary"]["labels"] == mine and row["shadow"]["labels"] == theirs


def test_the_compressed_student_answers_through_triton_as_in_process(model_dir, tmp_path, triton):
    """The student `compress` made (pruned blocks, widths, hidden size and vocabulary) exported and served
    by a real Triton answers what the embedded backend answers from its folder."""
    with gateway(model_dir, tmp_path, "triton", triton, primary_model="compressed", shadow_model=None,
                 model_repository=triton.repository) as remote, \
            gateway(model_dir, tmp_path, "embedded", primary_model="compressed", shadow_model=None) as local:
        warm_up(remote, model="compressed")
        for ad in ADS:
            via_triton, in_process = remote.post("/v1/audits", json=ad), local.post("/v1/audits", json=ad)
            assert via_triton.status_code == 200, via_triton.text
            assert labels(via_triton.json()) == labels(in_process.json())
            assert via_triton.json()["scores"] == pytest.approx(in_process.json()["scores"], abs=1e-4)


def test_a_canary_through_triton_between_two_served_versions(model_dir, tmp_path, triton):
    """Version 1 (the student's weights) is primary, version 2 (the teacher's) the canary of the same
    model: each answer names the version that gave it, and its scores are that version's."""
    with gateway(model_dir, tmp_path, "triton", triton, primary_model="audited", primary_version="1",
                 canary_model="audited", canary_version="2", canary_fraction=0.5, shadow_model=None) as remote, \
            gateway(model_dir, tmp_path, "embedded", shadow_model=None) as student, \
            gateway(model_dir, tmp_path, "embedded", primary_model="teacher", shadow_model=None) as teacher:
        warm_up(remote, model="audited")
        arms = set()
        for i in range(12):
            ad = {**ADS[i % len(ADS)], "ad_id": f"canary-{i}"}
            answer = remote.post("/v1/audits", json=ad)
            assert answer.status_code == 200, answer.text
            body = answer.json()
            arms.add(body["arm"])
            assert (body["model"], body["version"]) == ("audited", "2" if body["arm"] == "canary" else "1")
            reference = (teacher if body["arm"] == "canary" else student).post("/v1/audits", json=ad).json()
            assert body["scores"] == pytest.approx(reference["scores"], abs=1e-4)
        assert arms == {"primary", "canary"}



def test_a_shadow_with_another_tokenizer_decodes_and_encodes_the_ad_again(model_dir, tmp_path):
    """The pruned student (its own tokenizer.json) shadowed by the unpruned one: the mirrored ad's
    inputs cannot be reused, so the shadow decodes and encodes it again; every comparison lands."""
    with gateway(model_dir, tmp_path, "embedded", primary_model="pruned", shadow_model="student",
                 shadow_fraction=1.0) as client:
        mirror_three_ads(client, "pruned", "student")
        assert 'adaudit_errors_total{kind="shadow_failed"}' not in client.get("/metrics").text

def warm_up(client, timeout: float = 60, model: str | None = None) -> None:
    """The first inference of a freshly loaded python-backend model can take seconds (torch's lazy start), and a
    gRPC channel refused once waits out its reconnect backoff: ask again, with a pause, until `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        answer = client.post("/v1/audits", json=ADS[0])
        if answer.status_code == 200 and model in (None, answer.json()["model"]):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"Triton never answered: {answer.text}")
        time.sleep(0.5)


def wait_until_ready(client, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "the gateway did not see Triton come back"
        time.sleep(0.1)


def test_a_pruned_vocabulary_student_takes_its_own_tokenizer_from_the_repository(model_dir, tmp_path, triton):
    """The generated vocabulary's ids would be wrong for it: without the repository the gateway refuses."""
    assert (triton.repository / "pruned" / "1" / "model" / "tokenizer.json").is_file()
    assert (triton.repository / "pruned" / "1" / "model.onnx").is_file()  # served by ONNX Runtime
    with gateway(model_dir, tmp_path, "triton", triton, primary_model="pruned", shadow_model=None) as blind:
        refused = blind.post("/v1/audits", json=ADS[0])
        assert refused.status_code == 503 and "model_repository" in refused.json()["error"], refused.text
        # and it says so before any ad arrives: not ready, naming the setting (Triton itself has the model loaded)
        ready = blind.get("/readyz")
        assert ready.status_code == 503 and "model_repository" in ready.json()["message"], ready.text
    with gateway(model_dir, tmp_path, "triton", triton, primary_model="pruned", shadow_model=None,
                 model_repository=triton.repository) as remote, \
            gateway(model_dir, tmp_path, "embedded", primary_model="pruned", shadow_model=None) as local, \
            gateway(model_dir, tmp_path, "embedded", shadow_model=None) as unpruned:
        assert remote.get("/readyz").status_code == 200
        for ad in ADS:
            via_triton = remote.post("/v1/audits", json=ad)
            assert via_triton.status_code == 200, via_triton.text
            in_process = local.post("/v1/audits", json=ad).json()
            assert via_triton.json()["scores"] == pytest.approx(in_process["scores"], abs=1e-4)
            # the pruned vocabulary keeps every token of this copy: the unpruned student's answer
            assert via_triton.json()["scores"] == pytest.approx(unpruned.post("/v1/audits", json=ad).json()["scores"],
                                                                abs=1e-4)


def stopped(pid: int) -> bool:
    """Whether every thread of `pid` is stopped: SIGSTOP stops a process's threads one by one, so a
    request sent the moment kill() returns may still be answered by a thread not yet stopped."""
    states = []
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            states.append(stat.read_text().rsplit(")", 1)[1].split()[0])
        except (OSError, IndexError):
            continue
    return bool(states) and all(state in ("T", "t") for state in states)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_hung_triton_is_a_503_after_the_timeout_and_the_gateway_recovers(model_dir, tmp_path, triton, protocol):
    """Triton alive and connected but answering nothing (SIGSTOP): a 503 after request_timeout_s, no hang."""
    with gateway(model_dir, tmp_path, "triton", triton, protocol, request_timeout_s=2) as client:
        warm_up(client)
        os.kill(triton.process.pid, signal.SIGSTOP)
        try:
            wait_for(lambda: stopped(triton.process.pid) or None, 10, "every thread of tritonserver to stop")
            hung = client.post("/v1/audits", json=ADS[1])
            ready = client.get("/readyz")
        finally:
            os.kill(triton.process.pid, signal.SIGCONT)
        assert hung.status_code == 503 and hung.json()["kind"] == "backend_unavailable", hung.text
        assert "did not answer" in hung.json()["error"] and hung.headers["retry-after"] == "1"
        assert ready.status_code == 503 and ready.json()["ready"] is False
        wait_until_ready(client)
        assert client.post("/v1/audits", json=ADS[1]).status_code == 200


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_triton_crash_is_503_and_the_gateway_recovers_by_itself(model_dir, tmp_path, triton, protocol):
    """Triton killed (SIGKILL: the server and its model processes) and restarted on the same ports."""
    with gateway(model_dir, tmp_path, "triton", triton, protocol) as client:
        # Triton answers before the kill (as in the hung test: a fresh gateway's first gRPC call once met a 503
        # in a full run, 1 of 3 this session, right after the HTTP variant had restarted Triton)
        warm_up(client)
        triton.kill()  # SIGKILL to the server and its stubs; waits for them and removes their /dev/shm regions
        down = client.post("/v1/audits", json=ADS[0])
        assert down.status_code == 503, down.text
        assert down.json()["kind"] in ("backend_unavailable", "model_not_ready")
        assert "Triton" in down.json()["error"]
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["ready"] is False
        triton.start()
        wait_until_ready(client)  # no gateway restart: the HTTP client opens new connections, the gRPC channel
        # reconnects on its own
        warm_up(client)
        answers = [client.post("/v1/audits", json=ad) for ad in ADS]
        assert [a.status_code for a in answers] == [200] * len(ADS)


# --- `adaudit triton`: the command line in the foreground --------------------------------------------
def _servers_of(repository: Path) -> list[int]:
    """pids of tritonserver processes serving `repository` (from /proc: the launcher does not know them)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if command and command[0].endswith(b"tritonserver") and f"--model-repository={repository}".encode() in command:
            pids.append(int(entry.name))
    return pids


def _launch_cli(repository: Path):
    import subprocess
    import sys

    http, grpc, metrics = free_ports(3)
    return subprocess.Popen([sys.executable, "-m", "adaudit.cli", "triton", "--repo", str(repository),
                             "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
                             "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_the_triton_command_stops_its_server_on_ctrl_c_sigterm_and_a_crash(triton, tmp_path):
    """Ctrl-C while the models still load, SIGTERM once ready: exit 0 and no tritonserver left behind.
    The server dying by itself: exit 1 with one error line."""

    repository = tmp_path / "repo"
    shutil.copytree(triton.repository, repository, symlinks=True)
    repository = repository.resolve()

    early = _launch_cli(repository)  # Ctrl-C as soon as the server process exists, before it is ready
    servers = wait_for(lambda: _servers_of(repository) or None, 60, "tritonserver to start")
    early.send_signal(signal.SIGINT)
    _, stderr = early.communicate(timeout=60)
    assert early.returncode == 0 and "stopped before it was ready" in stderr, stderr
    wait_for(lambda: None if any(Path(f"/proc/{pid}").exists() for pid in servers) else True, 30,
             "the server to end")

    for stop, code, said in ((lambda pid: os.kill(pid, signal.SIGKILL), 1, "exited by itself"),
                             (None, 0, "tritonserver stopped")):
        cli = _launch_cli(repository)
        assert "tritonserver ready" in cli.stderr.readline()  # blocks until ready (or fails)
        (pid,) = _servers_of(repository)
        if stop is None:
            cli.send_signal(signal.SIGTERM)
        else:
            stop(pid)
        _, stderr = cli.communicate(timeout=60)
        assert cli.returncode == code and said in stderr, stderr
        # the server and its model stubs (its own session) are gone, whichever way it ended
        wait_for(lambda: None if session_alive(pid) else True, 30, "the server and its stubs to end")
        assert _servers_of(repository) == []
