"""Same result at any world size: the base benchmark's chosen recipe compressed by 2 gloo ranks against 1 process.

Issue 26's goal: `adaudit compress --nproc-per-node 2` on the base benchmark lands within 0.5 points of the
1-rank verdict accuracy. RUN is a finished `benchmarks/compression.sh` run: its teacher, its data, the recipe
its choice.json chose on the validation split, and RUN/student (1 process). This compresses the same teacher
with the same recipe on 2 ranks into RUN/student-2-ranks (the teacher's outputs are read from
RUN/teacher.outputs/, which the 1-process run wrote, so neither run's time includes the teacher's forward
passes) and compares the two students on the validation and test splits.

    python -m benchmarks.world_size --run runs/bench-v --out benchmarks/results

`--second-seed N` also compresses the same teacher with the recipe's seed set to N (other distillation ads drawn,
other views, other dropout masks), in 1 process into RUN/student-seed-N and on the ranks into
RUN/student-2-ranks-seed-N: the spread that two runs of the same procedure give, against which the world-size
difference is read, and the world-size difference averaged over the two seeds (a difference of means of two runs
each: the seed's own luck, which one run per world size leaves in, then mostly cancels).

Writes OUT/world-size.{json,md}. A student already in RUN/student-2-ranks (or RUN/student-seed-N) is measured
again, not recompressed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

GOAL_POINTS = 0.5


def compress_on_ranks(run: Path, recipe: Path, out: Path, ranks: int) -> float | None:
    """Run the compression on `ranks` processes (several: one thread each, as torchrun sets them); its wall seconds."""
    if (out / "report.json").is_file():
        return None
    command = [sys.executable, "-m", "adaudit", "compress", "--teacher", str(run / "teacher"), "--data",
               str(run / "data"), "--out", str(out), "--recipe", str(recipe), "--device", "cpu",
               "--nproc-per-node", str(ranks)]
    print(" ".join(command), file=sys.stderr, flush=True)
    started = time.perf_counter()
    with (run / f"{out.name}.log").open("w") as log:
        threads = {"OMP_NUM_THREADS": "1"} if ranks > 1 else {}  # 1 process: every core, as the benchmark's own ran
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **threads})
    return time.perf_counter() - started


def reseeded_recipe(recipe: Path, seed: int, out: Path) -> Path:
    """`recipe` with its seed set to `seed`, written as OUT (the recipe of the second 1-process run)."""
    import yaml

    settings = yaml.safe_load(recipe.read_text())
    settings["seed"] = seed
    out.write_text(yaml.safe_dump(settings, sort_keys=False))
    return out


def recipe_seed(recipe: Path) -> int:
    """The seed a recipe file runs with (compression/recipe.py: 0 when it names none)."""
    from adaudit.compression.recipe import load_recipe

    return load_recipe(recipe).seed


def seed_means(one_process: list[dict], ranks: list[dict], seeds: list[int]) -> dict:
    """Each world size's test and validation verdict accuracy averaged over the same recipe seeds, and the
    difference of those means: the world-size effect with each seed's luck shared by both sides."""
    mean = lambda runs, key: sum(run[key] for run in runs) / len(runs)  # noqa: E731
    difference = 100 * (mean(ranks, "test_accuracy") - mean(one_process, "test_accuracy"))
    return {"seeds": seeds, "one_process_test": [run["test_accuracy"] for run in one_process],
            "ranks_test": [run["test_accuracy"] for run in ranks],
            "ranks_validation": [run["validation_accuracy"] for run in ranks],
            "one_process_mean_test": mean(one_process, "test_accuracy"), "ranks_mean_test": mean(ranks, "test_accuracy"),
            "difference_points": difference,
            "validation_difference_points": 100 * (mean(ranks, "validation_accuracy")
                                                   - mean(one_process, "validation_accuracy")),
            "goal_met": abs(difference) <= GOAL_POINTS}


def figures(report: dict) -> dict:
    student = report["student"]
    return {"test_accuracy": student["accuracy"], "test_violation_macro_f1": student["violation_macro_f1"],
            "validation_accuracy": student.get("validation", {}).get("accuracy"),
            "validation_violation_macro_f1": student.get("validation", {}).get("violation_macro_f1"),
            "params": student["params"], "compression_ratio": report["compression_ratio"],
            "wall_seconds": report["wall_seconds"], "teacher_outputs_reused": report["teacher_outputs"]["reused"],
            "distributed": report.get("distributed")}


def paired(data: Path, one_folder: Path, two_folder: Path, names: tuple[str, str] = ("one_process", "two_ranks")) -> dict:
    """The two students on the same test ads: how often they answer the verdict alike, and the ads only one of them
    gets right. Exact McNemar test (a binomial test on those discordant ads): the chance that students erring
    equally often would split them at least this unevenly; the accuracy gap is noise unless it is small."""
    from scipy.stats import binomtest

    from adaudit.data.encoding import encode_split
    from adaudit.models.modeling import AuditModel
    from adaudit.models.preprocessing import AuditProcessor
    from adaudit.training.evaluation import predict_logits

    right, answers = [], []
    for folder in (one_folder, two_folder):
        model = AuditModel.from_pretrained(folder)
        encoded = encode_split(data, "test", AuditProcessor.from_folder(model.config, folder), model.config.tasks)
        predicted = predict_logits(model, encoded)["verdict"].argmax(-1)
        answers.append(predicted)
        right.append(predicted == encoded.labels[:, list(model.config.tasks).index("verdict")])
    only_one, only_two = int((right[0] & ~right[1]).sum()), int((right[1] & ~right[0]).sum())
    return {"verdict_agreement": (answers[0] == answers[1]).float().mean().item(),
            f"only_{names[0]}_right": only_one, f"only_{names[1]}_right": only_two,
            "mcnemar_p_value": binomtest(only_one, only_one + only_two, 0.5).pvalue if only_one + only_two else 1.0}


def markdown(summary: dict) -> str:
    one, two = summary["one_process"], summary["two_ranks"]
    rows = [("verdict accuracy, test", "test_accuracy"), ("violation macro-F1, test", "test_violation_macro_f1"),
            ("verdict accuracy, validation", "validation_accuracy"),
            ("violation macro-F1, validation", "validation_violation_macro_f1")]
    verdict = "met" if summary["goal_met"] else "NOT met"
    return "\n".join([
        "# Compression at two world sizes", "",
        f"Goal: {summary['goal']}: **{verdict}** (difference {summary['difference_points']:+.2f} points on the "
        f"{summary['test_ads']} test ads; on the validation split {summary['validation_difference_points']:+.2f}). "
        f"For scale: two models of this accuracy that err independently differ by "
        f"{summary['sampling_standard_error_points']:.2f} points (one standard error) on that many ads by sampling "
        f"alone{second_run_sentence(summary.get('second_run'))}", "",
        *paired_lines(summary.get("paired")),
        *seed_mean_lines(summary.get("seed_means")),
        "| | 1 process | 2 gloo ranks |", "| --- | --- | --- |",
        *[f"| {label} | {100 * one[key]:.2f}% | {100 * two[key]:.2f}% |" for label, key in rows],
        f"| parameters | {one['params'] / 1e6:.2f}M | {two['params'] / 1e6:.2f}M |",
        f"| wall time | {one['wall_seconds'] / 60:.1f} min | {two['wall_seconds'] / 60:.1f} min |",
        f"| teacher's outputs read from disk | {one['teacher_outputs_reused']} | {two['teacher_outputs_reused']} |", "",
        f"Recipe: `{summary['recipe']}` (chosen on the validation split by benchmarks/recipe_choice.py). The 1-process "
        "student is the benchmark's own; its wall time includes computing the teacher's outputs unless the row above "
        "says they were read. Wall times were taken on a machine shared with other jobs: not a speed figure.", "",
        f"Made by `{summary['command']}`.", ""])


def second_run_sentence(second: dict | None) -> str:
    if not second:
        return "; a second 1-process run with other draws was not made."
    found = second["paired"]
    return (f". A second 1-process run, recipe seed {second['seed']} (other ads drawn, other views and dropout masks), "
            f"lands at {100 * second['figures']['test_accuracy']:.2f}% ({second['difference_points']:+.2f} points from "
            f"the first; validation {second['validation_difference_points']:+.2f}); the two 1-process students answer "
            f"the verdict alike on {100 * found['verdict_agreement']:.2f}% of the test ads "
            f"({found['only_one_process_right']} / {found['only_second_run_right']} ads only one of them gets right, "
            f"McNemar p = {found['mcnemar_p_value']:.2f}). That spread is what the world-size difference is read "
            "against.")


def seed_mean_lines(means: dict | None) -> list[str]:
    if not means:
        return []
    listed = lambda values: " and ".join(f"{100 * value:.2f}%" for value in values)  # noqa: E731
    return [f"Averaged over recipe seeds {' and '.join(map(str, means['seeds']))} (two runs per world size): 1 process "
            f"{listed(means['one_process_test'])} (mean {100 * means['one_process_mean_test']:.2f}%), 2 ranks "
            f"{listed(means['ranks_test'])} (mean {100 * means['ranks_mean_test']:.2f}%): a difference of "
            f"**{means['difference_points']:+.2f} points** on test ({means['validation_difference_points']:+.2f} on "
            f"validation); the goal read on these means: **{'met' if means['goal_met'] else 'NOT met'}**.", ""]


def paired_lines(found: dict | None) -> list[str]:
    if not found:
        return []
    return [f"Paired on the same test ads: the two students answer the verdict alike on "
            f"{100 * found['verdict_agreement']:.2f}% of them; {found['only_one_process_right']} ads only the 1-process "
            f"student gets right, {found['only_two_ranks_right']} only the 2-rank one (exact McNemar p = "
            f"{found['mcnemar_p_value']:.2f}: "
            f"{'no evidence that either errs more often' if found['mcnemar_p_value'] >= 0.05 else 'a real difference'}"
            ").", ""]


def main() -> None:
    from adaudit.core.files import write_results

    from .recipe_choice import chosen_recipe

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=Path("runs/bench-v"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--second-seed", type=int, default=None,
                        help="also a second 1-process run with this recipe seed (the spread of two runs)")
    args = parser.parse_args()
    recipe = chosen_recipe(args.run)
    two_folder = args.run / f"student-{args.ranks}-ranks"
    compress_on_ranks(args.run, recipe, two_folder, args.ranks)
    one = figures(json.loads((args.run / "student" / "report.json").read_text()))
    two = figures(json.loads((two_folder / "report.json").read_text()))
    difference = 100 * (two["test_accuracy"] - one["test_accuracy"])
    test_ads = json.loads((args.run / "student" / "report.json").read_text())["student"]["samples"]
    accuracy = one["test_accuracy"]
    summary = {"command": "python -m benchmarks.world_size " + " ".join(sys.argv[1:]), "recipe": str(recipe),
               "one_process": one, "two_ranks": two, "difference_points": difference,
               "validation_difference_points": 100 * (two["validation_accuracy"] - one["validation_accuracy"]),
               "test_ads": test_ads,
               # two models of this accuracy, each right or wrong on every ad independently: the spread of the
               # difference of their accuracies that sampling alone gives, for scale (not a test of equality)
               "sampling_standard_error_points": 100 * (2 * accuracy * (1 - accuracy) / test_ads) ** 0.5,
               "goal": f"{args.ranks}-rank test verdict accuracy within {GOAL_POINTS} points of 1 process's",
               "goal_met": abs(difference) <= GOAL_POINTS,
               "paired": paired(args.run / "data", args.run / "student", two_folder)}
    if args.second_seed is not None:
        second_folder = args.run / f"student-seed-{args.second_seed}"
        compress_on_ranks(args.run, reseeded_recipe(recipe, args.second_seed, args.run / f"seed-{args.second_seed}.yaml"),
                          second_folder, 1)
        second = figures(json.loads((second_folder / "report.json").read_text()))
        summary["second_run"] = {
            "seed": args.second_seed, "figures": second,
            "difference_points": 100 * (second["test_accuracy"] - one["test_accuracy"]),
            "validation_difference_points": 100 * (second["validation_accuracy"] - one["validation_accuracy"]),
            "paired": paired(args.run / "data", args.run / "student", second_folder, ("one_process", "second_run"))}
        reseeded_ranks = args.run / f"student-{args.ranks}-ranks-seed-{args.second_seed}"
        compress_on_ranks(args.run, args.run / f"seed-{args.second_seed}.yaml", reseeded_ranks, args.ranks)
        summary["seed_means"] = seed_means(
            [one, second], [two, figures(json.loads((reseeded_ranks / "report.json").read_text()))],
            [recipe_seed(recipe), args.second_seed])
    write_results(args.out, "world-size", summary, markdown(summary))
    print(markdown(summary))


if __name__ == "__main__":
    main()
