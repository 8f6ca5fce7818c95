"""The deployment, checked offline: the Helm chart, the Prometheus rules, the Grafana dashboard and
the canary analysis (helm/, deploy/).

- The chart renders with every values file (helm-python-sdk, Helm's own Go code), lints clean in
  strict mode, and every manifest validates against the Kubernetes 1.30 schemas in strict mode
  (kubernetes-validate; custom resources, which have no schema there, are checked for their
  identity only). Bad values fail with a message naming the value.
- What the chart hands the gateway is what the gateway accepts: the rendered ConfigMap and Secret,
  as environment variables, build `GatewaySettings`; the probes point at routes the gateway serves.
- promtool (Debian's `prometheus` package) checks the scrape config and the rules and runs the
  alert unit tests; every PromQL expression of the dashboard, the analysis template and the
  prometheus-adapter rule parses, and uses only metric names the gateway's registry or a real
  Triton (the tritonserver bundled in nvidia-pytriton) exports.
- End to end: a real Prometheus on loopback scrapes a running gateway with the rules loaded, and
  its agreement rate equals the one the traffic produced.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import helm_python
import numpy as np
import pytest
import torch
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, validate
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from adaudit.training.presets import preset_config
from adaudit.models.modeling import AuditModel
from adaudit.models.preprocessing import AuditProcessor
from adaudit.models.tokenizer import build_vocabulary
from adaudit.service.app import create_app
from adaudit.service.metrics import GatewayMetrics
from adaudit.service.settings import GatewaySettings
from conftest import wait_for
from loopback import free_port

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "adaudit"
DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "rules" / "adaudit.rules.yml"
DASHBOARD = DEPLOY / "grafana" / "adaudit.json"
ANALYSIS = DEPLOY / "canary" / "analysis-template.yaml"
ADAPTER = DEPLOY / "prometheus-adapter.yaml"
KUBERNETES = "1.30.0"
VALUES_FILES = ["default", "shadow", "canary", "gpu-off"]
CUSTOM_RESOURCES = {"ServiceMonitor", "PodMonitor", "PrometheusRule", "AnalysisTemplate"}
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool missing: apt-get install prometheus "
                                                              "(the Makefile's install target does)")
helm_python.disable_logging()


def values_of(name: str) -> dict:
    return {} if name == "default" else yaml.safe_load((ROOT / "helm" / "values" / f"{name}.yaml").read_text())


def render(values: dict) -> list[dict]:
    files = helm_python.Chart.load(CHART).render(values, name="adaudit", namespace="audit")
    return [doc for text in files.values() for doc in yaml.safe_load_all(text) if doc]


def find(docs: list[dict], kind: str, name: str | None = None) -> dict:
    matches = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


# --- the chart ----------------------------------------------------------------------------------

def shadow_is_on(values: dict) -> bool:
    return float(values.get("gateway", {}).get("settings", {}).get("shadow_fraction") or 0) > 0


@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_chart_renders_manifests_valid_for_kubernetes(values_file):
    docs = render(values_of(values_file))
    kinds = sorted(d["kind"] for d in docs)
    own = int(shadow_is_on(values_of(values_file)))  # the shadow's own Triton: a Deployment and a Service
    for kind, count in (("Deployment", 2 + own), ("Service", 2 + own), ("HorizontalPodAutoscaler", 2),
                        ("PodDisruptionBudget", 2)):
        assert kinds.count(kind) == count, f"{values_file}: {kind} for the gateway and Triton, got {kinds}"
    for doc in docs:
        try:
            validate(doc, KUBERNETES, strict=True)
        except SchemaNotFoundError:
            assert doc["kind"] in CUSTOM_RESOURCES, f"no schema for {doc['kind']}"
            assert doc["apiVersion"].count("/") == 1 and doc["metadata"]["name"], doc["kind"]
    lint = helm_python.lint(CHART, values_of(values_file), strict=True, kube_version=f"v{KUBERNETES}")
    problems = [m for m in lint["messages"] if m["severity"] >= 2] + lint["errors"]
    assert not problems, problems


def test_gpu_and_model_repository_wiring():
    triton = find(render({}), "Deployment", "adaudit-triton")["spec"]["template"]["spec"]
    server = triton["containers"][0]
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in triton["tolerations"]
    assert "--model-repository=/models" in server["args"] and "--load-model=student" in server["args"]
    assert "--load-model=teacher" not in server["args"]  # no shadow traffic: the teacher is not loaded
    assert triton["volumes"][0]["persistentVolumeClaim"] == {"claimName": "adaudit-models", "readOnly": True}
    # the gateway reads each version's tokenizer from the same volume, read-only
    gateway = find(render({}), "Deployment", "adaudit-gateway")["spec"]["template"]["spec"]
    assert {"claimName": "adaudit-models", "readOnly": True} in [v.get("persistentVolumeClaim") for v in gateway["volumes"]]
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in gateway["containers"][0]["volumeMounts"]
    assert find(render({}), "ConfigMap", "adaudit-gateway")["data"]["ADAUDIT_MODEL_REPOSITORY"] == "/models"

    off = find(render(values_of("gpu-off")), "Deployment", "adaudit-triton")["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in json.dumps(off["containers"][0]["resources"]) and "tolerations" not in off
    assert "--allow-gpu-metrics=false" in off["containers"][0]["args"]

    # with the shadow on, the teacher is loaded by its own Triton (test_the_shadow_gets_its_own_triton_and_gpu),
    # or by this one when it has none
    shadow = find(render(values_of("shadow")), "Deployment", "adaudit-triton")
    assert "--load-model=teacher" not in shadow["spec"]["template"]["spec"]["containers"][0]["args"]
    shared = find(render({**values_of("shadow"), "shadowTriton": {"enabled": False}}), "Deployment", "adaudit-triton")
    assert "--load-model=teacher" in shared["spec"]["template"]["spec"]["containers"][0]["args"]

    s3 = find(render({"triton": {"modelRepository": {"pvc": {"claimName": ""}, "url": "s3://bucket/adaudit",
                                                     "credentialsSecret": "s3-keys"}}}), "Deployment", "adaudit-triton")
    pod = s3["spec"]["template"]["spec"]
    assert "--model-repository=s3://bucket/adaudit" in pod["containers"][0]["args"]
    assert pod["containers"][0]["envFrom"] == [{"secretRef": {"name": "s3-keys"}}]
    assert not any("persistentVolumeClaim" in v for v in pod["volumes"])
    s3_values = {"triton": {"modelRepository": {"pvc": {"claimName": ""}, "url": "s3://bucket/adaudit"}}}
    assert "ADAUDIT_MODEL_REPOSITORY" not in find(render(s3_values), "ConfigMap", "adaudit-gateway")["data"]


def test_the_shadow_gets_its_own_triton_and_gpu():
    """Shadow on: a Deployment and a headless Service <release>-triton-shadow loading only the teacher, on a GPU
    of its own; the gateway's ADAUDIT_SHADOW_TRITON_URL points at it. Its container is the primary Triton's
    (image, ports, probes, mounts, security) but for the models it loads and its resources."""
    docs = render(values_of("shadow"))
    pod = find(docs, "Deployment", "adaudit-triton-shadow")["spec"]["template"]["spec"]
    server = pod["containers"][0]
    assert [a for a in server["args"] if a.startswith("--load-model=")] == ["--load-model=teacher"]
    assert server["resources"]["requests"]["nvidia.com/gpu"] == server["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    primary = find(docs, "Deployment", "adaudit-triton")["spec"]["template"]["spec"]
    alike = lambda container: {k: v for k, v in container.items() if k not in ("args", "resources")}  # noqa: E731
    assert alike(server) == alike(primary["containers"][0])
    assert [a for a in server["args"] if not a.startswith("--load-model=")] == \
        [a for a in primary["containers"][0]["args"] if not a.startswith("--load-model=")]
    assert pod["volumes"] == primary["volumes"] and pod["securityContext"] == primary["securityContext"]
    service = find(docs, "Service", "adaudit-triton-shadow")["spec"]
    assert service["clusterIP"] == "None" and service["selector"] == \
        find(docs, "Deployment", "adaudit-triton-shadow")["spec"]["selector"]["matchLabels"]
    gateway_env = find(docs, "ConfigMap", "adaudit-gateway")["data"]
    assert gateway_env["ADAUDIT_SHADOW_TRITON_URL"] == "adaudit-triton-shadow:8000"
    assert find(docs, "PodMonitor", "adaudit-triton-shadow")["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    grpc = render({**values_of("shadow"), "triton": {"protocol": "grpc"}})
    assert find(grpc, "ConfigMap", "adaudit-gateway")["data"]["ADAUDIT_SHADOW_TRITON_URL"] == \
        "adaudit-triton-shadow:8001"
    cpu = values_of("gpu-off")
    off = render({**cpu, "gateway": {**cpu["gateway"], **values_of("shadow")["gateway"]}})
    assert "nvidia.com/gpu" not in json.dumps(find(off, "Deployment", "adaudit-triton-shadow"))
    # no shadow traffic, or the shadow on the primary's Triton, or on a Triton named by hand: no Deployment of its own
    for values in ({}, {**values_of("shadow"), "shadowTriton": {"enabled": False}},
                   {"gateway": {"settings": {"shadow_fraction": 0.25, "shadow_triton_url": "teachers.gpu:8000"}}}):
        docs = render(values)
        assert not [d for d in docs if d["metadata"]["name"] == "adaudit-triton-shadow"]
        data = find(docs, "ConfigMap", "adaudit-gateway")["data"]
        assert data.get("ADAUDIT_SHADOW_TRITON_URL") == values.get("gateway", {}).get("settings", {}).get(
            "shadow_triton_url")


def test_the_triton_autoscaler_reads_the_primary_models_queue_time_only(tmp_path):
    """The HPA asks prometheus-adapter for the metric with the selector model=<primary_model>, which the
    adapter adds to the query's label matchers: on a pod serving student and teacher, the teacher's long
    queue does not count. Checked by promtool on series of both models (and the adapter's rule serves only
    series that have a model label)."""
    metric = find(render({}), "HorizontalPodAutoscaler", "adaudit-triton")["spec"]["metrics"][0]["pods"]["metric"]
    assert metric["selector"] == {"matchLabels": {"model": "student"}}
    other = find(render({"gateway": {"settings": {"primary_model": "student-v2"}}}), "HorizontalPodAutoscaler",
                 "adaudit-triton")["spec"]["metrics"][0]["pods"]["metric"]
    assert other["selector"]["matchLabels"] == {"model": "student-v2"}
    rule = yaml.safe_load(ADAPTER.read_text())["rules"]["custom"][0]
    assert 'model!=""' in rule["seriesQuery"] and rule["name"]["as"] == metric["name"]
    if PROMTOOL is None:
        pytest.skip("promtool missing: apt-get install prometheus (the Makefile's install target does)")
    # what prometheus-adapter asks for one pod: the pod's and namespace's matchers plus the HPA's selector
    matchers = 'namespace="audit",pod="adaudit-triton-0",model="student"'
    query = rule["metricsQuery"].replace("<<.LabelMatchers>>", matchers).replace("<<.GroupBy>>", "pod")
    pod = 'namespace="audit",pod="adaudit-triton-0",version="1"'
    series = [  # a minute: 60 student requests queued 1 ms each, 60 teacher requests queued 100 ms each
        {"series": f'nv_inference_queue_duration_us{{{pod},model="student"}}', "values": "0+60000x10"},
        {"series": f'nv_inference_request_success{{{pod},model="student"}}', "values": "0+60x10"},
        {"series": f'nv_inference_queue_duration_us{{{pod},model="teacher"}}', "values": "0+6000000x10"},
        {"series": f'nv_inference_request_success{{{pod},model="teacher"}}', "values": "0+60x10"},
    ]
    (tmp_path / "none.yml").write_text("groups: []\n")
    (tmp_path / "adapter.test.yml").write_text(yaml.safe_dump({"rule_files": ["none.yml"], "tests": [{
        "interval": "1m", "input_series": series,
        "promql_expr_test": [{"expr": query, "eval_time": "5m",
                              "exp_samples": [{"labels": '{pod="adaudit-triton-0"}', "value": 1000}]}]}]}))
    assert "SUCCESS" in promtool("test", "rules", "adapter.test.yml", cwd=tmp_path)


def test_every_container_is_locked_down():
    docs = render(values_of("canary"))
    workloads = [d for d in docs if d["kind"] in ("Deployment", "Job", "CronJob")]
    # the gateway, Triton, the shadow's own Triton (the canary overlay mirrors to the teacher), the migrations,
    # the pruning of the reviewers' copies of old ads
    assert sorted(d["kind"] for d in workloads) == ["CronJob", "Deployment", "Deployment", "Deployment", "Job"]
    for workload in workloads:
        template = workload["spec"]["jobTemplate"]["spec"] if workload["kind"] == "CronJob" else workload["spec"]
        pod = template["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["enableServiceLinks"] is False
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["runAsNonRoot"] and context["readOnlyRootFilesystem"], container["name"]
            assert context["capabilities"] == {"drop": ["ALL"]} and context["allowPrivilegeEscalation"] is False
            assert container["image"].rsplit(":", 1)[1] not in ("", "latest")


def environment_of(docs: list[dict]) -> dict[str, str]:
    """The gateway container's ADAUDIT_* variables, resolved from the rendered ConfigMap and Secret."""
    container = find(docs, "Deployment", "adaudit-gateway")["spec"]["template"]["spec"]["containers"][0]
    secrets = {d["metadata"]["name"]: d["stringData"] for d in docs if d["kind"] == "Secret"}
    environment = {}
    for source in container["envFrom"]:
        environment.update(find(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    for variable in container["env"]:
        reference = variable.get("valueFrom", {}).get("secretKeyRef")
        if reference:
            environment[variable["name"]] = secrets[reference["name"]][reference["key"]]
    return {name: value for name, value in environment.items() if name.startswith("ADAUDIT_")}


@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_gateway_accepts_the_settings_the_chart_renders(values_file, monkeypatch):
    values = values_of(values_file)
    values["database"] = {"existingSecret": "", "url": POSTGRES}  # the chart's own Secret, to read it back
    values["apiKeys"] = {"enabled": True, "entries": ["ops:" + "ab" * 32, "review-ui:" + "cd" * 32]}
    environment = environment_of(render(values))
    fields = {f"ADAUDIT_{name.upper()}" for name in GatewaySettings.model_fields}
    assert set(environment) <= fields, f"not gateway settings: {set(environment) - fields}"
    for name in list(os.environ):
        if name.startswith("ADAUDIT_"):
            monkeypatch.delenv(name)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    settings = GatewaySettings()
    expected = values.get("gateway", {}).get("settings", {})
    assert settings.backend == "triton" and settings.triton_url == "adaudit-triton:8000"
    assert (settings.triton_resolve_interval_s, settings.triton_connection_max_age_s) == (5, 60)
    assert settings.triton_protocol == "http"
    assert settings.shadow_fraction == expected.get("shadow_fraction", 0)
    assert settings.canary_fraction == expected.get("canary_fraction", 0)
    assert settings.canary_version == expected.get("canary_version")
    assert settings.max_image_bytes == 5242880 and settings.database_url == POSTGRES
    assert (settings.database_pool_size, settings.database_max_overflow) == (5, 2)  # 10 pods x 7 < 100 connections
    assert not settings.migrates_on_start()  # a shared database: the migration Job upgrades it, pods run no DDL
    assert len(settings.api_keys) == 2
    # the shadow's requests go to its own Triton while it is on; the canary's to the primary's
    assert settings.triton_urls()["shadow"] == ("adaudit-triton-shadow:8000" if shadow_is_on(values)
                                                else settings.triton_url)
    assert settings.triton_urls()["canary"] == settings.triton_url


POSTGRES = "postgresql+psycopg://adaudit:secret@db.audit.svc:5432/adaudit"
SQLITE = "sqlite:////var/lib/adaudit/decisions.db"


def test_a_hook_job_upgrades_the_schema_before_the_gateway_pods_start():
    """Default values: the decision log is PostgreSQL from the Secret adaudit-database; a pre-install/pre-upgrade
    hook Job runs `adaudit db upgrade` with the gateway's image, reading the same Secret the pods read."""
    docs = render({})
    job = find(docs, "Job", "adaudit-migrations")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert "before-hook-creation" in job["metadata"]["annotations"]["helm.sh/hook-delete-policy"]
    pod = job["spec"]["template"]["spec"]
    gateway = find(docs, "Deployment", "adaudit-gateway")["spec"]["template"]["spec"]["containers"][0]
    container = pod["containers"][0]
    assert pod["restartPolicy"] == "Never" and container["image"] == gateway["image"]
    assert container["args"] == ["db", "upgrade"]
    url = {v["name"]: v for v in container["env"]}["ADAUDIT_DATABASE_URL"]
    assert url == {v["name"]: v for v in gateway["env"]}["ADAUDIT_DATABASE_URL"]
    assert url["valueFrom"]["secretKeyRef"] == {"name": "adaudit-database", "key": "database-url"}
    assert not [d for d in docs if d["kind"] == "Secret"]  # the URL is the user's Secret's, no copy of it

    # a URL given as a value: the Job reads it from a hook Secret made before it (the release's own Secret does
    # not exist yet at the first install); the pods read the chart's Secret, with the same URL
    docs = render({"database": {"existingSecret": "", "url": POSTGRES}})
    hook_secret = find(docs, "Secret", "adaudit-migrations")
    assert hook_secret["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert int(hook_secret["metadata"]["annotations"]["helm.sh/hook-weight"]) < \
        int(find(docs, "Job")["metadata"]["annotations"]["helm.sh/hook-weight"])
    reference = find(docs, "Job")["spec"]["template"]["spec"]["containers"][0]["env"][0]["valueFrom"]["secretKeyRef"]
    assert hook_secret["stringData"][reference["key"]] == POSTGRES
    assert find(docs, "Secret", "adaudit-secrets")["stringData"]["database-url"] == POSTGRES

    assert not [d for d in render({"database": {"migrations": {"enabled": False}}}) if d["kind"] == "Job"]


def test_a_cronjob_prunes_the_reviewers_copies_of_old_ads():
    """`adaudit db prune-review-items` daily with the gateway's image and the gateway's database URL; the values
    choose the age and whether open items go too; no CronJob for a SQLite log (the file is in the gateway pod)."""
    docs = render({})
    job = find(docs, "CronJob", "adaudit-review-items-pruning")
    assert job["spec"]["concurrencyPolicy"] == "Forbid" and job["spec"]["schedule"] == "17 3 * * *"
    container = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    gateway = find(docs, "Deployment", "adaudit-gateway")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == gateway["image"]
    assert container["args"] == ["db", "prune-review-items", "--older-than-days", "30"]
    url = {v["name"]: v for v in container["env"]}["ADAUDIT_DATABASE_URL"]
    assert url == {v["name"]: v for v in gateway["env"]}["ADAUDIT_DATABASE_URL"]
    chosen = render({"database": {"reviewItemsPruning": {"olderThanDays": 7, "openItems": True}}})
    assert find(chosen, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"] == \
        ["db", "prune-review-items", "--older-than-days", "7", "--open-items"]
    assert not [d for d in render({"database": {"reviewItemsPruning": {"enabled": False}}}) if d["kind"] == "CronJob"]
    alone = {"database": {"existingSecret": "", "url": SQLITE},
             "gateway": {"autoscaling": {"enabled": False}, "replicas": 1}}
    assert not [d for d in render(alone) if d["kind"] == "CronJob"]


def test_sqlite_is_refused_with_more_than_one_possible_gateway_pod():
    """A SQLite URL is one file per pod: the chart refuses it, naming the values, unless the gateway has exactly
    one pod; that pod upgrades its own file at start and no migration Job is rendered."""
    chart = helm_python.Chart.load(CHART)
    for gateway, named in (({}, "gateway.autoscaling.maxReplicas allows 10"),
                           ({"autoscaling": {"enabled": False}, "replicas": 2}, "gateway.replicas allows 2"),
                           ({"autoscaling": {"maxReplicas": 2}}, "gateway.autoscaling.maxReplicas allows 2")):
        with pytest.raises(helm_python.HelmRenderError) as failure:
            chart.render({"database": {"existingSecret": "", "url": SQLITE}, "gateway": gateway}, name="adaudit",
                         namespace="audit")
        assert "database.url is SQLite" in str(failure.value) and named in str(failure.value), str(failure.value)
    alone = {"database": {"existingSecret": "", "url": SQLITE},
             "gateway": {"autoscaling": {"enabled": False}, "replicas": 1}}
    docs = render(alone)
    assert find(docs, "Deployment", "adaudit-gateway")["spec"]["replicas"] == 1
    assert "adaudit-gateway" not in {d["metadata"]["name"] for d in docs if d["kind"] == "HorizontalPodAutoscaler"}
    assert not [d for d in docs if d["kind"] == "Job"]
    environment = environment_of(docs)
    assert environment["ADAUDIT_DATABASE_URL"] == SQLITE and "ADAUDIT_DATABASE_MIGRATE_ON_START" not in environment
    lint = helm_python.lint(CHART, alone, strict=True, kube_version=f"v{KUBERNETES}")
    assert not [m for m in lint["messages"] if m["severity"] >= 2] + lint["errors"]


def test_probes_point_at_routes_the_gateway_and_triton_serve():
    docs = render({})
    gateway = find(docs, "Deployment", "adaudit-gateway")["spec"]["template"]["spec"]["containers"][0]
    paths = {gateway[p]["httpGet"]["path"] for p in ("startupProbe", "livenessProbe", "readinessProbe")}
    openapi = create_app(GatewaySettings(backend="triton")).openapi()
    served = {path for path, methods in openapi["paths"].items() if "get" in methods}
    assert paths == {"/healthz", "/readyz"} and paths <= served
    triton = find(docs, "Deployment", "adaudit-triton")["spec"]["template"]["spec"]["containers"][0]
    assert {triton[p]["httpGet"]["path"] for p in ("livenessProbe", "readinessProbe")} == TRITON_PROBES
    ports = {p["name"]: p["containerPort"] for p in triton["ports"]}
    assert f"--metrics-port={ports['metrics']}" in triton["args"] and ports["metrics"] == 8002


TRITON_PROBES = {"/v2/health/live", "/v2/health/ready"}


def test_triton_is_a_headless_service_of_at_least_two_pods_spread_over_nodes():
    """The gateway's Triton URL names a headless Service (its name resolves to every ready pod, which the
    gateway spreads its calls over); at least two Triton pods, a PDB that keeps one up, one pod per node
    preferred."""
    docs = render({})
    service = find(docs, "Service", "adaudit-triton")
    assert service["spec"]["clusterIP"] == "None" and not service["spec"].get("publishNotReadyAddresses")
    url = find(docs, "ConfigMap", "adaudit-gateway")["data"]["ADAUDIT_TRITON_URL"]
    assert url == f"{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    pod = find(docs, "Deployment", "adaudit-triton")["spec"]["template"]
    assert find(docs, "HorizontalPodAutoscaler", "adaudit-triton")["spec"]["minReplicas"] >= 2
    budget = find(docs, "PodDisruptionBudget", "adaudit-triton")["spec"]
    assert budget["minAvailable"] == 1 and "maxUnavailable" not in budget
    assert budget["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    (spread,) = pod["spec"]["topologySpreadConstraints"]
    assert (spread["topologyKey"], spread["maxSkew"], spread["whenUnsatisfiable"]) == \
        ("kubernetes.io/hostname", 1, "ScheduleAnyway")
    assert spread["labelSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    fixed = find(render({"triton": {"autoscaling": {"enabled": False}}}), "Deployment", "adaudit-triton")
    assert fixed["spec"]["replicas"] == 2
    hard = render({"triton": {"topologySpread": {"whenUnsatisfiable": "DoNotSchedule"}}})
    assert find(hard, "Deployment", "adaudit-triton")["spec"]["template"]["spec"]["topologySpreadConstraints"][0][
        "whenUnsatisfiable"] == "DoNotSchedule"
    off = render({"triton": {"topologySpread": {"enabled": False}, "podDisruptionBudget": {"enabled": False},
                             "autoscaling": {"enabled": False}, "replicas": 1}})
    assert "topologySpreadConstraints" not in find(off, "Deployment", "adaudit-triton")["spec"]["template"]["spec"]
    assert [d["metadata"]["name"] for d in off if d["kind"] == "PodDisruptionBudget"] == ["adaudit-gateway"]
    for doc in docs + off:
        try:
            validate(doc, KUBERNETES, strict=True)
        except SchemaNotFoundError:
            pass


def test_images_hold_the_package_and_run_what_the_chart_asks():
    import tomllib

    import typer

    from adaudit.cli import app

    folders = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values())
    for dockerfile in (ROOT / "Dockerfile", DEPLOY / "triton.Dockerfile"):
        copied = set(re.findall(r"^COPY (\S+) \1$", dockerfile.read_text(), flags=re.MULTILINE))
        assert folders <= copied, f"{dockerfile.name} misses {folders - copied}"
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (.+)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE).group(1))
    gateway = find(render({}), "Deployment", "adaudit-gateway")["spec"]["template"]["spec"]["containers"][0]
    command = typer.main.get_command(app)
    assert entrypoint == ["adaudit"] and gateway["args"][0] in command.commands
    options = {o for p in command.commands[gateway["args"][0]].params for o in p.opts}
    assert {a for a in gateway["args"] if a.startswith("--")} <= options
    group, name = find(render({}), "Job", "adaudit-migrations")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert name in command.commands[group].commands  # `adaudit db upgrade`
    assert gateway["args"][gateway["args"].index("--port") + 1] == str(gateway["ports"][0]["containerPort"])

BAD_VALUES = [
    ({"gateway": {"settings": {"shadow_fraction": 2}}}, "shadow_fraction"),
    ({"gateway": {"settings": {"canary_fraction": -0.1}}}, "canary_fraction"),
    ({"triton": {"image": {"tag": ""}}}, "tag"),
    ({"gateway": {"image": {"tag": "latest"}}}, "tag"),
    ({"gateway": {"settngs": {}}}, "settngs"),
    ({"triton": {"gpu": {"count": 0}}}, "count"),
    ({"triton": {"modelRepository": {"url": "http://example.com/models"}}}, "url"),
    ({"triton": {"modelRepository": {"url": "s3://bucket/models"}}}, "either pvc.claimName or url"),
    ({"gateway": {"settings": {"canary_fraction": 0.1}}}, "canary_model"),
    ({"gateway": {"settings": {"shadow_triton_url": "teacher"}}}, "shadow_triton_url"),
    ({"shadowTriton": {"enabled": True, "gpu": {"count": 0}}}, "count"),
    ({"database": {"url": "mysql://x"}}, "url"),
    ({"triton": {"enabled": False}}, "triton.externalUrl"),
    ({"apiKeys": {"enabled": True, "entries": ["ops:not-a-digest"]}}, "entries"),
    ({"securityContext": {"runAsNonRoot": False}}, "runAsNonRoot"),
    # a Triton PDB that no eviction could ever satisfy (one pod, minAvailable 1): node drains would hang
    ({"triton": {"autoscaling": {"minReplicas": 1}}}, "minAvailable 1 with triton.autoscaling.minReplicas 1"),
    ({"triton": {"autoscaling": {"enabled": False}, "replicas": 1}}, "minAvailable 1 with triton.replicas 1"),
    ({"triton": {"topologySpread": {"whenUnsatisfiable": "Never"}}}, "whenUnsatisfiable"),
    ({"gateway": {"settings": {"triton_resolve_interval_s": 0}}}, "triton_resolve_interval_s"),
]


@pytest.mark.parametrize("values, field", BAD_VALUES, ids=[field for _, field in BAD_VALUES])
def test_bad_values_fail_with_a_message_naming_the_value(values, field):
    with pytest.raises(helm_python.HelmError) as failure:
        render(values)
    assert field in str(failure.value), str(failure.value)


def test_chart_ships_the_dashboard_rules_and_analysis_of_deploy():
    docs = render({"metrics": {"prometheusRule": {"enabled": True}, "serviceMonitor": {"enabled": True}},
                   "canary": {"analysisTemplate": {"enabled": True}}})
    dashboard = find(docs, "ConfigMap", "adaudit-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["adaudit.json"]) == json.loads(DASHBOARD.read_text())
    assert find(docs, "PrometheusRule")["spec"] == yaml.safe_load(RULES.read_text())
    assert find(docs, "AnalysisTemplate") == yaml.safe_load(ANALYSIS.read_text())
    assert find(docs, "ServiceMonitor")["spec"]["endpoints"][0]["path"] == "/metrics"
    assert find(docs, "PodMonitor")["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    triton_hpa = find(docs, "HorizontalPodAutoscaler", "adaudit-triton")["spec"]["metrics"][0]["pods"]
    adapter_rule = yaml.safe_load(ADAPTER.read_text())["rules"]["custom"][0]
    assert triton_hpa["metric"]["name"] == adapter_rule["name"]["as"]  # the metric prometheus-adapter serves


# --- Prometheus: scrape config, rules, alert unit tests -------------------------------------------

def promtool(*args: str, cwd: Path | None = None) -> str:
    run = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, cwd=cwd, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout + run.stderr


def scrape_config(targets: dict[str, list[str]] | None = None, rules: Path = RULES) -> dict:
    """deploy/prometheus.yml with static targets in place of kubernetes_sd (Debian's Prometheus has no
    Kubernetes discovery); with `targets`, the relabelling on Kubernetes metadata goes too."""
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    config["rule_files"] = [str(rules)]
    for job in config["scrape_configs"]:
        job.pop("kubernetes_sd_configs")
        job["static_configs"] = [{"targets": (targets or {}).get(job["job_name"], ["127.0.0.1:9"])}]
        if targets is not None:
            job.pop("relabel_configs")
    return config


@needs_promtool
def test_promtool_checks_config_rules_and_alert_unit_tests(tmp_path):
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(scrape_config()))
    assert "SUCCESS" in promtool("check", "config", str(config))
    assert "SUCCESS" in promtool("check", "rules", str(RULES))
    assert "SUCCESS" in promtool("test", "rules", "adaudit.rules.test.yml", cwd=RULES.parent)
    tested = set(re.findall(r"alertname: (\w+)", (RULES.parent / "adaudit.rules.test.yml").read_text()))
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r}
    assert alerts == tested, f"alerts without a unit test: {alerts - tested}"


def test_scrape_config_keeps_the_pods_and_ports_the_chart_makes():
    docs = render(values_of("shadow"))  # the shadow's own Triton too
    for job in yaml.safe_load((DEPLOY / "prometheus.yml").read_text())["scrape_configs"]:
        keep = {tuple(r["source_labels"]): r["regex"] for r in job["relabel_configs"] if r.get("action") == "keep"}
        name, component = keep[("__meta_kubernetes_pod_label_app_kubernetes_io_name",
                                "__meta_kubernetes_pod_label_app_kubernetes_io_component")].split(";")
        pod = find(docs, "Deployment", f"adaudit-{component}")["spec"]["template"]
        assert pod["metadata"]["labels"]["app.kubernetes.io/name"] == name
        ports = {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
        assert keep[("__meta_kubernetes_pod_container_port_name",)] in ports


# --- PromQL of the dashboard, the analysis and the adapter ---------------------------------------

def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]


def analysis_expressions() -> list[str]:
    template = yaml.safe_load(ANALYSIS.read_text())
    return [m["provider"]["prometheus"]["query"] for m in template["spec"]["metrics"]]


def adapter_expressions() -> list[str]:
    return [rule["metricsQuery"] for rule in yaml.safe_load(ADAPTER.read_text())["rules"]["custom"]]


def rule_expressions() -> list[str]:
    return [rule["expr"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def substituted(expr: str) -> str:
    """Grafana's, Argo's and prometheus-adapter's placeholders replaced by what they stand for."""
    defaults = {a["name"]: a.get("value", "2") for a in yaml.safe_load(ANALYSIS.read_text())["spec"]["args"]}
    expr = re.sub(r"\{\{args\.([\w-]+)\}\}", lambda m: defaults[m.group(1)], expr)
    for placeholder, value in {"$__rate_interval": "2m", "$__range": "1h", "$__interval": "30s", "$model": ".*",
                               "<<.LabelMatchers>>": 'namespace="audit",pod="adaudit-triton-0"',
                               "<<.GroupBy>>": "pod"}.items():
        expr = expr.replace(placeholder, value)
    assert not re.search(r"\$\w|\{\{|<<", expr), f"placeholder left in {expr}"
    return expr


def test_dashboard_is_well_formed():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and len(ids) >= 10
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    for panel in dashboard["panels"]:
        assert panel["title"] and panel["targets"] and set(panel["gridPos"]) == {"x", "y", "w", "h"}
        assert panel["datasource"]["uid"] == "${datasource}"
        used = set(re.findall(r"\$(?!__)(\w+)", json.dumps(panel["targets"])))
        assert used <= variables, f"panel {panel['title']!r} uses undefined variables {used - variables}"
    text = json.dumps(dashboard)
    for wanted in ("histogram_quantile(0.99", "adaudit_shadow_disagreements_total", "adaudit_reviewed_total",
                   "adaudit_shadow_queue_depth", "nv_inference_queue_duration_us",
                   "nv_inference_compute_infer_duration_us", "nv_inference_exec_count",
                   "adaudit_suggestions_total", "adaudit_reviewed_suggestions_total"):
        assert wanted in text, wanted


@needs_promtool
def test_every_promql_expression_parses(tmp_path):
    expressions = dashboard_expressions() + analysis_expressions() + adapter_expressions()
    rules = [{"record": f"check:expression_{i}", "expr": substituted(e)} for i, e in enumerate(expressions)]
    file = tmp_path / "expressions.yml"
    file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard-analysis-adapter", "rules": rules}]}))
    assert f"SUCCESS: {len(rules)} rules found" in promtool("check", "rules", str(file))


def exported_by_registry() -> set[str]:
    """Series names the gateway exports, from its registry's metric types (labelled metrics show no
    sample before their first use, so their names are derived the way prometheus-client writes them)."""
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"], "gauge": [""]}
    return {family.name + suffix for family in GatewayMetrics().registry.collect() for suffix in suffixes[family.type]}


def metric_names(expr: str) -> set[str]:
    expr = re.sub(r'"[^"]*"', '""', expr)  # label values
    selectors = set(re.findall(r"([a-zA-Z_:][\w:]*)\s*[{\[]", expr))
    bare = set(re.findall(r"\b(adaudit_\w+|nv_\w+|adaudit:[\w:]+)", expr))
    return selectors | bare


def test_shadow_agreement_queries_keep_each_answering_version_apart():
    """Every query over the shadow's agreement counters groups or filters by primary_version (the version that
    answered: the primary's or the canary's), so a canary's agreement with the teacher never blends both arms."""
    shadow = r"adaudit_shadow_(?:agreements|disagreements)_total"
    for expr in map(substituted, rule_expressions() + dashboard_expressions() + analysis_expressions()):
        if not re.search(shadow, expr):
            continue
        groupings = re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", expr)
        selectors = re.findall(r"adaudit_shadow_(?:agreements|disagreements|comparisons)_total(\{[^}]*\})?", expr)
        assert (groupings and all("primary_version" in g for g in groupings)) or \
            all("primary_version=" in s for s in selectors), expr
    registry = GatewayMetrics()  # and every shadow metric carries it
    for name in ("shadow_agreements", "shadow_disagreements", "shadow_comparisons", "shadow_queue_depth",
                 "shadow_dropped"):
        assert "primary_version" in getattr(registry, name)._labelnames, name


def test_rules_reference_only_recorded_or_gateway_metrics():
    recorded = {r["record"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "record" in r}
    gateway = exported_by_registry()
    for expr in rule_expressions() + dashboard_expressions() + analysis_expressions():
        for name in metric_names(substituted(expr)):
            assert name in recorded | gateway or name.startswith("nv_inference_"), f"{name} in {expr}"


# --- a real Triton with the chart's arguments: probes, explicit model loading, metric names ---------

def status_of(url: str) -> int:
    try:
        return urllib.request.urlopen(url, timeout=5).status
    except urllib.error.HTTPError as error:
        return error.code


@pytest.fixture(scope="module")
def triton_run(tmp_path_factory):
    """The bundled tritonserver started with the arguments the chart gives Triton (values gpu-off,
    ports and paths aside) on a repository holding a student and a teacher: what its probes,
    its models' readiness and its metrics port answer."""
    from adaudit.export.repository import ServingSettings, export_model
    from adaudit.export.server import TritonError, TritonServer, pytriton_folder

    try:
        pytriton_folder()
    except TritonError as error:  # not installed: a skip here, a failure in CI (tests/conftest.py)
        pytest.skip(f"tritonserver cannot run here: {error}")
    folder = tmp_path_factory.mktemp("triton-chart")
    for seed, name in enumerate(("student", "teacher")):
        torch.manual_seed(seed)
        AuditModel(preset_config("tiny", len(build_vocabulary()))).save_pretrained(folder / name)
        export_model(folder / name, folder / "repo", name, 1,
                     ServingSettings(max_batch_size=8, preferred_batch_sizes=[8], threads=1))
    container = find(render(values_of("gpu-off")), "Deployment", "adaudit-triton")["spec"]["template"]["spec"]
    own = ("--model-repository=", "--http-port=", "--grpc-port=", "--metrics-port=")
    chart_arguments = [a for a in container["containers"][0]["args"] if not a.startswith(own)]

    class ChartTriton(TritonServer):
        def command(self) -> list[str]:
            return super().command() + chart_arguments

    server = ChartTriton(folder / "repo", free_port(), free_port(), free_port(), log_file=folder / "log")
    try:
        server.start()
    except (TritonError, OSError) as error:  # installed, so this is tritonserver refusing the chart's arguments
        log = (folder / "log").read_text(errors="replace")[-3000:] if (folder / "log").exists() else ""
        pytest.fail(f"tritonserver did not start with the chart's arguments {chart_arguments}: {error}\n{log}")
    http = f"http://127.0.0.1:{server.http_port}"
    try:
        health = {path: status_of(http + path) for path in TRITON_PROBES}
        models = {name: status_of(f"{http}/v2/models/{name}/ready") for name in ("student", "teacher")}
        text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    finally:
        server.stop()
    # the series names as Prometheus stores them (prometheus-client's parser would add _total to counters)
    names = set(re.findall(r"^([a-zA-Z_:][\w:]*)[{ ]", text, flags=re.MULTILINE))
    return {"arguments": chart_arguments, "health": health, "models": models, "metric names": names}


def test_triton_runs_with_the_chart_arguments(triton_run):
    assert "--model-control-mode=explicit" in triton_run["arguments"]
    assert triton_run["health"] == {path: 200 for path in TRITON_PROBES}  # the chart's Triton probes
    # explicit model control: only the model the gateway uses is loaded (no shadow traffic by default)
    assert triton_run["models"] == {"student": 200, "teacher": 400}


def test_dashboard_analysis_and_adapter_use_only_exported_metrics(triton_run):
    exported = exported_by_registry() | triton_run["metric names"]
    used = set()
    for expr in dashboard_expressions() + analysis_expressions() + adapter_expressions() + rule_expressions():
        used |= {name for name in metric_names(substituted(expr)) if ":" not in name}
    assert used - exported == set(), f"not exported by the gateway nor Triton: {used - exported}"
    assert {n for n in used if n.startswith("nv_")} >= {"nv_inference_queue_duration_us", "nv_inference_count",
                                                         "nv_inference_request_success", "nv_inference_exec_count"}


# --- end to end: Prometheus scrapes a running gateway ---------------------------------------------

COPIES = ["限时特价，全网最低价！", "纯天然蜂蜜，产地直供", "理财稳赚不赔，月收益20%", "祖传秘方，三天根治", "新款跑鞋 包邮"]


def ad(seed: int) -> dict:
    generator = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(generator.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    return {"image_base64": base64.b64encode(buffer.getvalue()).decode(), "text": COPIES[seed % len(COPIES)],
            "ad_id": f"ad-{seed}"}


def split_verdict(model: AuditModel, folder: Path) -> None:
    """Make the model's verdict depend on the copy: shift and scale the verdict head so that two of
    the five copies fall on one side and three on the other (a random tiny model answers the same
    verdict for every ad, and so would agree with any other on every ad)."""
    processor = AuditProcessor.from_folder(model.config, folder)
    images = [Image.open(io.BytesIO(base64.b64decode(ad(seed)["image_base64"]))).convert("RGB") for seed in range(5)]
    with torch.no_grad():
        logits = model.eval()(**processor(images, COPIES)).logits["verdict"]
        margins = sorted((logits[:, 0] - logits[:, 1]).tolist())
        head = model.heads["verdict"]
        head.weight.mul_(100.0)
        head.bias.mul_(100.0)
        head.bias[0] -= 100.0 * (margins[1] + margins[2]) / 2


def http_json(url: str, body: dict | None = None) -> dict | list:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def gateway_counter(base: str, name: str, **labels) -> float:
    text = urllib.request.urlopen(f"{base}/metrics", timeout=10).read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


@pytest.fixture
def running_gateway(tmp_path):
    import uvicorn

    models = tmp_path / "models"
    for seed, name in enumerate(("student", "teacher")):
        torch.manual_seed(seed)
        model = AuditModel(preset_config("tiny", len(build_vocabulary())))
        model.save_pretrained(models / name)
        if name == "teacher":  # so that the two models agree on some ads only
            split_verdict(model, models / name)
            model.save_pretrained(models / name)
    settings = GatewaySettings(backend="embedded", model_dir=models, database_url=f"sqlite:///{tmp_path / 'log.db'}",
                               shadow_model="teacher", shadow_fraction=1.0)
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=free_port(),
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.config.port}"
    wait_for(lambda: server.started or None, 60, "the gateway to start")
    yield base
    server.should_exit = True
    thread.join(30)


def send_and_settle(base: str, seeds: range) -> None:
    """Audit the ads, then wait until the shadow worker has compared every one."""
    for seed in seeds:
        answer = http_json(f"{base}/v1/audits", ad(seed))
        assert answer["shadowed"] is True
    wait_for(lambda: gateway_counter(base, "adaudit_shadow_comparisons_total") == seeds.stop or None, 60,
             f"{seeds.stop} shadow comparisons")


@needs_promtool
def test_prometheus_scrapes_the_gateway_and_computes_the_agreement_rate(running_gateway, tmp_path):
    base = running_gateway
    for path in ("/healthz", "/readyz"):  # the chart's gateway probes, on the running gateway
        assert urllib.request.urlopen(base + path, timeout=10).status == 200
    send_and_settle(base, range(10))  # creates every series before the first scrape
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        group["interval"] = "1s"  # the rules as written, evaluated every second
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    config = scrape_config({"adaudit-gateway": [base.removeprefix("http://")], "adaudit-triton": []},
                           tmp_path / "rules.yml")
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["scrape_configs"] = [job for job in config["scrape_configs"] if job["job_name"] == "adaudit-gateway"]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    prometheus = subprocess.Popen([shutil.which("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
                                   f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                                  stdout=subprocess.DEVNULL, stderr=(tmp_path / "prometheus.log").open("w"))

    def query(expr: str) -> dict[str, float]:
        url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            result = http_json(url)["data"]["result"]
        except OSError:
            return {}
        return {json.dumps(r["metric"], sort_keys=True): float(r["value"][1]) for r in result}

    try:
        wait_for(lambda: query('up{job="adaudit-gateway"}') or None, 60, "the first scrape")
        before = {name: gateway_counter(base, name, **labels) for name, labels in
                  (("adaudit_shadow_agreements_total", {"task": "verdict"}), ("adaudit_shadow_comparisons_total", {}))}
        send_and_settle(base, range(10, 50))
        disagreements = http_json(f"{base}/v1/shadow/disagreements?limit=1000")
        verdict_disagreements = sum(d["primary"]["labels"]["verdict"] != d["shadow"]["labels"]["verdict"]
                                    for d in disagreements)
        produced = 1 - verdict_disagreements / 50  # what the traffic produced, from the decision log
        print(f"\nagreement on the verdict: {produced:.3f} ({verdict_disagreements} of 50 ads disagree)")
        exact = ('sum(adaudit_shadow_agreements_total{task="verdict"}) / sum(adaudit_shadow_comparisons_total)'
                 ' and on() sum(adaudit_shadow_comparisons_total) == 50')
        seen = wait_for(lambda: list(query(exact).values()) or None, 60, "the scraped agreement rate")
        assert seen == [pytest.approx(produced)]
        time.sleep(2.5)  # two more rule evaluations, after the scrape that saw the last comparison
        after = {name: gateway_counter(base, name, **labels) for name, labels in
                 (("adaudit_shadow_agreements_total", {"task": "verdict"}), ("adaudit_shadow_comparisons_total", {}))}
        recorded = wait_for(lambda: [v for v in query('adaudit:shadow_agreement_ratio:rate5m{task="verdict"}').values()
                                     if math.isfinite(v)] or None, 60, "the recording rule")
        since_first_scrape = ((after["adaudit_shadow_agreements_total"] - before["adaudit_shadow_agreements_total"])
                              / (after["adaudit_shadow_comparisons_total"] - before["adaudit_shadow_comparisons_total"]))
        print(f"recording rule: {recorded[0]:.3f}, since the first scrape: {since_first_scrape:.3f}")
        # rate() extrapolates each series to the window's edges: equal up to that
        assert recorded == [pytest.approx(since_first_scrape, abs=0.05)]
    finally:
        prometheus.terminate()
        prometheus.wait(30)
