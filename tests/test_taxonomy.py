"""A data set's own taxonomy (DIR/labels.yaml): checked, carried by the model, served, decided and reviewed.

The unit tests check labels.yaml's readable refusals, the data reader against a data set's taxonomy, old
configs loading with today's taxonomy, policies checked against a model's labels, and the decision rule
under other names. The end-to-end test relabels generated ads with other task and class names
(decision: ok / refuse, risk: clean / fraud / adult / mismatch, category: shop_...), trains a tiny
teacher on them, compresses it, exports it to a Triton model repository, serves it through the real
bundled tritonserver behind the gateway, audits an ad and gives feedback: every answer, label and metric
carries the custom names, and a wrong class or a policy of today's classes is refused naming it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from adaudit.cli import app
from adaudit.data.dataset import DatasetError, read_split
from adaudit.data.generator import make_dataset
from adaudit.decisions.decide import decide
from adaudit.decisions.policy import PolicyError, load_policy, parse_policy
from adaudit.models.configuration import AuditModelConfig
from adaudit.models.labels import (DEFAULT_TAXONOMY, LABELS_FILE, TaxonomyError, load_taxonomy, parse_taxonomy,
                                   read_taxonomy)
from adaudit.training.presets import preset_config

CUSTOM = {
    "tasks": {"decision": ["ok", "refuse"], "risk": ["clean", "fraud", "adult", "mismatch"],
              "category": [f"shop_{name}" for name in DEFAULT_TAXONOMY.tasks["industry"]]},
    "verdict_task": "decision", "reject_classes": ["refuse"], "reason_task": "risk", "clean_class": "clean",
    "mismatch_class": "mismatch",
}
RISK = {"none": "clean", "exaggeration": "fraud", "financial_promise": "fraud", "gambling": "fraud",
        "prohibited_goods": "fraud", "medical_claim": "adult", "vulgar": "adult", "image_text_mismatch": "mismatch"}
POLICY = {"name": "custom", "version": "1", "violations": {"fraud": {"block_at": 0.9, "review_at": 0.2},
                                                          "adult": {"block_at": 0.9, "review_at": 0.2}},
          "attributes": {"category": {"shop_toys": {"review_at": 0.99}}}}


def custom(**changes) -> dict:
    return {**json.loads(json.dumps(CUSTOM)), **changes}


def relabelled(folder: Path) -> Path:
    """A generated data set's labels rewritten to CUSTOM's tasks and classes, with its labels.yaml."""
    for path in sorted(folder.glob("*.jsonl")):
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        for row in rows:
            old = row["labels"]
            row["labels"] = {"decision": "refuse" if old["verdict"] == "reject" else "ok",
                             "risk": RISK[old["violation"]], "category": f"shop_{old['industry']}"}
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    (folder / LABELS_FILE).write_text(yaml.safe_dump(CUSTOM, sort_keys=False), encoding="utf-8")
    return folder


# --- labels.yaml ---------------------------------------------------------------------------
@pytest.mark.parametrize("data, expected", [
    (custom(tasks={**CUSTOM["tasks"], "risk": ["clean", "fraud", "fraud"]}), "tasks.risk: class 'fraud' is listed twice"),
    (custom(tasks={**CUSTOM["tasks"], "category": []}), "tasks.category: a task needs a list of at least two classes"),
    (custom(reject_classes=[]), "reject_classes: the verdict task 'decision' needs a rejecting class"),
    (custom(reject_classes=["ok", "refuse"]), "reject_classes: every class of decision rejects"),
    (custom(reject_classes=["reject"]), "reject_classes: 'reject' is not a class of decision (ok, refuse)"),
    (custom(clean_class="none"), "clean_class: 'none' is not a class of risk"),
    (custom(reason_task="decision"), "reason_task: 'decision' is also the verdict_task"),
    (custom(verdict_task="verdict"), "verdict_task: 'verdict' is not a task"),
    (custom(tasks={**CUSTOM["tasks"], "Risk Level": ["a", "b"]}), "task name 'Risk Level' must match"),
    (custom(colour="red"), "colour: Extra inputs are not permitted"),
])
def test_a_bad_labels_yaml_is_refused_naming_the_key(tmp_path, data, expected):
    path = tmp_path / LABELS_FILE
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(TaxonomyError) as error:
        read_taxonomy(path)
    assert str(error.value).startswith(f"{path}: ") and expected in str(error.value)
    assert "\n" not in str(error.value)


def test_a_key_given_twice_and_the_default(tmp_path):
    (tmp_path / LABELS_FILE).write_text("tasks:\n  a: [x, y]\n  a: [x, z]\n", encoding="utf-8")
    with pytest.raises(TaxonomyError, match=r"line 3: key 'a' is given twice"):
        load_taxonomy(tmp_path)
    assert load_taxonomy(tmp_path / "elsewhere") == DEFAULT_TAXONOMY  # no labels.yaml: today's taxonomy
    assert DEFAULT_TAXONOMY.approve_class == "approve" and DEFAULT_TAXONOMY.reject_class == "reject"
    assert DEFAULT_TAXONOMY.mismatch_class == "image_text_mismatch"


def test_the_cli_refuses_a_bad_labels_yaml_in_one_line_and_writes_nothing(tmp_path):
    data = tmp_path / "data"
    make_dataset(data, n=24, seed=3)
    (data / LABELS_FILE).write_text(yaml.safe_dump(custom(reject_classes=[])), encoding="utf-8")
    result = CliRunner().invoke(app, ["teacher", "train", "--data", str(data), "--out", str(tmp_path / "t"),
                                      "--preset", "tiny", "--epochs", "1", "--device", "cpu"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert lines[-1] == (f"error: {data / LABELS_FILE}: reject_classes: the verdict task 'decision' needs a "
                         "rejecting class")
    assert not (tmp_path / "t").exists() and not (tmp_path / "t.checkpoint").exists()


def test_the_data_set_is_read_against_its_own_taxonomy(tmp_path):
    make_dataset(tmp_path / "data", n=24, seed=5)
    data = relabelled(tmp_path / "data")
    records = read_split(data, "train")
    assert set(records[0].labels) == {"decision", "risk", "category"}
    path = data / "train.jsonl"
    rows = path.read_text(encoding="utf-8").splitlines()
    row = json.loads(rows[1])
    row["labels"]["risk"] = "gambling"  # today's class, not this data set's
    path.write_text("\n".join([rows[0], json.dumps(row, ensure_ascii=False), *rows[2:]]) + "\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"train.jsonl line 2: unknown label 'gambling' for task 'risk'; "
                                           r"expected one of clean, fraud, adult, mismatch"):
        read_split(data, "train")
    row["labels"] = {"decision": "ok", "risk": "fraud", "category": "shop_pets"}
    path.write_text("\n".join([rows[0], json.dumps(row, ensure_ascii=False), *rows[2:]]) + "\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"line 2: decision 'ok' contradicts risk 'fraud'"):
        read_split(data, "train")


def test_a_config_written_before_taxonomies_loads_with_todays(tmp_path):
    config = preset_config("tiny", 100)
    data = config.to_dict()
    for key in ("verdict_task", "reject_classes", "reason_task", "clean_class", "mismatch_class"):
        data.pop(key)
    assert AuditModelConfig.from_dict(data).taxonomy == DEFAULT_TAXONOMY
    retargeted = config.with_taxonomy(parse_taxonomy(CUSTOM, "labels.yaml"))
    assert AuditModelConfig.from_dict(json.loads(json.dumps(retargeted.to_dict()))).taxonomy.verdict_task == "decision"


def test_start_and_reload_treat_a_policy_for_other_labels_alike(tmp_path, caplog):
    """A folder with a policy for today's classes beside the custom default: reload keeps serving (the other policy
    logged, refused per request as at start); a default that does not fit the primary model is refused whole."""
    import asyncio

    from adaudit.service.audit_policies import AuditPolicies

    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "custom.yaml").write_text(yaml.safe_dump(POLICY, allow_unicode=True), encoding="utf-8")
    shipped = Path(__file__).parents[1] / "decisions" / "policies"
    for terms in shipped.glob("*.txt"):  # the shipped policy's term lists, beside it
        (folder / terms.name).write_text(terms.read_text(encoding="utf-8"), encoding="utf-8")
    (folder / "today.yaml").write_text((shipped / "default.yaml").read_text(encoding="utf-8")
                                       .replace("name: default", "name: today"), encoding="utf-8")
    policies = AuditPolicies(folder, "custom")
    policies.taxonomy = parse_taxonomy(CUSTOM, "labels.yaml")
    assert set(asyncio.run(policies.reload())) == {"custom", "today"}
    assert "today.yaml: violations: unknown violation class" in caplog.text
    refused = AuditPolicies(folder, "today")  # at start the set loads on its shape alone
    refused.taxonomy = policies.taxonomy
    running = refused.loaded
    with pytest.raises(PolicyError, match=r"today.yaml: violations: unknown violation class"):
        asyncio.run(refused.reload())  # the default must fit the primary model: nothing is swapped in
    assert refused.loaded is running


# --- decisions under another taxonomy --------------------------------------------------------
def test_a_policy_is_checked_against_the_models_taxonomy(tmp_path):
    taxonomy = parse_taxonomy(CUSTOM, "labels.yaml")
    policy = parse_policy(POLICY, "custom.yaml", taxonomy)
    with pytest.raises(PolicyError, match=r"custom.yaml: violations: unknown violation class 'adult'"):
        parse_policy(POLICY, "custom.yaml")  # today's taxonomy has no adult (the first unknown, sorted)
    shipped = load_policy(Path(__file__).parents[1] / "decisions" / "policies" / "default.yaml", None)
    with pytest.raises(PolicyError, match=r"default.yaml: violations: unknown violation class 'exaggeration'; "
                                          r"expected one of fraud, adult, mismatch"):
        shipped.check(taxonomy)
    scores = {"decision": {"ok": 0.2, "refuse": 0.8}, "risk": {"clean": 0.1, "fraud": 0.85, "adult": 0.03,
                                                               "mismatch": 0.02}, "category": {"shop_pets": 1.0}}
    decision = decide(scores, [], policy, taxonomy)
    assert (decision.suggestion, decision.verdict, decision.violation) == ("review", "refuse", "fraud")
    calm = {**scores, "risk": {"clean": 0.97, "fraud": 0.01, "adult": 0.01, "mismatch": 0.01}}
    assert (decide(calm, [], policy, taxonomy).verdict, decide(calm, [], policy, taxonomy).violation) == ("ok", "clean")


# --- end to end --------------------------------------------------------------------------------
QUICK_RECIPE = """# a minimal recipe: one block cut, one final epoch (the pipeline, not the quality, is under test)
distillation: {samples: 48, batch_size: 16, learning_rate: 0.002, views: 0}
vocabulary: {characters: common}
calibration_samples: 16
stages:
  - {kind: blocks, keep: {vision: 2, qformer: 1, text: 2}, per_step: 1, epochs_per_step: 1}
final_epochs: 1
latency_rounds: 1
"""


@pytest.fixture(scope="module")
def custom_student(tmp_path_factory) -> tuple[Path, Path]:
    """(the data set, the student): a tiny teacher trained on relabelled ads, compressed."""
    from adaudit.compression.pipeline import compress
    from adaudit.training.teacher import train_teacher

    root = tmp_path_factory.mktemp("taxonomy")
    make_dataset(root / "data", n=96, seed=11)
    data = relabelled(root / "data")
    train_teacher(data, root / "teacher", "tiny", epochs=1, device="cpu", log=lambda message: None)
    recipe = root / "quick.yaml"
    recipe.write_text(QUICK_RECIPE, encoding="utf-8")
    compress(root / "teacher", data, root / "student", recipe, log=lambda message: None, device="cpu")
    return data, root / "student"


def test_a_custom_taxonomy_trains_compresses_exports_serves_and_takes_feedback(custom_student, tmp_path):
    from adaudit.export.repository import ServingSettings, export_model
    from adaudit.export.server import TritonError, TritonServer, pytriton_folder
    from adaudit.service.app import create_app
    from adaudit.service.settings import GatewaySettings
    from benchmarks.serving import free_ports
    from loopback import random_png_base64

    data, student = custom_student
    config = AuditModelConfig.load(student)
    assert (config.verdict_task, list(config.tasks)) == ("decision", ["decision", "risk", "category"])
    repository = tmp_path / "repo"
    version = export_model(student, repository, "student", 1, ServingSettings(max_batch_size=4, preferred_batch_sizes=[4]))
    assert '"verdict_task\\":\\"decision\\"' in (repository / "student" / "config.pbtxt").read_text()
    assert (version / "model.onnx").is_file()
    try:
        pytriton_folder()
    except TritonError as error:
        pytest.skip(f"tritonserver cannot run here: {error}")
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "custom.yaml").write_text(yaml.safe_dump(POLICY), encoding="utf-8")
    (policies / "today.yaml").write_text(yaml.safe_dump({"name": "today", "version": "1", "violations": {
        "gambling": {"block_at": 0.9, "review_at": 0.5}}}), encoding="utf-8")
    server = TritonServer(repository, *free_ports(3), log_file=tmp_path / "tritonserver.log", ready_timeout=120)
    server.start()
    try:
        settings = GatewaySettings(backend="triton", triton_url=server.url_for("http"), model_repository=repository,
                                   database_url=f"sqlite:///{tmp_path / 'log.db'}", policy_dir=policies,
                                   default_policy="custom", request_timeout_s=10)
        with TestClient(create_app(settings)) as client:
            check_served(client, random_png_base64(1, 48, 48))
    finally:
        server.stop()


def check_served(client: TestClient, picture: str) -> None:
    """An audit answered in the custom names, feedback in them accepted and a wrong class refused, today's
    policy refused against the model, and the metrics labelled with the model's own classes."""
    answer = client.post("/v1/audits", json={"image_base64": picture, "text": "理财稳赚不赔，月收益20%"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["verdict"] in ("ok", "refuse") and body["violation"] in CUSTOM["tasks"]["risk"]
    assert (body["verdict"] == "refuse") == (body["violation"] != "clean")
    assert set(body["attributes"]) == {"category"} and body["attributes"]["category"].startswith("shop_")
    assert set(body["scores"]) == {"decision", "risk", "category"}
    assert body["policy"]["name"] == "custom"
    request_id = body["request_id"]
    wrong = client.post(f"/v1/audits/{request_id}/feedback", json={"labels": {"risk": "gambling"}})
    assert wrong.status_code == 422 and wrong.json()["kind"] == "unknown_label"
    assert "'gambling'" in wrong.json()["error"] and "clean, fraud, adult, mismatch" in wrong.json()["error"]
    unknown_task = client.post(f"/v1/audits/{request_id}/feedback", json={"labels": {"verdict": "reject"}})
    assert unknown_task.status_code == 422 and "unknown task 'verdict'" in unknown_task.json()["error"]
    given = client.post(f"/v1/audits/{request_id}/feedback",
                        json={"labels": {"decision": "refuse", "risk": "fraud", "category": "shop_finance"}})
    assert given.status_code == 200, given.text
    assert set(given.json()["correct"]) == {"decision", "risk", "category"}
    logged = client.get(f"/v1/audits/{request_id}").json()
    assert logged["verdict"] == body["verdict"] and logged["verdict_score"] == body["verdict_score"]
    assert logged["attributes"] == body["attributes"] and logged["feedback"]["risk"] == "fraud"
    refused = client.post("/v1/audits", json={"image_base64": picture, "text": "新款跑鞋 包邮", "policy": "today"})
    assert refused.status_code == 422 and refused.json()["kind"] == "policy_mismatch"
    assert "unknown violation class 'gambling'" in refused.json()["error"]
    metrics = client.get("/metrics").text
    labels = set(re.findall(r'adaudit_predictions_total\{[^}]*task="(\w+)"', metrics))
    assert labels == {"decision", "risk", "category"}
    assert f'label="{body["verdict"]}"' in metrics and 'adaudit_reviewed_total{' in metrics


def test_dashboards_alerts_and_canary_name_no_class():
    """The shipped Grafana dashboard, alert rules and canary analysis select no class by name (a `label`,
    `primary_label` or `shadow_label` matcher) and no task but the answer's verdict and violation fields,
    so they hold for a model of any taxonomy."""
    root = Path(__file__).parents[1]
    files = [*sorted((root / "deploy").rglob("*.y*ml")), *sorted((root / "deploy").rglob("*.json")),
             *sorted((root / "helm" / "adaudit" / "files").iterdir())]
    assert len(files) >= 6
    for path in files:
        text = path.read_text(encoding="utf-8").replace('\\"', '"')
        assert not re.findall(r'\b(?:label|primary_label|shadow_label)\s*=~?\s*"', text), path
        assert set(re.findall(r'\btask\s*=~?\s*"([^"]*)"', text)) <= {"verdict", "violation"}, path
