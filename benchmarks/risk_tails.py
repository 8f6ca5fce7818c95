"""Where automation at a target precision is lost (issue 28): the two tails of the risk score, and other readings.

    .venv/bin/python -m benchmarks.risk_tails --model NAME=FOLDER ... --validation runs/validation-pool/data \
        --test runs/bench-v/data --out benchmarks/results/pasted-ads-20

For each model, on the validation split of --validation (where thresholds are fitted) and the test split of
--test (where they are measured):
- the tails of the risk score (decisions/fit.py): at a few pass thresholds, how many validation ads would pass
  and how many of those violate, by class (a 99% pass allows one violation per hundred passed ads); and which
  class the riskiest tenth of the clean ads is suspected of;
- other readings of the same probabilities, each fitted on validation and measured on test: the riskiest
  class (the policy's rule), the riskiest class or the verdict head's p(reject), the sum over the classes, and
  per-class thresholds (decisions/fit.py `fit_class_thresholds`, `adaudit policy fit --per-class`).
A diagnosis, not a result: nothing here changes the shipped rule. Writes OUT/risk-tails.{json,md}.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from adaudit.core.files import write_results
from adaudit.decisions.fit import apply_class_thresholds, apply_thresholds, fit_class_thresholds, fit_thresholds
from benchmarks.shifted import named_models

PASS_THRESHOLDS = (0.05, 0.1, 0.15, 0.2, 0.3)


def probabilities(folder: Path, splits: list[tuple[Path, str]]) -> tuple[list[str], list[dict]]:
    """The model's violation classes (clean one excluded) and, per (data folder, split): `classes` (n, C)
    probabilities and `violating` (training/policy_fit.py `class_probabilities`), `truth` class names and `reject`
    (the verdict head's probability of rejecting)."""
    import torch

    from adaudit.data.encoding import encode_split
    from adaudit.models.modeling import AuditModel
    from adaudit.models.preprocessing import AuditProcessor
    from adaudit.training.evaluation import predict_logits
    from adaudit.training.policy_fit import class_probabilities, held_out_split, violation_classes

    model = AuditModel.from_pretrained(folder)
    processor, tasks, taxonomy = AuditProcessor.from_folder(model.config, folder), model.config.tasks, \
        model.config.taxonomy
    reasons, verdicts = list(tasks[taxonomy.reason_task]), list(tasks[taxonomy.verdict_task])
    rejecting = [verdicts.index(name) for name in taxonomy.reject_classes]
    read = []
    for data, split in splits:
        encoded = held_out_split(data, processor, tasks) if split == "validation" else encode_split(
            data, split, processor, tasks)
        logits = predict_logits(model, encoded)
        scores, violating = class_probabilities(model.config, logits, encoded)
        truth = encoded.labels[:, encoded.tasks.index(taxonomy.reason_task)].tolist()
        read.append({"classes": scores, "violating": violating, "truth": [reasons[index] for index in truth],
                     "reject": torch.softmax(logits[taxonomy.verdict_task], -1).numpy()[:, rejecting].sum(1)})
    return violation_classes(model.config), read


def readings(validation: dict, test: dict, target: float) -> dict:
    """Each reading of the probabilities, fitted on validation and measured on test."""
    rules = {"riskiest class (the policy's rule)": lambda r: r["classes"].max(1),
             "riskiest class or p(reject)": lambda r: np.maximum(r["classes"].max(1), r["reject"]),
             "sum over the classes": lambda r: r["classes"].sum(1)}
    results = {}
    for name, rule in rules.items():
        fit = fit_thresholds(rule(validation), validation["violating"], target)
        results[name] = {"on_validation": fit.automation_rate,
                         "test": apply_thresholds(rule(test), test["violating"], fit.block_at, fit.review_at),
                         "ceiling": fit_thresholds(rule(test), test["violating"], target).automation_rate}
    fit = fit_class_thresholds(validation["classes"], validation["violating"], target)
    results["per-class thresholds"] = {
        "on_validation": fit.automation_rate,
        "test": apply_class_thresholds(test["classes"], test["violating"], fit.block_at, fit.review_at),
        "ceiling": fit_class_thresholds(test["classes"], test["violating"], target).automation_rate}
    return results


def tails(classes: list[str], split: dict) -> dict:
    risk = split["classes"].max(1)
    truth = np.array(split["truth"])
    violating = split["violating"]
    passes = []
    for threshold in PASS_THRESHOLDS:
        passed = risk < threshold
        passes.append({"threshold": threshold, "passed": int(passed.sum()),
                       "violations": int((passed & violating).sum()),
                       "by_class": dict(Counter(truth[passed & violating].tolist()))})
    clean_risk_90th_percentile = float(np.quantile(risk[~violating], 0.9))
    riskiest = ~violating & (risk > clean_risk_90th_percentile)
    suspected = Counter(classes[i] for i in split["classes"][riskiest].argmax(1))
    return {"ads": int(len(risk)), "clean": int((~violating).sum()), "passes": passes,
            "clean_risk_90th_percentile": clean_risk_90th_percentile,
            "riskiest_tenth_of_clean_suspected_of": dict(suspected)}


def markdown(summary: dict) -> str:
    percent = lambda v: "n/a" if v is None else f"{100 * v:.2f}%"  # noqa: E731
    lines = ["# Where automation is lost: the risk score's tails", "", f"Command: `{summary['command']}`", "",
             f"Thresholds fitted on `{summary['validation']}` (validation split) at precision "
             f"{summary['target_precision']}, measured on `{summary['test']}` (test split). A diagnosis, not a result.",
             ""]
    for name, model in summary["models"].items():
        tail = model["tails"]
        lines += [f"## {name}", "", f"Validation ads: {tail['ads']} ({tail['clean']} clean). Passing every ad whose "
                  "risk is below a threshold:", "", "| threshold | ads passed | violations among them | by class |",
                  "| --- | --- | --- | --- |"]
        lines += [f"| {p['threshold']} | {p['passed']} | {p['violations']} | "
                  f"{', '.join(f'{k} {v}' for k, v in sorted(p['by_class'].items())) or '-'} |" for p in tail["passes"]]
        lines += ["", f"The riskiest tenth of the clean ads (risk above {tail['clean_risk_90th_percentile']:.3f}) is "
                  "suspected of: " + ", ".join(f"{k} {v}" for k, v in sorted(
                      tail["riskiest_tenth_of_clean_suspected_of"].items(), key=lambda kv: -kv[1])) + ".", "",
                  "| reading | automation on validation | automation on test | blocks precise | passes clean "
                  "| ceiling |", "| --- | --- | --- | --- | --- | --- |"]
        for reading, result in model["readings"].items():
            test = result["test"]
            lines.append(f"| {reading} | {percent(result['on_validation'])} | {percent(test['automation_rate'])} "
                         f"| {percent(test['block_precision'])} | {percent(test['pass_precision'])} "
                         f"| {percent(result['ceiling'])} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, metavar="NAME=FOLDER")
    parser.add_argument("--validation", type=Path, required=True, help="data folder whose validation split fits")
    parser.add_argument("--test", type=Path, required=True, help="data folder whose test split measures")
    parser.add_argument("--target-precision", type=float, default=0.99)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    arguments = parser.parse_args()
    summary = {"command": shlex.join(["python", "-m", "benchmarks.risk_tails", *sys.argv[1:]]),
               "validation": str(arguments.validation), "test": str(arguments.test),
               "target_precision": arguments.target_precision, "models": {}}
    for name, folder in named_models(arguments.model):
        classes, (validation, test) = probabilities(folder, [(arguments.validation, "validation"),
                                                             (arguments.test, "test")])
        summary["models"][name] = {"folder": str(folder), "tails": tails(classes, validation),
                                   "readings": readings(validation, test, arguments.target_precision)}
    write_results(arguments.out, "risk-tails", summary, markdown(summary))
    print(markdown(summary))


if __name__ == "__main__":
    main()
