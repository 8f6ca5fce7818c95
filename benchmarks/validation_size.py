"""Does a bigger validation split make a 99% threshold fit hold on the test split? (issue 28)

`adaudit policy fit` picks the thresholds on the data folder's validation split (600 ads in the base
benchmark), and on the test split those passes and blocks fall short of the target (docs/decisions.md).
This probe fits one model's thresholds on validation sets of growing size, each the data folder's own
validation split plus ads of a second data set made by the same generator with another seed (a pool no
training ad comes from), and measures each fit on the same test split: automation rate and the precision
of automatic blocks and passes. Several draws per size show how far a fit swings by sampling alone.

    python -m benchmarks.validation_size --model runs/bench-v/teacher --data runs/bench-v/data \
        --pool runs/bench-v-pool --sizes 600,1500,3000,6600 --draws 5 --out benchmarks/results

Writes OUT/validation-size.{json,md}.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np

from adaudit.core.files import write_results
from adaudit.decisions.fit import apply_thresholds, fit_thresholds
from adaudit.training.policy_fit import splits_scores


Scores = tuple[np.ndarray, np.ndarray]  # (risk scores, whether each ad truly violates)


def pooled_scores(model: Path, data: Path, pool: Path) -> tuple[Scores, Scores]:
    """((scores, truth) of the data folder's validation ads first, then of every ad of the pool folder (train,
    validation, test); (scores, truth) of the data folder's test ads), with the model loaded once."""
    splits = [(data, "validation")] + [(pool, split) for split in ("train", "validation", "test")
                                       if (pool / f"{split}.jsonl").is_file()]
    *parts, test = splits_scores(model, splits + [(data, "test")])
    return (np.concatenate([scores for scores, _ in parts]), np.concatenate([truth for _, truth in parts])), test


def measure(scores, truth, test_scores, test_truth, size: int, draws: int, target: float, seed: int) -> dict:
    """`draws` fits on `size` ads drawn from the pool (one, the whole pool, when size is all of it)."""
    generator = np.random.default_rng(seed)
    rows = []
    for _ in range(draws if size < len(scores) else 1):
        chosen = generator.choice(len(scores), size, replace=False)
        fitted = fit_thresholds(scores[chosen], truth[chosen], target)
        rows.append(apply_thresholds(test_scores, test_truth, fitted.block_at, fitted.review_at))
    values = lambda key: [row[key] for row in rows if row[key] is not None]  # noqa: E731
    return {"size": size, "draws": len(rows), "fits": rows,
            **{f"{key}_mean": float(np.mean(values(key))) if values(key) else None
               for key in ("automation_rate", "block_precision", "pass_precision", "passed")},
            "fits_reaching_target_on_test": sum(
                (row["block_precision"] is None or row["block_precision"] >= target)
                and (row["pass_precision"] is None or row["pass_precision"] >= target) for row in rows)}


def markdown(summary: dict) -> str:
    percent = lambda value: "n/a" if value is None else f"{100 * value:.1f}%"  # noqa: E731
    lines = ["# Validation size and the 99% threshold fit", "", f"`{summary['command']}`", "",
             f"Model `{summary['model']}`; thresholds fitted at precision {summary['target_precision']} on validation "
             f"sets drawn from a pool of {summary['pool_ads']} held-out ads (the data folder's validation split and "
             f"the pool folder's ads), measured on the {summary['test_ads']} test ads. Means over the draws.", "",
             "| validation ads | draws | automation (test) | passed (test) | block precision (test) "
             "| pass precision (test) | fits reaching the target on test |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in summary["rows"]:
        lines.append(f"| {row['size']} | {row['draws']} | {percent(row['automation_rate_mean'])} "
                     f"| {percent(row['passed_mean'])} | {percent(row['block_precision_mean'])} "
                     f"| {percent(row['pass_precision_mean'])} | {row['fits_reaching_target_on_test']} of {row['draws']} |")
    return "\n".join(lines + [""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="data folder: its validation and test splits")
    parser.add_argument("--pool", type=Path, required=True, help="another data folder of the same generator")
    parser.add_argument("--sizes", default="600,1500,3000,6600")
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--target-precision", type=float, default=0.99)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    (scores, truth), (test_scores, test_truth) = pooled_scores(args.model, args.data, args.pool)
    sizes = [int(value) for value in args.sizes.split(",")]
    if max(sizes) > len(scores):
        parser.error(f"--sizes: the pool holds {len(scores)} ads, fewer than {max(sizes)}")
    summary = {"command": shlex.join(["python", "-m", "benchmarks.validation_size", *sys.argv[1:]]),
               "model": str(args.model), "target_precision": args.target_precision, "pool_ads": int(len(scores)),
               "test_ads": int(len(test_scores)),
               "rows": [measure(scores, truth, test_scores, test_truth, size, args.draws, args.target_precision,
                                args.seed) for size in sizes]}
    write_results(args.out, "validation-size", summary, markdown(summary))
    print(markdown(summary))


if __name__ == "__main__":
    main()
