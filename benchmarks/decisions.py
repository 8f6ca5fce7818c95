"""Audit decisions benchmark (issue 28): the automation rate at a target precision, student vs teacher.

    .venv/bin/python -m benchmarks.decisions --model STUDENT --teacher TEACHER --data DATA \
        [--target-precision 0.99] [--per-class] [--out benchmarks/results]

For each model: thresholds fitted on the data folder's validation split (decisions/fit.py: automatic
blocks and automatic passes each at the target precision there), then applied to the test split,
where the automation rate (share of ads blocked or passed without a reviewer) and the precision each
automatic side reaches are measured. `--per-class`: one pair of thresholds per violation class
(`fit_class_thresholds`, what `adaudit policy fit --per-class` writes). Goals: the student's automation rate at least 90%, within 2
points of the teacher's, and its automatic blocks and passes at the target precision on test too (a fit
on validation that does not hold on test is not automation at that precision), all read as served (below). Each fit is also measured as
served: the policy YAML `adaudit policy fit` writes (the shipped term lists inline), loaded as the gateway loads
it and applied by decisions/decide.py to each test ad with its copy's term hits. Writes OUT/decisions.json and
OUT/decisions.md (with the exact command).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from adaudit.core.files import write_results
from adaudit.data.dataset import read_split
from adaudit.decisions.decide import decide
from adaudit.decisions.fit import (apply_class_thresholds, apply_thresholds, decided, fit_class_thresholds,
                                   fit_thresholds)
from adaudit.decisions.policy import load_policy
from adaudit.models.configuration import AuditModelConfig
from adaudit.training.policy_fit import fitted_policy, policy_yaml, splits_class_probabilities

GOAL_AUTOMATION, GOAL_GAP = 0.90, 0.02


def measure(model: Path, data: Path, target: float, per_class: bool = False) -> dict:
    classes, [(validation, validation_truth), (test, test_truth)] = splits_class_probabilities(
        model, [(data, "validation"), (data, "test")])
    if per_class:
        fit = fit_class_thresholds(validation, validation_truth, target, classes)
        measured = apply_class_thresholds(test, test_truth, fit.block_at, fit.review_at)
        measured.update(block_at=dict(zip(classes, fit.block_at)), review_at=dict(zip(classes, fit.review_at)))
    else:
        fit = fit_thresholds(validation.max(axis=1), validation_truth, target)
        measured = apply_thresholds(test.max(axis=1), test_truth, fit.block_at, fit.review_at)
    return {"model": str(model), "validation": fit.as_dict() | {"ads": int(len(validation))}, "test": measured,
            "served": as_served(model, data, fit, classes, test, test_truth)}


def as_served(model: Path, data: Path, fit, classes: list[str], probabilities: np.ndarray, violating: np.ndarray) -> dict:
    """The fit as a deployment decides: the written policy (thresholds as written, term lists inline) loaded
    from its YAML, decide() on each test ad's probabilities (as the gateway computes them) and its copy's term
    hits. Only the reason task's probabilities are passed: a base policy with attribute rules would need the
    other tasks too (the shipped default has none)."""
    taxonomy = AuditModelConfig.load(model).taxonomy
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fitted.yaml"
        path.write_text(policy_yaml(fitted_policy(fit, "fitted", taxonomy=taxonomy)), encoding="utf-8")
        loaded = load_policy(path, taxonomy)
    copies = [record.text for record in read_split(data, "test")]
    if len(copies) != len(probabilities):
        raise ValueError(f"{data}: {len(copies)} test ads but {len(probabilities)} scored")
    suggestions, term_hit_ads = [], 0
    for copy, row in zip(copies, probabilities):
        reason = dict(zip(classes, map(float, row))) | {taxonomy.clean_class: float(1.0 - row.sum())}
        hits = loaded.matcher.find(copy)
        term_hit_ads += any(hit.list != "allow" for hit in hits)
        suggestions.append(decide({taxonomy.reason_task: reason}, hits, loaded.policy, taxonomy).suggestion)
    suggestions = np.array(suggestions)
    return decided(suggestions == "block", suggestions == "pass", violating) | {"ads_with_term_hits": int(term_hit_ads)}


def threshold(value) -> str:
    """A threshold for the table: the number, or its range over the classes when each has its own."""
    if isinstance(value, dict):
        return f"{min(value.values()):.4f}-{max(value.values()):.4f} (per class)"
    return f"{value:.6f}"


def precision_held(test: dict, target: float) -> bool:
    """Whether the automatic blocks and passes reach `target` on the test split (a side that decides nothing
    holds trivially)."""
    return all(test[side] is None or test[side] >= target for side in ("block_precision", "pass_precision"))


def percent(value) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def markdown(summary: dict) -> str:
    lines = ["# Audit decisions: automation rate at a target precision", "",
             f"Command: `{summary['command']}`", "",
             f"Thresholds fitted on the validation split ({summary['student']['validation']['ads']} ads"
             f"{'; one pair per violation class' if summary.get('per_class') else ''}) at precision "
             f"{summary['target_precision']} for automatic blocks and passes, measured on the test split.", "",
             "| model | block_at | review_at | automation (test) | block precision (test) | pass precision (test) "
             "| ads (test) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for role in ("student", "teacher"):
        test = summary[role]["test"]
        lines.append(f"| {role} | {threshold(test['block_at'])} | {threshold(test['review_at'])} "
                     f"| {percent(test['automation_rate'])} "
                     f"| {percent(test['block_precision'])} | {percent(test['pass_precision'])} | {test['ads']} |")
    lines += ["", "As served (the written policy YAML with its term lists, decisions/decide.py, on the same test ads):", "",
              "| model | automation | block precision | pass precision | ads with term hits |", "| --- | --- | --- | --- | --- |"]
    for role in ("student", "teacher"):
        if served := summary[role].get("served"):
            lines.append(f"| {role} | {percent(served['automation_rate'])} | {percent(served['block_precision'])} "
                         f"| {percent(served['pass_precision'])} | {served['ads_with_term_hits']} |")
    goals, met = summary["goals"], lambda value: "met" if value else "not met"  # noqa: E731
    lines += ["", f"Goals, as served: the student's automatic blocks and passes at least {percent(summary['target_precision'])} "
              f"precise on test: {met(goals['student_precision_held'])}; student automation >= "
              f"{percent(GOAL_AUTOMATION)} at that precision: {met(goals['student_automation_met'])}; within "
              f"{100 * GOAL_GAP:.0f} points of the teacher (gap {100 * goals['gap']:.2f} points): "
              f"{met(goals['gap_met'])}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="the student folder")
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="data folder with validation.jsonl and test.jsonl")
    parser.add_argument("--target-precision", type=float, default=0.99)
    parser.add_argument("--per-class", action="store_true", help="one block_at and review_at per violation class")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    summary = {"command": shlex.join(["python", "-m", "benchmarks.decisions", *sys.argv[1:]]),
               "target_precision": args.target_precision, "per_class": args.per_class}
    for role, folder in (("student", args.model), ("teacher", args.teacher)):
        summary[role] = measure(folder, args.data, args.target_precision, args.per_class)
    # the goals read the fit as served: what a deployment of the written policy decides
    student, teacher = summary["student"]["served"]["automation_rate"], summary["teacher"]["served"]["automation_rate"]
    held = precision_held(summary["student"]["served"], args.target_precision)
    summary["goals"] = {"student_precision_held": held, "student_automation_met": held and student >= GOAL_AUTOMATION,
                        "gap": teacher - student, "gap_met": teacher - student <= GOAL_GAP}
    summary["wall_seconds"] = round(time.perf_counter() - started, 1)
    write_results(args.out, "decisions", summary, markdown(summary))
    print(markdown(summary))


if __name__ == "__main__":
    main()
