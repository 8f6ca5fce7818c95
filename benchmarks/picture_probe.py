"""Where a picture attribute gets lost: linear probes on a model's picture features at three depths.

A picture head (`logo`, `clutter`, `background_colour`) reads the mean of the projected Q-Former
queries. When it sits at chance, this tells whether the vision tower saw the attribute at all and
the Q-Former dropped it, or the vision tower never saw it. For each depth a logistic regression
is fitted on training ads and scored on the test split:

- the picture: the mean of the projected Q-Former queries (what the picture heads read);
- the vision tower's patch tokens, averaged;
- the vision tower's patch tokens, their maximum per channel.

    python -m benchmarks.picture_probe --model runs/pretrained/teacher --data runs/bench/data --task logo

Writes OUT/picture_probe-<task>-<model folder name>.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

DEPTHS = ("picture (what the picture heads read)", "vision patches, mean", "vision patches, max")


@torch.inference_mode()
def features(model, split, count: int, task: str) -> tuple[list[np.ndarray], np.ndarray]:
    """The three depths' features of the first `count` ads of `split`, and their `task` labels."""
    column = list(model.config.tasks).index(task)
    rows = torch.arange(min(count, len(split)))
    depths: list[list[torch.Tensor]] = [[], [], []]
    for batch in rows.split(64):
        inputs = split.inputs(batch)
        patches = model.vision(pixel_values=inputs["pixel_values"]).last_hidden_state
        queries = model.query_tokens.expand(len(batch), -1, -1)
        picture = model.projector(model.qformer(query_embeds=queries, encoder_hidden_states=patches).last_hidden_state)
        for depth, value in zip(depths, (picture.mean(1), patches[:, 1:].mean(1), patches[:, 1:].amax(1))):
            depth.append(value.float())
    return [torch.cat(depth).numpy() for depth in depths], split.labels[rows, column].numpy()


def run(model_folder: Path, data: Path, out: Path, task: str, train_ads: int) -> dict:
    from sklearn.linear_model import LogisticRegression

    from adaudit.data.encoding import encode_split
    from adaudit.core.files import write_results
    from adaudit.training.measure import machine
    from adaudit.models.modeling import AuditModel
    from adaudit.models.preprocessing import AuditProcessor

    started = time.perf_counter()
    model = AuditModel.from_pretrained(model_folder).eval()
    if task not in model.config.tasks or task not in model.image_heads:
        raise SystemExit(f"error: {task} is not a picture task of this model (picture tasks: "
                         f"{', '.join(model.image_heads)})")
    processor = AuditProcessor(model.config, model.tokenizer)
    train = encode_split(data, "train", processor, model.config.tasks)
    test = encode_split(data, "test", processor, model.config.tasks)
    train_x, train_y = features(model, train, train_ads, task)
    test_x, test_y = features(model, test, len(test), task)
    scores = {}
    for name, fit_on, score_on in zip(DEPTHS, train_x, test_x):
        probe = LogisticRegression(max_iter=2000).fit(fit_on, train_y)
        scores[name] = float(probe.score(score_on, test_y))
    majority = float(np.bincount(test_y).max() / len(test_y))
    summary = {"command": " ".join(["python", "-m", "benchmarks.picture_probe", *sys.argv[1:]]), "model": str(model_folder),
               "task": task, "train_ads": len(train_y), "test_ads": len(test_y), "majority_class": majority,
               "probe_accuracy": scores, "machine": machine(), "wall_seconds": time.perf_counter() - started}
    write_results(out, f"picture_probe-{task}-{model_folder.name}", summary, report(summary))
    return summary


def report(summary: dict) -> str:
    lines = [f"# Linear probes for `{summary['task']}` on `{summary['model']}`", "", f"`{summary['command']}`", "",
             f"Fitted on {summary['train_ads']} training ads, scored on {summary['test_ads']} test ads; the majority "
             f"class alone scores {summary['majority_class']:.3f}. {summary['wall_seconds']:.0f} s.", "",
             "| features | probe accuracy |", "| --- | --- |"]
    lines += [f"| {name} | {value:.3f} |" for name, value in summary["probe_accuracy"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a model folder (teacher or student)")
    parser.add_argument("--data", type=Path, required=True, help="data folder with train.jsonl and test.jsonl")
    parser.add_argument("--task", default="logo", help="the picture task to probe")
    parser.add_argument("--train-ads", type=int, default=2000, help="training ads the probes are fitted on")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "benchmarks" / "results")
    args = parser.parse_args(argv)
    if not (args.model / "config.json").is_file():
        raise SystemExit(f"error: {args.model} is not a model folder (no config.json)")
    print(report(run(args.model, args.data, args.out, args.task, args.train_ads)))


if __name__ == "__main__":
    main()
