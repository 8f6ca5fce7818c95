"""The recipe of the compression benchmark, chosen on the validation split, never on the test split.

    python -m benchmarks.recipe_choice prepare RUN   # RUN/recipes/NAME.yaml for every candidate
    python -m benchmarks.recipe_choice choose RUN    # RUN/choice.json; RUN/student -> the chosen candidate
    python -m benchmarks.recipe_choice chosen RUN    # prints the chosen candidate's recipe file

benchmarks/compression.sh compresses the teacher once per candidate (RUN/candidate-NAME) and then asks
`choose`: the candidate with the best verdict accuracy on the data set's validation split (then
violation macro-F1, then the order below) becomes RUN/student, whose test-split figures are the headline.
Each candidate is the packaged default recipe with a few values replaced, so the candidates differ only
where the question is: here, whether the distillation views (compression/augmentation.py) earn their
time. choice.json records every candidate's replacements and validation figures, and the rule.
"""

from __future__ import annotations

import copy
import json
import os
import sys
from importlib.resources import files
from pathlib import Path

import yaml

from adaudit.core.files import atomic_write_text

# name -> the default recipe's values it replaces (nested keys); "default" is the packaged recipe itself
CANDIDATES: dict[str, dict] = {
    "default": {},
    "views-0": {"distillation": {"views": 0}},
}
RULE = ("highest validation verdict accuracy, then validation violation macro-F1, then the order of the candidates; "
        "the test split is not read")


def replaced(recipe: dict, changes: dict) -> dict:
    result = copy.deepcopy(recipe)
    for key, value in changes.items():
        result[key] = replaced(result.get(key, {}), value) if isinstance(value, dict) else value
    return result


def prepare(run: Path) -> None:
    default = yaml.safe_load(files("adaudit.compression.recipes").joinpath("default.yaml").read_text())
    for name, changes in CANDIDATES.items():
        atomic_write_text(run / "recipes" / f"{name}.yaml", yaml.safe_dump(replaced(default, changes), sort_keys=False))
        print(run / "recipes" / f"{name}.yaml")


def validation_of(report: dict) -> dict:
    figures = report["student"].get("validation")
    if not figures:
        raise SystemExit("error: a candidate's report has no validation figures: make the data set with "
                         "`adaudit data make` (which writes validation.jsonl) and compress again")
    return figures


def choose(run: Path) -> dict:
    scored = []
    costs = {}
    for order, name in enumerate(CANDIDATES):
        report_path = run / f"candidate-{name}" / "report.json"
        if not report_path.exists():
            raise SystemExit(f"error: {report_path} is missing: compress candidate {name} first")
        report = json.loads(report_path.read_text())
        figures = validation_of(report)
        scored.append((figures["accuracy"], figures["violation_macro_f1"], -order, name, figures))
        # what each candidate cost, and whether it ran the teacher or read the outputs an earlier one wrote
        costs[name] = {"wall_seconds": report.get("wall_seconds"), "teacher_outputs": report.get("teacher_outputs")}
    best = max(scored)[3]
    choice = {"rule": RULE, "chosen": best,
              "candidates": {name: {"replaces": CANDIDATES[name], "validation": figures, **costs[name]}
                             for *_, name, figures in scored}}
    atomic_write_text(run / "choice.json", json.dumps(choice, indent=1) + "\n")
    link = run / "student"
    if link.is_symlink() or link.exists():
        link.unlink()
    os.symlink(f"candidate-{best}", link)
    print(f"chosen on validation: {best} ({json.dumps(choice['candidates'][best]['validation'])})")
    return choice


def chosen_recipe(run: Path) -> Path:
    """RUN/recipes/NAME.yaml of the candidate RUN/choice.json chose (what later benchmarks compress again)."""
    return run / "recipes" / f"{json.loads((run / 'choice.json').read_text())['chosen']}.yaml"


if __name__ == "__main__":
    commands = {"prepare": prepare, "choose": choose, "chosen": lambda run: print(chosen_recipe(run))}
    if len(sys.argv) != 3 or sys.argv[1] not in commands:
        raise SystemExit("usage: python -m benchmarks.recipe_choice prepare|choose|chosen RUN")
    commands[sys.argv[1]](Path(sys.argv[2]))
