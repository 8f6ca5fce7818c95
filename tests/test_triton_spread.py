"""Load spreading over several Triton servers (service/addresses.py, the transports' round robin), with real
bundled tritonservers on loopback: one gateway whose `triton_url` names three HTTP ports.

Two servers run from the start, the third's port answers nothing yet. Under concurrent load each of the two
serves 35-65% of the primary's requests; the third, started mid-run, receives traffic within 15 s of being
ready; one of them killed mid-run loses no request (calls on it fail over). Judged from each server's own
/metrics (`nv_inference_request_success`), not from the gateway. Then the same over gRPC (round_robin
channel). One tiny model, exported once; each server runs it on one thread.
"""

from __future__ import annotations

import re
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from fastapi.testclient import TestClient

from adaudit.export.repository import ServingSettings, export_model
from adaudit.export.server import TritonError, TritonServer, pytriton_folder
from adaudit.models.modeling import AuditModel
from adaudit.models.tokenizer import build_vocabulary
from adaudit.service.app import create_app
from adaudit.service.settings import GatewaySettings
from adaudit.training.presets import preset_config
from benchmarks.serving import free_ports
from loopback import random_png_base64

try:
    pytriton_folder()
except TritonError as error:
    pytest.skip(f"tritonserver cannot run here: {error}", allow_module_level=True)

PICKUP_S = 15.0  # the bound for a server started mid-run
SHARE = (0.35, 0.65)


def ad(i: int) -> dict:
    return {"image_base64": random_png_base64(i, 32, 32), "text": f"新款跑鞋 包邮 {i}", "ad_id": f"spread-{i}"}


ADS = [ad(i) for i in range(8)]


def served(server: TritonServer) -> int:
    """The primary's successful requests, as the server itself counts them."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    found = re.search(r'^nv_inference_request_success\{model="student",version="1"\} (\d+)', text, re.MULTILINE)
    return int(found.group(1)) if found else 0


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """Three servers over one repository; the first two started, the third not yet."""
    folder = tmp_path_factory.mktemp("spread-model") / "student"
    torch.manual_seed(0)
    AuditModel(preset_config("tiny", len(build_vocabulary()))).save_pretrained(folder)
    repository = tmp_path_factory.mktemp("spread-repo")
    export_model(folder, repository, "student", 1,
                 ServingSettings(max_batch_size=8, preferred_batch_sizes=[8], threads=1))
    logs = tmp_path_factory.mktemp("spread-logs")
    ports = free_ports(9)  # all at once: none handed out twice
    made = [TritonServer(repository, *ports[3 * i:3 * i + 3], log_file=logs / f"triton-{i}.log", ready_timeout=120)
            for i in range(3)]
    try:
        for server in made[:2]:
            server.start()
    except (TritonError, OSError) as error:
        for server in made:
            server.stop()
        pytest.skip(f"tritonserver cannot run here: {error}")
    yield made
    for server in made:
        server.stop()


def gateway(tmp_path, urls: list[str], protocol: str = "http") -> TestClient:
    settings = GatewaySettings(backend="triton", triton_protocol=protocol, triton_url=",".join(urls),
                               triton_resolve_interval_s=1.0, shadow_model=None, max_batch=8,
                               request_timeout_s=10, database_url=f"sqlite:///{tmp_path / protocol}.db")
    return TestClient(create_app(settings))


class Load:
    """Concurrent audits from `workers` threads until stopped; every answer's status kept."""

    def __init__(self, client: TestClient, workers: int = 4):
        self.client, self.workers, self.statuses = client, workers, []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(w,), daemon=True) for w in range(workers)]

    def _run(self, worker: int) -> None:
        i = worker
        while not self.stopping.is_set():
            answer = self.client.post("/v1/audits", json=ADS[i % len(ADS)])
            self.statuses.append(answer.status_code if answer.status_code == 200 else answer.text)
            i += self.workers

    def __enter__(self) -> "Load":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(30)


def shares(before: list[int], after: list[int]) -> list[float]:
    done = [b - a for a, b in zip(before, after)]
    return [d / max(sum(done), 1) for d in done]


def burst(client: TestClient, count: int) -> None:
    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(lambda i: client.post("/v1/audits", json=ADS[i % len(ADS)]).status_code,
                                 range(count)))
    assert statuses == [200] * count


def test_two_servers_share_the_load_and_a_third_started_mid_run_gets_traffic(servers, tmp_path):
    first, second, third = servers
    with gateway(tmp_path, [s.url for s in servers]) as client:  # the third's port refuses for now
        burst(client, 8)  # warm up both (a stub's first call is slow)
        before = [served(s) for s in (first, second)]
        burst(client, 80)
        spread = shares(before, [served(s) for s in (first, second)])
        print(f"\nHTTP, two servers: shares {spread[0]:.2f} / {spread[1]:.2f}")
        assert all(SHARE[0] <= share <= SHARE[1] for share in spread), spread

        with Load(client) as load:
            started = time.monotonic()
            third.start()
            ready = time.monotonic()
            while served(third) == 0:
                assert time.monotonic() - ready < PICKUP_S, f"the third server got no request in {PICKUP_S} s"
                time.sleep(0.1)
            pickup = time.monotonic() - ready
            print(f"third server: ready {ready - started:.1f} s after its start, first request {pickup:.2f} s later")
            time.sleep(1)
            # one server disappears mid-run (SIGKILL, requests in flight on it): they fail over, none is lost
            second.kill()
            time.sleep(2)
        lost = [status for status in load.statuses if status != 200]
        assert not lost, lost[:3]
        assert len(load.statuses) > 20
        after_kill = [served(s) for s in (first, third)]
        burst(client, 8)
        assert all(b > a for a, b in zip(after_kill, [served(s) for s in (first, third)]))


def test_grpc_round_robin_over_the_servers(servers, tmp_path):
    alive = [s for s in servers if s.ready()]
    assert len(alive) >= 2, "the first test leaves two servers running"
    with gateway(tmp_path, [s.grpc_url for s in alive], "grpc") as client:
        burst(client, 8)
        before = [served(s) for s in alive[:2]]
        burst(client, 60)
        spread = shares(before, [served(s) for s in alive[:2]])
        print(f"\ngRPC, two servers: shares {spread[0]:.2f} / {spread[1]:.2f}")
        assert all(SHARE[0] <= share <= SHARE[1] for share in spread), spread
