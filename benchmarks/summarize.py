"""Collect a compression benchmark run into benchmarks/results: JSON, a Markdown table, plots.

Usage: python -m benchmarks.summarize RUN_FOLDER RESULTS_FOLDER
"""

import json
import sys
from pathlib import Path

import matplotlib

from adaudit.core.files import atomic_write_text

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

GOALS = {"speedup": 8.0, "compression_ratio": 18.0, "accuracy_drop_points": 1.0, "violation_f1_drop_points": 2.0,
         "wall_minutes": 30.0}


def row(name, entry):
    return (f"| {name} | {entry['params'] / 1e6:.2f}M | {entry['flops_per_ad'] / 1e6:.1f}M | "
            f"{entry['latency_ms_p50']:.2f} | {entry['latency_ms_p95']:.2f} | {entry['throughput_per_s']:.0f} | "
            f"{100 * entry['accuracy']:.2f} | {100 * entry['violation_macro_f1']:.2f} | "
            f"{100 * entry['agreement']:.2f} |")


def modality_ceilings(data_dir: Path) -> dict:
    """Best verdict accuracy a single-modality model could reach on the test split.

    Which modality carries each violation follows from how the generator made it: the copy's
    trigger phrases, the picture's gambling imagery, or both (image_text_mismatch). A model that
    cannot see the carrier can at best answer "approve" for those ads.
    """
    from adaudit.data.generator import categories_in

    rows = [json.loads(line) for line in (data_dir / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    needs_picture = needs_copy = 0
    for row in rows:
        violation = row["labels"]["violation"]
        if violation == "none":
            continue
        if violation == "image_text_mismatch":
            needs_picture, needs_copy = needs_picture + 1, needs_copy + 1
        elif violation == "gambling" and "gambling" not in categories_in(row["text"]):
            needs_picture += 1
        else:
            needs_copy += 1
    return {"text_only_ceiling": 1 - needs_picture / len(rows), "image_only_ceiling": 1 - needs_copy / len(rows),
            "ads": len(rows)}


def provenance(run: Path, report: dict, teacher: dict) -> dict:
    """How the figures were made: the commands run (benchmarks/compression.sh logs them to
    RUN/commands.log), the recipe as the student used it, the seeds and the data's checksums."""
    commands = run / "commands.log"
    return {
        "commands": commands.read_text().splitlines() if commands.exists() else [],
        "recipe": json.loads((run / "student" / "recipe.json").read_text()),
        "seeds": {"data": json.loads((run / "data.json").read_text()).get("seed") if (run / "data.json").exists()
                  else None, "teacher": teacher.get("seed"), "compression": report.get("seed")},
        "data_checksum": report.get("data_checksum"),
        "validation_split": "validation" in report["student"],  # figures to choose on, apart from the test split
        # how the recipe was chosen (benchmarks/recipe_choice.py): the candidates' validation figures and the rule
        "recipe_choice": json.loads((run / "choice.json").read_text()) if (run / "choice.json").exists() else None,
    }


def main(run: Path, results: Path) -> None:
    report = json.loads((run / "student" / "report.json").read_text())
    teacher = json.loads((run / "teacher" / "metrics.json").read_text())
    ablations = {m: json.loads((run / f"ablation-{m}" / "metrics.json").read_text())
                 for m in ("both", "text", "image") if (run / f"ablation-{m}" / "metrics.json").exists()}
    achieved = {
        "speedup": report["speedup"], "compression_ratio": report["compression_ratio"],
        "accuracy_drop_points": report["accuracy_drop_points"],
        "violation_f1_drop_points": report["violation_f1_drop_points"],
        "wall_minutes": report["wall_seconds"] / 60,
    }
    met = {k: (v >= GOALS[k] if k in ("speedup", "compression_ratio") else v <= GOALS[k]) for k, v in achieved.items()}
    ceilings = modality_ceilings(run / "data")
    summary = {"provenance": provenance(run, report, teacher),
               "compression": report, "teacher_training": teacher, "modality_ablation": ablations,
               "modality_ceilings": ceilings,
               "goals": GOALS, "achieved": achieved, "met": met}
    results.mkdir(parents=True, exist_ok=True)
    atomic_write_text(results / "compression.json", json.dumps(summary, indent=2) + "\n")

    lines = ["| model | params | FLOPs/ad | p50 ms (b=1) | p95 ms | ads/s (b=32) | verdict acc % | violation F1 % "
             "| agreement % |", "|---|---|---|---|---|---|---|---|---|", row("teacher (base)", report["teacher"])]
    lines += [row(f"after {stage['name']}", stage) for stage in report["stages"]]
    lines += ["", f"Student: **{report['compression_ratio']:.1f}x** fewer parameters, **{report['speedup']:.1f}x** lower "
              f"batch-1 p50 latency, {report['throughput_gain']:.1f}x throughput at batch 32; verdict accuracy "
              f"{-report['accuracy_drop_points']:+.2f} points, violation macro-F1 {-report['violation_f1_drop_points']:+.2f} "
              f"points; compression took {achieved['wall_minutes']:.1f} min on {report['distillation_samples']} "
              f"distillation ads. Teacher training: {teacher['wall_seconds'] / 60:.1f} min.",
              "", f"Machine: {report['machine']}"]
    choice = summary["provenance"]["recipe_choice"]
    if choice:
        lines += ["", f"Recipe chosen on the validation split: **{choice['chosen']}** ({choice['rule']}). Candidates "
                  "(validation verdict accuracy / violation macro-F1): " + "; ".join(
                      f"{name} {100 * c['validation']['accuracy']:.2f}% / {100 * c['validation']['violation_macro_f1']:.2f}%"
                      f" (replaces {json.dumps(c['replaces']) if c['replaces'] else 'nothing'})"
                      for name, c in choice["candidates"].items())]
    lines += ["", f"Best verdict accuracy a single-modality model could reach on this test split: text only "
              f"{100 * ceilings['text_only_ceiling']:.2f}%, image only {100 * ceilings['image_only_ceiling']:.2f}% "
              f"(image-text mismatches need both; picture-only gambling needs the image)."]
    if ablations:
        lines += ["", "| `small` model trained on | verdict acc % | violation F1 % |", "|---|---|---|"]
        lines += [f"| {m} | {100 * a['test']['accuracy']:.2f} | {100 * a['test']['violation_macro_f1']:.2f} |"
                  for m, a in ablations.items()]
    atomic_write_text(results / "compression.md", "\n".join(lines) + "\n")

    entries = [("teacher", report["teacher"])] + [(s["name"], s) for s in report["stages"]]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    names = [n for n, _ in entries]
    left.bar(names, [e["latency_ms_p50"] for _, e in entries], color="tab:blue")
    left.set_ylabel("batch-1 p50 latency (ms)")
    left.set_title("latency after each stage")
    right.plot(names, [100 * e["accuracy"] for _, e in entries], marker="o", label="verdict accuracy")
    right.plot(names, [100 * e["violation_macro_f1"] for _, e in entries], marker="s", label="violation macro-F1")
    right.set_ylabel("%")
    right.set_title("accuracy after each stage")
    right.legend()
    figure.tight_layout()
    figure.savefig(results / "stages.png", dpi=110)
    print((results / "compression.md").read_text())


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
