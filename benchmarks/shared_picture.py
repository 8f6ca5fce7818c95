"""What encoding a shared picture once saves on explain's batches (models/serving.py, `distinct_pictures`).

`explain=true` scores an ad's copy variants, each over the ad's own picture, and its picture variants, each
over its own copy (service/evidence.py). Since the model encodes a picture that consecutive rows share once,
the vision tower and the Q-Former run on one row for all the copy variants. This times the forward of such
batches with that sharing and without it (every row its own picture, as before), alternating the two in
every round so that both see the same machine, and reports the p50 of each and their ratio:

- level 1 at the evidence benchmark's p50: 4 copy variants and the whole picture greyed (5 rows, 2 pictures);
- level 2 at its p90: 3 copy variants and a 4 x 4 grid of greyed cells (19 rows, 17 pictures).

    python -m benchmarks.shared_picture --model runs/bench-v/student --model runs/bench-v/teacher \
        [--rounds 300] [--threads 1] [--out benchmarks/results]

Writes OUT/shared-picture.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch

BATCHES = {"level 1: 4 copy variants + the picture greyed": (4, 1), "level 2: 3 copy variants + 16 grid cells": (3, 16)}


def explain_batch(config, copy_rows: int, picture_rows: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Rows as explain sends them: `copy_rows` over one picture, then `picture_rows` pictures of their own."""
    generator = torch.Generator().manual_seed(seed)
    size, length = config.image_size, config.max_text_length
    picture = torch.randint(0, 256, (1, 3, size, size), dtype=torch.uint8, generator=generator)
    others = torch.randint(0, 256, (picture_rows, 3, size, size), dtype=torch.uint8, generator=generator)
    rows = copy_rows + picture_rows
    ids = torch.randint(5, config.vocab_size, (rows, length), generator=generator)
    mask = torch.zeros(rows, length, dtype=torch.long)
    mask[:, :30] = 1  # a copy of 30 tokens (the copy variants are shorter by a phrase: not what is timed here)
    return {"image_bytes": torch.cat([picture.repeat(copy_rows, 1, 1, 1), others]), "input_ids": ids,
            "attention_mask": mask}


@torch.inference_mode()
def unshared_logits(model, image_bytes, input_ids, attention_mask):
    """The forward as it was before sharing: every row encodes its own picture."""
    from adaudit.models.serving import calibrated, model_inputs, task_temperatures

    return calibrated(model(**model_inputs(image_bytes, input_ids, attention_mask)).logits, task_temperatures(model))


def timed(run, batch: dict) -> float:
    started = time.perf_counter()
    run(**batch)
    return (time.perf_counter() - started) * 1000


def measure(folder: Path, rounds: int) -> dict:
    from adaudit.models.modeling import AuditModel
    from adaudit.models.serving import served_logits

    model = AuditModel.from_pretrained(folder).eval()
    figures = {}
    for name, (copy_rows, picture_rows) in BATCHES.items():
        batch = explain_batch(model.config, copy_rows, picture_rows)
        shared, unshared = served_logits(model, **batch), unshared_logits(model, **batch)
        largest = max(float((shared[task] - unshared[task]).abs().max()) for task in shared)
        sharing, not_sharing = partial(served_logits, model), partial(unshared_logits, model)
        for _ in range(10):  # warm-up
            timed(sharing, batch), timed(not_sharing, batch)
        with_sharing, without = [], []
        for _ in range(rounds):
            with_sharing.append(timed(sharing, batch))
            without.append(timed(not_sharing, batch))
        p50_with, p50_without = statistics.median(with_sharing), statistics.median(without)
        figures[name] = {"rows": copy_rows + picture_rows, "pictures": 1 + picture_rows,
                         "p50_ms_shared": round(p50_with, 3), "p50_ms_unshared": round(p50_without, 3),
                         "ratio": round(p50_with / p50_without, 3), "largest_logit_difference": largest}
    return {"model": str(folder), "params": model.num_parameters(), "image_size": model.config.image_size,
            "vision_blocks": len(model.blocks("vision")), "batches": figures}


def main() -> None:
    from adaudit.core.files import write_results
    from adaudit.training.measure import machine

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, action="append", required=True)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the gateway's embedded backend: 1)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_at_start = round(os.getloadavg()[0], 2)
    models = [measure(folder, args.rounds) for folder in args.model]
    command = "python -m benchmarks.shared_picture " + shlex.join(sys.argv[1:])
    summary = {"command": command, "rounds": args.rounds, "threads": args.threads, "machine": machine(),
               "load_at_start": load_at_start, "load_at_end": round(os.getloadavg()[0], 2), "models": models}
    lines = ["# A shared picture encoded once: explain's batches", "",
             f"Command: `{command}`", "",
             f"Forward of explain-shaped batches (calibrated logits, inference mode), with the picture that the copy "
             f"variants share encoded once and without (every row its own), alternating in each of {args.rounds} "
             f"rounds; torch threads {args.threads}; {summary['machine']['cpu']}, {summary['machine']['cores']} "
             f"cores, 1-minute load average {load_at_start} at the start, {summary['load_at_end']} at the end.", "",
             "| model | batch | rows | pictures encoded | p50 shared (ms) | p50 unshared (ms) | ratio | largest logit difference |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for entry in models:
        label = f"{entry['model']} ({entry['params'] / 1e6:.2f}M, {entry['vision_blocks']} vision blocks)"
        for name, row in entry["batches"].items():
            lines.append(f"| {label} | {name} | {row['rows']} | {row['pictures']} of {row['rows']} | "
                         f"{row['p50_ms_shared']} | {row['p50_ms_unshared']} | **{row['ratio']}** | "
                         f"{row['largest_logit_difference']:.1e} |")
    write_results(args.out, "shared-picture", summary, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
