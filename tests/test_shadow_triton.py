"""The shadow (and the canary) on a Triton of their own: two real bundled tritonservers on loopback.

Both servers serve one repository (a tiny student and a tiny teacher, exported once): the
primary's loads the student only, the other both, so the other could answer the primary's
requests too. What each server's own metrics port counts afterwards shows where the gateway
really sent each model's requests. Checked: with `shadow_triton_url` the
mirrored ads reach only the shadow's server and the answered ones only the primary's; with
`canary_triton_url` the canary's ads (the same model name and version as the primary's) reach
only the canary's server; /readyz names each target's server; the shadow metrics carry the
answering version. Skipped, with the reason, only when the server cannot run here.
"""

from __future__ import annotations

import re
import urllib.request

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
from conftest import wait_for
from benchmarks.serving import free_ports
from loopback import random_png_base64

try:
    pytriton_folder()
except TritonError as error:
    pytest.skip(f"tritonserver cannot run here: {error}", allow_module_level=True)

COPIES = ["限时特价，全网最低价！", "纯天然蜂蜜，产地直供", "理财稳赚不赔，月收益20%", "可爱猫咪玩具"]


def ad(seed: int) -> dict:
    return {"image_base64": random_png_base64(seed, 40, 56), "text": COPIES[seed % len(COPIES)], "ad_id": f"own-{seed}"}


ADS = [ad(seed) for seed in range(len(COPIES))]


class Loading(TritonServer):
    """A tritonserver that loads only `models` (explicit model control, as the chart runs it)."""

    def __init__(self, *args, models: tuple[str, ...], **kwargs):
        super().__init__(*args, **kwargs)
        self.models = models

    def command(self) -> list[str]:
        return super().command() + ["--model-control-mode=explicit"] + [f"--load-model={m}" for m in self.models]


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """(primary's server: the student, the other server: student and teacher), on one repository."""
    folder = tmp_path_factory.mktemp("own-triton")
    serving = ServingSettings(max_batch_size=8, preferred_batch_sizes=[8], threads=1)
    for seed, name in enumerate(("student", "teacher")):
        torch.manual_seed(seed)
        AuditModel(preset_config("tiny", len(build_vocabulary()))).save_pretrained(folder / name)
        export_model(folder / name, folder / "repo", name, 1, serving)
    started = []
    try:
        for role, models in (("primary", ("student",)), ("other", ("student", "teacher"))):
            server = Loading(folder / "repo", *free_ports(3), log_file=folder / f"{role}.log", ready_timeout=120,
                             models=models)
            server.start()
            started.append(server)
    except (TritonError, OSError) as error:
        for server in started:
            server.stop()
        text = "".join(p.read_text(errors="replace") for p in folder.glob("*.log"))
        if "failed to load" in text or "Failed to initialize Python stub" in text:
            pytest.fail(f"tritonserver could not load the exported models: {error}\n{text[-3000:]}")
        pytest.skip(f"tritonserver cannot run here: {error}")
    yield started
    for server in started:
        server.stop()


def inferences(server: TritonServer) -> dict[str, float]:
    """Ads inferred per model (nv_inference_count: batch items, not calls) from the server's metrics port."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    counts = {"student": 0.0, "teacher": 0.0}
    for labels, value in re.findall(r"^nv_inference_count\{([^}]*)\} (\S+)$", text, flags=re.MULTILINE):
        model = dict(re.findall(r'(\w+)="([^"]*)"', labels)).get("model")
        if model in counts:
            counts[model] += float(value)
    return counts


def moved(before: dict, after: dict) -> dict:
    return {model: after[model] - before[model] for model in before}


def gateway(tmp_path, name: str, **settings) -> TestClient:
    return TestClient(create_app(GatewaySettings(
        backend="triton", database_url=f"sqlite:///{tmp_path / name}.db", request_timeout_s=10, **settings)))


def comparisons(client, **labels) -> float:
    total = 0.0
    for line in client.get("/metrics").text.splitlines():
        match = re.match(r"^adaudit_shadow_comparisons_total\{(.*)\} (\S+)$", line)
        if match and labels.items() <= dict(re.findall(r'(\w+)="([^"]*)"', match.group(1))).items():
            total += float(match.group(2))
    return total


def test_the_shadow_reaches_only_its_own_triton_and_the_primary_only_its_own(servers, tmp_path):
    primary, shadow = servers
    before = {"primary": inferences(primary), "shadow": inferences(shadow)}
    with gateway(tmp_path, "shadow", triton_url=primary.url, shadow_triton_url=shadow.url,
                 shadow_fraction=1.0) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        targets = ready.json()["targets"]
        assert (targets["primary"]["location"], targets["shadow"]["location"]) == (primary.url, shadow.url)
        assert targets["primary"]["ready"] and targets["shadow"]["ready"] and "canary" not in targets
        for item in ADS:
            answer = client.post("/v1/audits", json=item)
            assert answer.status_code == 200, answer.text
            assert answer.json()["shadowed"] is True and answer.json()["version"] == "1"
        wait_for(lambda: comparisons(client) == len(ADS) or None, 30, "every mirrored ad compared")
        # every comparison names the version that answered
        assert comparisons(client, primary="student", primary_version="1", shadow="teacher") == len(ADS)
        assert 'adaudit_errors_total{kind="shadow_failed"}' not in client.get("/metrics").text
        for row in client.get("/v1/shadow/disagreements?limit=100").json():
            assert (row["primary_model"], row["primary_version"]) == ("student", "1")
    assert moved(before["primary"], inferences(primary)) == {"student": len(ADS), "teacher": 0}
    assert moved(before["shadow"], inferences(shadow)) == {"student": 0, "teacher": len(ADS)}


def test_a_canary_on_its_own_triton_is_apart_from_the_primary_of_the_same_name(servers, tmp_path):
    """The canary is the primary's own model and version, only on another server: its ads go there alone
    (specs and backend calls are kept apart per server), the primary's stay on the primary's server."""
    primary, canary = servers
    before = {"primary": inferences(primary), "canary": inferences(canary)}
    with gateway(tmp_path, "canary", triton_url=primary.url, canary_triton_url=canary.url, canary_model="student",
                 canary_fraction=0.5, shadow_model=None) as client:
        assert client.get("/readyz").json()["targets"]["canary"]["location"] == canary.url
        arms = {"primary": 0, "canary": 0}
        for i in range(12):
            answer = client.post("/v1/audits", json={**ADS[i % len(ADS)], "ad_id": f"arm-{i}"})
            assert answer.status_code == 200, answer.text
            arms[answer.json()["arm"]] += 1
    assert arms["primary"] and arms["canary"], arms
    assert moved(before["primary"], inferences(primary)) == {"student": arms["primary"], "teacher": 0}
    assert moved(before["canary"], inferences(canary)) == {"student": arms["canary"], "teacher": 0}
