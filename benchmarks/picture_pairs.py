"""Would pairs of drawn-gambling pictures under clean copy teach a teacher the picture's gambling? (issue 28)

Automation at 99% precision stays near half (docs/decisions.md) because the teacher misses most gambling
ads whose gambling is drawn in the picture, and misses them with confidence. Recombined pairs
(data/recombination.py) leave gambling pictures out: a gambling label does not say which modality carries it.
This probe asks what such pairs would give if the data did say so. On the generator's data it can: a gambling
ad whose copy holds none of the generator's gambling markers (data/generator.py `categories_in`) carries its
gambling in the picture.

For each pair count N (0 is the control: the same extra epochs, no pairs), a fresh copy of the teacher is
fine-tuned for E epochs on the training ads plus N rows, each a drawn-gambling training ad's picture under a
clean training ad's copy of the same industry, labelled as the picture's ad (gambling, reject, its picture
attributes). Each copy is then scored on the test split: recall of the picture-gambling and copy-gambling
ads, recall of `none` (clean ads left clean), verdict accuracy, and the automation rate at the target
precision with thresholds fitted on the validation split (benchmarks/decisions.py's procedure). A first row
scores the teacher as trained.

    python -m benchmarks.picture_pairs --teacher runs/bench-v/teacher --data runs/bench-v/data \
        --pairs 0,500,2000 --epochs 2 --out benchmarks/results

Writes OUT/picture-pairs.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch


def picture_gambling(split, texts: dict[str, str], column: int, gambling: int) -> torch.Tensor:
    """Which ads of `split` are gambling ads whose copy carries no gambling marker: the picture carries it."""
    from adaudit.data.generator import categories_in

    return torch.tensor([int(split.labels[i, column]) == gambling and "gambling" not in categories_in(texts[ad])
                         for i, ad in enumerate(split.ids)], dtype=torch.bool)


def pairs(train, picture_rows: torch.Tensor, clean_rows: torch.Tensor, industry: torch.Tensor, count: int,
          seed: int = 0):
    """`count` rows: a drawn-gambling ad's picture under a clean ad's copy of the same industry, the picture's labels."""
    from adaudit.data.encoding import EncodedSplit

    generator = torch.Generator().manual_seed(seed)
    copies, pictures = [], []
    for _ in range(count):
        picture = int(picture_rows[torch.randint(len(picture_rows), (1,), generator=generator)])
        same = clean_rows[industry[clean_rows] == industry[picture]]
        copies.append(int(same[torch.randint(len(same), (1,), generator=generator)]))
        pictures.append(picture)
    copies, pictures = torch.tensor(copies, dtype=torch.long), torch.tensor(pictures, dtype=torch.long)
    return EncodedSplit([f"{train.ids[c]}~{train.ids[p]}" for c, p in zip(copies.tolist(), pictures.tolist())],
                        train.image_bytes[pictures], train.input_ids[copies], train.attention_mask[copies],
                        train.labels[pictures].clone(), train.tasks)


def measure(teacher: Path, data: Path, count: int, epochs: int, target: float, learning_rate: float) -> dict:
    from adaudit.data.dataset import read_split
    from adaudit.data.encoding import encode_split
    from adaudit.decisions.fit import apply_thresholds, fit_thresholds
    from adaudit.models.modeling import AuditModel
    from adaudit.models.preprocessing import AuditProcessor
    from adaudit.training.evaluation import predict_logits
    from adaudit.training.loop import Schedule, fit, label_loss
    from adaudit.training.policy_fit import held_out_split, logits_scores

    started = time.perf_counter()
    torch.manual_seed(0)
    model = AuditModel.from_pretrained(teacher)
    processor = AuditProcessor.from_folder(model.config, teacher)
    tasks, taxonomy = model.config.tasks, model.config.taxonomy
    train, test = (encode_split(data, split, processor, tasks) for split in ("train", "test"))
    validation = held_out_split(data, processor, tasks)
    texts = {record.id: record.text for split in ("train", "test") for record in read_split(data, split)}
    column = {task: i for i, task in enumerate(train.tasks)}
    reasons = list(tasks[taxonomy.reason_task])
    gambling, clean = reasons.index("gambling"), reasons.index(taxonomy.clean_class)
    violation = column[taxonomy.reason_task]

    drawn = torch.nonzero(picture_gambling(train, texts, violation, gambling)).flatten()
    clean_rows = torch.nonzero(train.labels[:, violation] == clean).flatten()
    extra = pairs(train, drawn, clean_rows, train.labels[:, column["industry"]], count)
    joined = train.joined(extra)
    if epochs:  # 0: the teacher as trained, the row every fine-tuned copy is read against
        fit(model, len(joined), lambda m, index: label_loss(m, joined, index),
            Schedule(epochs=epochs, learning_rate=learning_rate), f"fine-tune with {count} pairs")

    logits = predict_logits(model, test)
    predicted = logits[taxonomy.reason_task].argmax(-1)
    truth = test.labels[:, violation]
    on_picture = picture_gambling(test, texts, violation, gambling)
    in_copy = (truth == gambling) & ~on_picture
    recall = lambda rows: float((predicted[rows] == truth[rows]).float().mean())  # noqa: E731

    fitted = fit_thresholds(*logits_scores(model.config, predict_logits(model, validation), validation), target)
    verdict = column[taxonomy.verdict_task]
    return {"pairs": count, "epochs": epochs, "drawn_gambling_training_ads": int(len(drawn)),
            "verdict_accuracy": float((logits[taxonomy.verdict_task].argmax(-1) == test.labels[:, verdict])
                                      .float().mean()),
            "picture_gambling_recall": recall(on_picture), "picture_gambling_ads": int(on_picture.sum()),
            "copy_gambling_recall": recall(in_copy), "copy_gambling_ads": int(in_copy.sum()),
            "none_recall": recall(truth == clean),
            "automation": apply_thresholds(*logits_scores(model.config, logits, test), fitted.block_at,
                                           fitted.review_at),
            "wall_seconds": round(time.perf_counter() - started, 1)}


def markdown(summary: dict) -> str:
    percent = lambda value: "n/a" if value is None else f"{100 * value:.1f}%"  # noqa: E731
    lines = ["# Drawn-gambling pictures under clean copy: a probe", "", f"`{summary['command']}`", "",
             f"Each row: a fresh copy of `{summary['teacher']}` fine-tuned {summary['epochs']} epochs (learning rate "
             f"{summary['learning_rate']}) on the training ads plus that many pairs; scored on the test split. "
             f"Automation at precision {summary['target_precision']}: thresholds fitted on validation, measured on test. "
             "The first row is the teacher as trained.", "",
             "| pairs | verdict accuracy | drawn gambling found | gambling in the copy found | clean ads left clean "
             "| automation | blocks precise | passes clean |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in summary["rows"]:
        automation = row["automation"]
        label = row["pairs"] if row["epochs"] else "the teacher as trained"
        lines.append(f"| {label} | {percent(row['verdict_accuracy'])} | {percent(row['picture_gambling_recall'])} "
                     f"of {row['picture_gambling_ads']} | {percent(row['copy_gambling_recall'])} of "
                     f"{row['copy_gambling_ads']} | {percent(row['none_recall'])} | {percent(automation['automation_rate'])} "
                     f"| {percent(automation['block_precision'])} | {percent(automation['pass_precision'])} |")
    lines += ["", f"{summary['rows'][0]['drawn_gambling_training_ads']} training ads carry their gambling in the "
              "picture; the pairs reuse those pictures under other copy.", ""]
    return "\n".join(lines)


def main() -> None:
    from adaudit.core.files import write_results

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--pairs", default="0,500,2000", help="pair counts, comma-separated (0: the control)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--target-precision", type=float, default=0.99)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    counts = [int(value) for value in args.pairs.split(",")]
    rows = []
    for count, epochs in [(0, 0)] + [(count, args.epochs) for count in counts]:
        rows.append(measure(args.teacher, args.data, count, epochs, args.target_precision, args.learning_rate))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    summary = {"command": shlex.join(["python", "-m", "benchmarks.picture_pairs", *sys.argv[1:]]),
               "teacher": str(args.teacher), "epochs": args.epochs, "learning_rate": args.learning_rate,
               "target_precision": args.target_precision, "rows": rows}
    write_results(args.out, "picture-pairs", summary, markdown(summary))
    print(markdown(summary))


if __name__ == "__main__":
    main()
