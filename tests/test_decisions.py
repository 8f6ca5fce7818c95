"""Audit decisions (issue 28): policies, term lists with offsets, the decision rule, threshold fitting,
and the gateway's answers through the FastAPI app with the embedded backend (tiny biased models of
test_service.py: the student leans to violation none, the teacher to gambling)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from adaudit.decisions.decide import decide
from adaudit.decisions.fit import (apply_class_thresholds, apply_thresholds, fit_class_thresholds,
                                   fit_thresholds)
from adaudit.decisions.policy import SHIPPED, VIOLATIONS, PolicyError, load_policies, load_policy, parse_policy
from adaudit.decisions.terms import MAX_LIST_BYTES, TermMatcher, normalise
from adaudit.models.labels import TASKS
from adaudit.service.app import create_app
from test_service import audit_json, b64, model_dir, png, settings  # noqa: F401 - model_dir is a fixture

POLICY = {"name": "unit", "version": 3, "violations": {v: {"block_at": 0.9, "review_at": 0.5} for v in VIOLATIONS}}


def write_policy(folder, body: dict, name: str = "unit.yaml", **files) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(yaml.safe_dump(body, allow_unicode=True), encoding="utf-8")
    for file, content in files.items():
        (folder / file.replace("_txt", ".txt")).write_text(content, encoding="utf-8")


# --- policies ---------------------------------------------------------------------------------------
def test_the_shipped_policies_load_side_by_side():
    policies = load_policies()
    assert set(policies) == {"default", "strict"}
    assert policies["default"].policy.version == "1" and policies["default"].matcher.sizes["block"] >= 20
    strict, default = policies["strict"].policy, policies["default"].policy
    assert all(strict.violations[v].block_at <= default.violations[v].block_at for v in VIOLATIONS)


@pytest.mark.parametrize("change, fragment", [
    ({"violations": {"gambling": {"block_at": 1.5, "review_at": 0.5}}}, "violations.gambling.block_at: Input should be"),
    ({"violations": {"gambling": {"block_at": 0.5, "review_at": 0.7}}}, "violations.gambling: review_at (0.7) is above block_at (0.5)"),
    ({"violations": {"gambling": {"block_at": 0.9, "review_at": -0.1}}}, "violations.gambling.review_at"),
    ({"violations": {"cheating": {"block_at": 0.9, "review_at": 0.5}}}, "violations: unknown violation class 'cheating'"),
    ({"attributes": {"clutter": {"huge": {"review_at": 0.5}}}}, "attributes: clutter: unknown label 'huge'"),
    ({"terms": {"block": []}}, "terms.block: the list is empty"),
    ({"terms": {"block": ["ok", "bad\x07term"]}}, "terms.block: line 2: the term holds the control character U+0007"),
    ({"terms": {"review": "missing.txt"}}, "terms.review: no term file 'missing.txt'"),
    ({"terms": {"review": "../outside.txt"}}, "terms.review: no term file '../outside.txt'"),
    ({"colour": "red"}, "colour: Extra inputs are not permitted"),
])
def test_a_bad_policy_is_refused_naming_the_key(tmp_path, change, fragment):
    (tmp_path / "outside.txt").write_text("最\n")
    write_policy(tmp_path / "policies", {**POLICY, **change})
    with pytest.raises(PolicyError) as error:
        load_policies(tmp_path / "policies")
    assert str(error.value).startswith("unit.yaml: ") and fragment in str(error.value), str(error.value)


def test_term_files_empty_too_large_or_with_control_characters_are_refused(tmp_path):
    policy = {**POLICY, "terms": {"block": "block.txt"}}
    for content, fragment in [("# only a comment\n\n", "the list is empty"),
                              ("最\n" + "x" * MAX_LIST_BYTES, f"must stay under {MAX_LIST_BYTES}"),
                              ("最佳\n第\x00一\n", "line 2: the term holds the control character U+0000")]:
        write_policy(tmp_path, policy, block_txt=content)
        with pytest.raises(PolicyError, match="terms.block") as error:
            load_policy(tmp_path / "unit.yaml")
        assert fragment in str(error.value), str(error.value)


def test_two_files_with_one_name_and_a_missing_folder_are_refused(tmp_path):
    write_policy(tmp_path, POLICY, "a.yaml")
    write_policy(tmp_path, POLICY, "b.yaml")
    with pytest.raises(PolicyError, match="b.yaml: name: policy 'unit' is also defined in a.yaml"):
        load_policies(tmp_path)
    with pytest.raises(PolicyError, match="not found"):
        load_policies(tmp_path / "nowhere")


# --- term lists ---------------------------------------------------------------------------------------
MATCHER = TermMatcher({"block": ["国家级", "最佳", "第一", "100%", "NO.1"], "review": ["最"], "allow": ["第一次"]})


def found(copy: str) -> list[tuple[str, str, str]]:
    """(term, list, the copy's characters at the hit's offsets) per hit."""
    return [(hit.term, hit.list, copy[hit.start:hit.end]) for hit in MATCHER.find(copy)]


@pytest.mark.parametrize("copy, expected", [
    ("国家级品质，最佳选择", [("国家级", "block", "国家级"), ("最", "review", "最"), ("最佳", "block", "最佳")]),
    ("國家級品質", [("国家级", "block", "國家級")]),  # traditional
    ("ＮＯ．１好货 １００％有效", [("NO.1", "block", "ＮＯ．１"), ("100%", "block", "１００％")]),  # full-width
    ("No.1的國家級，全網第一", [("NO.1", "block", "No.1"), ("国家级", "block", "國家級"), ("第一", "block", "第一")]),
    ("第一次购买立减", [("第一次", "allow", "第一次")]),  # the allow exception drops 第一 inside it
    ("㈱公司 最佳", [("最", "review", "最"), ("最佳", "block", "最佳")]),  # NFKC makes ㈱ three characters
    ("e\u0301 ﹝最佳﹞", [("最", "review", "最"), ("最佳", "block", "最佳")]),  # a combining mark before the hit
    ("平价好物", []),
])
def test_term_hits_point_at_the_copy_as_written(copy, expected):
    assert found(copy) == expected


def test_normalised_spans_cover_the_original_copy():
    copy = "㈱ＡＢ國"
    normalised = normalise(copy)
    assert normalised.text == "(株)ab国"
    assert normalised.spans == ((0, 1), (0, 1), (0, 1), (1, 2), (2, 3), (3, 4))


def test_terms_written_in_traditional_or_full_width_match_simplified_copy():
    matcher = TermMatcher({"block": ["國家級", "ＴＯＰ１"]})
    assert [(h.term, h.start, h.end) for h in matcher.find("国家级top1")] == [("國家級", 0, 3), ("ＴＯＰ１", 3, 7)]


# --- the decision rule ----------------------------------------------------------------------------------
def probabilities(rng: np.random.Generator, sharpness: float) -> dict[str, dict[str, float]]:
    answer = {}
    for task, names in TASKS.items():
        weights = rng.dirichlet(np.full(len(names), sharpness))
        answer[task] = {name: float(w) for name, w in zip(names, weights)}
    return answer


def test_verdict_and_violation_never_contradict_over_many_random_score_vectors():
    rng = np.random.default_rng(0)
    policies = [p.policy for p in load_policies().values()]
    hits = {name: MATCHER.find(copy) for name, copy in [("none", "平价"), ("review", "最近最火"), ("block", "最佳")]}
    seen = set()
    for trial in range(3000):
        scores = probabilities(rng, sharpness=[0.1, 0.5, 2.0][trial % 3])
        policy = policies[trial % len(policies)]
        terms = list(hits)[trial % 3]
        decision = decide(scores, hits[terms], policy)
        seen.add((decision.suggestion, decision.verdict))
        assert (decision.verdict == "reject") == (decision.violation != "none")
        assert decision.violation in TASKS["violation"]
        assert (decision.suggestion == "pass") == (not decision.reasons)
        if decision.suggestion == "block":
            assert decision.verdict == "reject"
        if decision.suggestion == "pass":
            assert decision.verdict == "approve"
        if terms == "block":
            assert decision.suggestion == "block"
        for reason in decision.reasons:
            assert reason.score is None or reason.score >= reason.threshold
        top = max(decision.reasons, key=lambda r: ("review", "block").index(r.suggestion), default=None)
        assert top is None or top.suggestion == decision.suggestion
    assert seen == {("pass", "approve"), ("review", "approve"), ("review", "reject"), ("block", "reject")}


def test_the_rule_on_hand_made_scores():
    policy = parse_policy(POLICY, "unit")
    clean = {"violation": {"none": 0.97, "gambling": 0.03}}
    assert decide(clean, [], policy).as_dict() | {"term_hits": []} == {
        "suggestion": "pass", "verdict": "approve", "violation": "none", "reasons": [],
        "policy": {"name": "unit", "version": "3"}, "term_hits": []}
    gambling = decide({"violation": {"none": 0.04, "gambling": 0.95, "vulgar": 0.01}}, [], policy)
    assert (gambling.suggestion, gambling.verdict, gambling.violation) == ("block", "reject", "gambling")
    assert [r.as_dict() for r in gambling.reasons] == [{"rule": "violation.gambling.block_at", "suggestion": "block",
                                                        "violation": "gambling", "score": 0.95, "threshold": 0.9}]
    term_only = decide(clean, MATCHER.find("最佳"), policy)  # a block term alone: the term class
    assert (term_only.suggestion, term_only.verdict, term_only.violation) == ("block", "reject", "exaggeration")
    assert "terms.block: 最佳" in [r.rule for r in term_only.reasons]
    leaning = decide({"violation": {"none": 0.3, "vulgar": 0.45, "gambling": 0.25}}, MATCHER.find("最"), policy)
    assert (leaning.suggestion, leaning.verdict, leaning.violation) == ("review", "reject", "vulgar")
    unsure = decide({"violation": {"none": 0.45, "vulgar": 0.3, "gambling": 0.25}}, MATCHER.find("最"), policy)
    assert (unsure.suggestion, unsure.verdict, unsure.violation) == ("review", "approve", "none")


# --- fitting thresholds ----------------------------------------------------------------------------------
def test_fit_on_synthetic_scores_with_a_known_answer():
    # 50 clean ads at 0.00..0.49 and 50 violating ads at 0.50..0.99, plus one clean ad at 0.95: at 99%
    # precision blocks start above it (0.96: 4 ads, all violating) and passes end at 0.50 (all 50 clean)
    scores = np.r_[np.arange(50) / 100, np.arange(50, 100) / 100, 0.95]
    violating = np.r_[np.zeros(50, bool), np.ones(50, bool), False]
    fit = fit_thresholds(scores, violating, 0.99)
    assert (fit.block_at, fit.review_at, fit.block_precision, fit.pass_precision) == (0.96, 0.5, 1.0, 1.0)
    assert fit.automation_rate == pytest.approx(54 / 101)
    loose = fit_thresholds(scores, violating, 0.98)  # 50 of 51 blocked ads violate: 0.98 allows the clean one
    assert (loose.block_at, loose.review_at, loose.automation_rate) == (0.5, 0.5, 1.0)
    on_test = apply_thresholds([0.1, 0.7, 0.97, 0.99], [False, True, True, False], fit.block_at, fit.review_at)
    assert (on_test["automation_rate"], on_test["block_precision"], on_test["pass_precision"]) == (0.75, 0.5, 1.0)


def test_per_class_thresholds_decide_ads_that_one_common_pair_cannot():
    # class 0: clean ads score 0.5, its violations 0.9; class 1: clean ads 0.1, its violations 0.4. The riskiest
    # class ranks class-1 violations (0.4) below clean ads (0.5): no common pass threshold passes a clean ad at
    # 99%, and common blocks stop at 0.9. One pair per class separates both exactly (both of a class's
    # thresholds must move together: class 1's pass threshold up, its block threshold down).
    scores = np.vstack([np.tile([0.5, 0.1], (100, 1)), np.tile([0.9, 0.0], (50, 1)), np.tile([0.0, 0.4], (50, 1))])
    violating = np.r_[np.zeros(100, bool), np.ones(100, bool)]
    assert fit_thresholds(scores.max(axis=1), violating, 0.99).automation_rate == 0.25
    fit = fit_class_thresholds(scores, violating, 0.99, ["gambling", "image_text_mismatch"])
    assert (fit.automation_rate, fit.block_precision, fit.pass_precision) == (1.0, 1.0, 1.0)
    assert all(0 <= review <= block <= 1 for block, review in zip(fit.block_at, fit.review_at))
    assert set(fit.as_dict()["block_at"]) == {"gambling", "image_text_mismatch"}
    assert 0.1 < fit.review_at[1] <= fit.block_at[1] <= 0.4 and 0.5 < fit.review_at[0] <= fit.block_at[0] <= 0.9
    # on new ads: a violation scoring below both review_at values passes, and is counted against the passes
    on_test = apply_class_thresholds([[0.5, 0.1], [0.0, 0.4], [0.0, 0.05]], [False, True, True], fit.block_at,
                                     fit.review_at)
    assert (on_test["automation_rate"], on_test["block_precision"], on_test["pass_precision"]) == (1.0, 1.0, 0.5)


def test_per_class_blocks_and_passes_get_their_own_factors():
    # (class 0, class 1, violating) groups: class 0's clean ads score up to 0.5 and its blocked violations 0.55,
    # class 1's 0.2 and 0.25, so block_at must be about 0.5..0.55 and 0.2..0.25 (a ratio of 2 to 2.75); at the low
    # end both classes' violations start at 0.15 above clean ads at 0.1, so review_at must be 0.1..0.15 for both
    # (a ratio of 2/3 to 1.5). Thresholds that move together (one factor per class for both sides) keep one
    # ratio and cannot reach both; factors per side decide every ad but the 40 in between, at 100% precision.
    groups = [((0.10, 0.10), False, 40), ((0.15, 0.01), True, 10), ((0.01, 0.15), True, 10),
              ((0.50, 0.01), False, 10), ((0.55, 0.01), True, 20), ((0.01, 0.20), False, 10),
              ((0.01, 0.25), True, 20)]
    scores = np.vstack([np.tile(row, (count, 1)) for row, _, count in groups])
    violating = np.concatenate([np.full(count, truth) for _, truth, count in groups])
    fit = fit_class_thresholds(scores, violating, 1.0)
    assert (fit.blocked, fit.passed, fit.block_precision, fit.pass_precision) == (40 / 120, 40 / 120, 1.0, 1.0)
    assert 0.5 < fit.block_at[0] <= 0.55 and 0.2 < fit.block_at[1] <= 0.25
    assert all(0.1 < review <= 0.15 for review in fit.review_at)


def test_per_class_thresholds_decide_on_the_fitted_ads_exactly_what_the_fit_chose():
    # the thresholds are real scores, not the fitted cut multiplied back by a class factor: (s / f) * f can miss
    # s by a float step, which moved a boundary ad and broke the target on the very ads fitted
    generator = np.random.default_rng(0)
    for _ in range(400):  # the first version of the fit missed the target on 3 of these
        scores = generator.random((40, 3)).round(3)
        violating = generator.random(40) < scores.max(axis=1)
        fit = fit_class_thresholds(scores, violating, 0.9)
        assert fit.block_precision is None or fit.block_precision >= 0.9
        assert fit.pass_precision is None or fit.pass_precision >= 0.9


def test_the_fit_reads_probabilities_as_the_gateway_serves_them(model_dir):  # noqa: F811
    # one function (decisions/scores.py) for both: a threshold fitted on these values decides served ads alike
    import torch

    from adaudit.data.encoding import EncodedSplit
    from adaudit.models.configuration import AuditModelConfig
    from adaudit.service.encoding import predictions
    from adaudit.training.policy_fit import class_probabilities, violation_classes

    config = AuditModelConfig.load(model_dir / "student")
    reason, count = config.taxonomy.reason_task, 50
    names = tuple(config.tasks[reason])
    logits = torch.randn(count, len(names), generator=torch.Generator().manual_seed(0)) * 8
    encoded = EncodedSplit([str(i) for i in range(count)], None, None, None,
                           torch.zeros(count, len(config.tasks), dtype=torch.long), list(config.tasks))
    fitted, _ = class_probabilities(config, {reason: logits}, encoded)
    served = predictions({reason: logits.numpy()}, {reason: names})
    assert fitted.tolist() == [[answer.probabilities[reason][name] for name in violation_classes(config)]
                               for answer in served]
    assert {round(value, 6) for value in fitted.ravel()} == set(fitted.ravel())  # 6 places, as answers carry


def test_fit_when_no_side_can_reach_the_target():
    scores, violating = np.full(10, 0.5), np.r_[np.ones(5, bool), np.zeros(5, bool)]
    fit = fit_thresholds(scores, violating, 0.9)  # tied scores, half violating: nothing decided automatically
    assert (fit.blocked, fit.passed, fit.automation_rate, fit.review_at) == (0.0, 0.0, 0.0, 0.0)
    # a policy cannot say "never block": block_at 1 still blocks probabilities of exactly 1, and the fit says so
    saturated = fit_thresholds([1.0, 1.0, 0.2, 0.9], [True, False, False, True], 0.99)
    assert (saturated.block_at, saturated.blocked, saturated.block_precision) == (1.0, 0.5, 0.5)
    with pytest.raises(ValueError, match="target precision"):
        fit_thresholds(scores, violating, 1.5)


# --- the gateway ----------------------------------------------------------------------------------------
def consistent(answer: dict) -> bool:
    return ((answer["verdict"] == "reject") == (answer["violation"] != "none")
            and (answer["suggestion"] != "block" or answer["verdict"] == "reject")
            and (answer["suggestion"] != "pass" or answer["verdict"] == "approve"))


@pytest.fixture
def policy_folder(tmp_path):
    folder = tmp_path / "policies"
    shutil.copytree(SHIPPED, folder, ignore=shutil.ignore_patterns("__pycache__"))
    return folder


def test_every_answer_carries_a_consistent_decision_with_term_offsets(model_dir, tmp_path):  # noqa: F811
    copies = ["平价好物，欢迎选购", "全網第一，ＮＯ．１国货", "最近上新，最火单品，第一次购买立减"]
    for model in ("student", "teacher"):  # the teacher leans to gambling: blocked by the model
        (tmp_path / model).mkdir()
        with TestClient(create_app(settings(model_dir, tmp_path / model, primary_model=model))) as client:
            answers = [audit_json(client, copy=copy).json() for copy in copies]
            batch = client.post("/v1/audits:batch", json={"items": [
                {"image_base64": b64(png()), "text": copy, "policy": "strict"} for copy in copies]}).json()["items"]
            for answer in answers + batch:
                assert consistent(answer), answer
            assert {a["policy"]["name"] for a in answers} == {"default"} and {a["policy"]["name"] for a in batch} == {"strict"}
            rows = create_engine(settings(model_dir, tmp_path / model).database_url).connect().execute(
                text("SELECT request_id, suggestion, policy_name, policy_version, reasons FROM decisions")).all()
            logged = {row[0]: row[1:] for row in rows}
            for answer in answers + batch:
                suggestion, name, version, _ = logged[answer["request_id"]]
                assert (suggestion, name, version) == (answer["suggestion"], answer["policy"]["name"], "1")
            if model == "student":
                assert [a["suggestion"] for a in answers] == ["pass", "block", "review"]
                assert [(a["verdict"], a["violation"]) for a in answers] == [
                    ("approve", "none"), ("reject", "exaggeration"), ("approve", "none")]
                hits = answers[1]["term_hits"]
                assert [(h["term"], h["list"], copies[1][h["start"]:h["end"]]) for h in hits] == [
                    ("全网第一", "block", "全網第一"), ("第一", "block", "第一"), ("NO.1", "block", "ＮＯ．１")]
                assert [h["list"] for h in answers[2]["term_hits"]] == ["allow", "review", "allow"]  # 最近, 最 (in 最火), 第一次
                logged_answer = client.get(f"/v1/audits/{answers[1]['request_id']}").json()
                assert logged_answer["term_hits"] == hits and logged_answer["suggestion"] == "block"
            else:
                assert {(a["suggestion"], a["verdict"], a["violation"]) for a in answers} == {("block", "reject", "gambling")}
                assert answers[0]["reasons"][0]["rule"] == "violation.gambling.block_at"
                assert answers[0]["violation_score"] == answers[0]["reasons"][0]["score"] >= 0.9


def test_an_unknown_policy_and_copy_of_control_characters_are_4xx(model_dir, tmp_path):  # noqa: F811
    with TestClient(create_app(settings(model_dir, tmp_path))) as client:
        unknown = audit_json(client, policy="lenient")
        assert unknown.status_code == 422 and unknown.json()["kind"] == "unknown_policy"
        assert "default, strict" in unknown.json()["error"]
        form = client.post("/v1/audits", files={"image": ("a.png", png(), "image/png")},
                           data={"text": "平价", "policy": "nope"})
        assert form.status_code == 422 and form.json()["kind"] == "unknown_policy"
        named = client.post("/v1/audits", files={"image": ("a.png", png(), "image/png")},
                            data={"text": "平价", "policy": "strict"})
        assert named.status_code == 200 and named.json()["policy"] == {"name": "strict", "version": "1"}
        control = audit_json(client, copy="\x01\x02\u200b\x7f")
        assert control.status_code == 400 and control.json()["kind"] == "text_empty"
        long_id = audit_json(client, ad_id="a" * 129)
        assert long_id.status_code == 422 and "at most 128 characters" in long_id.json()["error"]


def test_policies_reload_without_a_restart_and_a_broken_one_never_replaces_them(model_dir, tmp_path,  # noqa: F811
                                                                              policy_folder):
    values = settings(model_dir, tmp_path, policy_dir=policy_folder)
    with TestClient(create_app(values)) as client:
        listed = client.get("/v1/policies").json()
        assert listed["default"] == "default" and [p["name"] for p in listed["policies"]] == ["default", "strict"]
        assert audit_json(client, copy="平价好货").json()["suggestion"] == "pass"

        default = yaml.safe_load((policy_folder / "default.yaml").read_text())
        default["version"] = "2"
        (policy_folder / "default.yaml").write_text(yaml.safe_dump(default, allow_unicode=True))
        with (policy_folder / "extreme-words-review.txt").open("a") as stream:
            stream.write("好货\n")
        reloaded = client.post("/v1/policies/reload")
        assert reloaded.status_code == 200 and reloaded.json()["policies"][0]["version"] == "2"
        answer = audit_json(client, copy="平价好貨").json()  # traditional 貨 matches the new term 好货
        assert (answer["suggestion"], answer["policy"]["version"]) == ("review", "2")
        assert answer["term_hits"] == [{"term": "好货", "list": "review", "start": 2, "end": 4}]

        default["violations"]["gambling"] = {"block_at": 0.4, "review_at": 0.6}
        (policy_folder / "default.yaml").write_text(yaml.safe_dump(default, allow_unicode=True))
        broken = client.post("/v1/policies/reload")
        assert broken.status_code == 422 and broken.json()["kind"] == "policy_invalid"
        assert "default.yaml: violations.gambling: review_at (0.6) is above block_at (0.4)" in broken.json()["error"]
        default["violations"]["gambling"] = {"block_at": 0.9, "review_at": 0.5}
        (policy_folder / "default.yaml").write_text(yaml.safe_dump(default, allow_unicode=True))
        (policy_folder / "extreme-words-block.txt").write_text("# nothing left\n")
        assert "the list is empty" in client.post("/v1/policies/reload").json()["error"]
        still = audit_json(client, copy="平价好货").json()
        assert (still["suggestion"], still["policy"]["version"]) == ("review", "2")  # the running set serves on


def test_only_policy_admins_may_reload(model_dir, tmp_path):  # noqa: F811
    from adaudit.service.security import digest

    keys = [f"ops:{digest('ops-key')}", f"partner:{digest('partner-key')}"]
    values = settings(model_dir, tmp_path, api_keys=keys, policy_admins=["ops"])
    with TestClient(create_app(values)) as client:
        refused = client.post("/v1/policies/reload", headers={"X-API-Key": "partner-key"})
        assert refused.status_code == 403 and refused.json()["kind"] == "forbidden"
        assert client.post("/v1/policies/reload", headers={"X-API-Key": "ops-key"}).status_code == 200
        assert client.get("/v1/policies").status_code == 401


# --- adaudit policy fit -------------------------------------------------------------------------------------
def test_policy_fit_writes_a_loadable_policy_and_its_curve(model_dir, tmp_path):  # noqa: F811
    from adaudit.data.generator import make_dataset

    data = tmp_path / "ads"
    make_dataset(data, n=40, seed=3, validation_fraction=0.25)
    (data / "test.jsonl").unlink()  # fitting never reads the test split
    out = tmp_path / "fitted" / "fitted.yaml"
    command = [sys.executable, "-m", "adaudit.cli", "policy", "fit", "--model", str(model_dir / "teacher"),
               "--data", str(data), "--target-precision", "0.9", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "automation rate" in result.stderr
    loaded = load_policy(out)
    figures = yaml.safe_load(result.stdout)
    thresholds = {(t.block_at, t.review_at) for t in loaded.policy.violations.values()}
    assert thresholds == {(figures["block_at"], figures["review_at"])} and loaded.name == "fitted"
    assert loaded.matcher.sizes == load_policies()["default"].matcher.sizes  # term lists kept, inline
    assert out.with_suffix(".curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    per_class = subprocess.run(command[:-1] + [str(tmp_path / "per-class.yaml"), "--per-class"], capture_output=True,
                               text=True, timeout=300)
    assert per_class.returncode == 0, per_class.stderr
    written = load_policy(tmp_path / "per-class.yaml").policy.violations
    figures = yaml.safe_load(per_class.stdout)
    assert {v: (t.block_at, t.review_at) for v, t in written.items()} == {
        v: (figures["block_at"][v], figures["review_at"][v]) for v in written}
    assert figures["automation_rate"] >= yaml.safe_load(result.stdout)["automation_rate"]  # common pair: factor 1

    (data / "validation.jsonl").unlink()
    for extra, fragment in [([], "validation.jsonl not found"), (["--target-precision", "1.5"], "not between 0 and 1")]:
        failed = subprocess.run(command + extra, capture_output=True, text=True, timeout=300)
        lines = failed.stderr.strip().splitlines()
        assert failed.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), failed.stderr
        assert fragment in lines[0]


def test_the_decisions_benchmark_runs_on_tiny_models(model_dir, tmp_path):  # noqa: F811
    import json

    from adaudit.data.generator import make_dataset

    make_dataset(tmp_path / "ads", n=30, seed=5)
    command = [sys.executable, "-m", "benchmarks.decisions", "--model", str(model_dir / "student"), "--teacher",
               str(model_dir / "teacher"), "--data", str(tmp_path / "ads"), "--out", str(tmp_path / "results")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "results" / "decisions.json").read_text())
    assert summary["command"].startswith("python -m benchmarks.decisions --model ")
    for role in ("student", "teacher"):
        test = summary[role]["test"]
        assert test["ads"] == len((tmp_path / "ads" / "test.jsonl").read_text().splitlines())
        assert test["automation_rate"] == pytest.approx(test["blocked"] + test["passed"])
    assert summary["goals"]["gap"] == pytest.approx(summary["teacher"]["served"]["automation_rate"]
                                                    - summary["student"]["served"]["automation_rate"])
    student = summary["student"]["served"]
    held = all(student[side] is None or student[side] >= 0.99 for side in ("block_precision", "pass_precision"))
    assert summary["goals"]["student_precision_held"] == held
    assert not summary["goals"]["student_automation_met"] or held
    assert "| student |" in (tmp_path / "results" / "decisions.md").read_text()


@pytest.mark.parametrize("per_class", [False, True])
def test_the_benchmark_measures_the_policy_as_served(model_dir, tmp_path, per_class):  # noqa: F811
    # served = the written YAML through decide(): the fitted thresholds' decisions, except that a block term in
    # the copy blocks and a review term holds back a pass (the shipped lists, written inline by policy fit). The
    # biased tiny student's probabilities crowd within 1e-6 of its thresholds: thresholds written rounded to 6
    # places (as they once were) passed 4 of these 12 test ads instead of 1, and failed this test.
    from adaudit.data.dataset import read_split
    from adaudit.data.generator import make_dataset
    from adaudit.decisions.policy import SHIPPED, load_policy
    from adaudit.training.policy_fit import splits_class_probabilities
    from benchmarks.decisions import measure

    make_dataset(tmp_path / "ads", n=60, seed=11)
    measured = measure(model_dir / "student", tmp_path / "ads", 0.9, per_class)
    test, served = measured["test"], measured["served"]
    _, [(probabilities, violating)] = splits_class_probabilities(model_dir / "student", [(tmp_path / "ads", "test")])
    if per_class:
        block_at, review_at = list(test["block_at"].values()), list(test["review_at"].values())
    else:
        block_at, review_at = [test["block_at"]] * probabilities.shape[1], [test["review_at"]] * probabilities.shape[1]
    matcher = load_policy(SHIPPED / "default.yaml").matcher
    lists = [{hit.list for hit in matcher.find(record.text)} for record in read_split(tmp_path / "ads", "test")]
    term_block = np.array(["block" in found for found in lists])
    term_review = np.array(["review" in found for found in lists])
    blocked = (probabilities >= np.array(block_at)).any(axis=1) | term_block
    passed = (probabilities < np.array(review_at)).all(axis=1) & ~blocked & ~term_review
    assert served["ads"] == len(lists) and served["ads_with_term_hits"] == int((term_block | term_review).sum()) > 0
    assert (served["blocked"], served["passed"]) == (pytest.approx(blocked.mean()), pytest.approx(passed.mean()))
    assert served["block_precision"] == (pytest.approx(violating[blocked].mean()) if blocked.any() else None)


def test_a_fit_that_misses_the_target_on_test_is_not_automation_at_it():
    from benchmarks.decisions import precision_held

    assert precision_held({"block_precision": 0.995, "pass_precision": 0.99}, 0.99)
    assert precision_held({"block_precision": None, "pass_precision": 1.0}, 0.99)
    assert not precision_held({"block_precision": 0.9933, "pass_precision": 0.9821}, 0.99)
