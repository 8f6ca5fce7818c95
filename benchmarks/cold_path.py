"""The gateway's own per-ad work, hot and cold: why the batch-1 overhead is larger than its parts.

At concurrency 1 the gateway is idle while Triton computes (about 6 ms for the student here), and
then decodes, encodes and logs the next ad on a core whose caches the idle time (another tenant,
the Triton process) has cooled. This times the gateway's own steps, the code the gateway runs, on
the same ads in three conditions, in alternating rounds:

- hot: one ad after another, nothing in between;
- after idle: a sleep of `--gap-ms` before each ad (the wait for Triton at batch 1);
- after compute: a float32 matmul of about the same length before each ad (Triton's work on a
  shared core).

Steps: decoding and checking the image and copy (`service.intake.decode_ads`), the model inputs
(`service.encoding.Encoder.encode`), and one decision-log row committed to SQLite
(`service.decision_log.DecisionLog.add_decisions`).

    python -m benchmarks.cold_path --student runs/shape/student --data runs/bench/data --out benchmarks/results

Writes OUT/cold_path.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import torch

CONDITIONS = ("hot", "after idle", "after compute")
STEPS = ("decode", "encode", "log write")


def load_raw_ads(data: Path, limit: int) -> list:
    """The first `limit` test ads as a request carries them: image bytes and copy."""
    from adaudit.data.dataset import read_split
    from adaudit.service.intake import RawAd

    return [RawAd(record.image_path.read_bytes(), record.text, record.id) for record in read_split(data, "test")[:limit]]


@contextlib.contextmanager
def restored_threads(threads: int):
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def decision_row(model: str) -> dict:
    from adaudit.service.decision_log import now

    labels = {"verdict": "approve", "violation": "none"}
    return {"request_id": uuid.uuid4().hex, "created_at": now(), "ad_id": None, "model": model, "version": "1",
            "arm": "primary", "verdict": "approve", "violation": "none", "violation_score": 0.9,
            "outputs": {"labels": labels, "scores": {"verdict": 0.9, "violation": 0.9}}, "latency_ms": 1.0,
            "shadowed": False, "caller": "anonymous"}


def run(student: Path, data: Path, out: Path, ads: int, rounds: int, per_round: int, gap_ms: float) -> dict:
    from adaudit.core.files import write_results
    from adaudit.training.measure import machine
    from adaudit.service.backends import EmbeddedBackend
    from adaudit.service.decision_log import DecisionLog
    from adaudit.service.encoding import Encoder
    from adaudit.service.intake import Limits, decode_ads
    from adaudit.service.settings import GatewaySettings

    started = time.perf_counter()
    settings = GatewaySettings()
    limits = Limits(settings.max_image_bytes, settings.max_image_pixels, settings.max_text_chars)
    raw = load_raw_ads(data, ads)
    spec = asyncio.run(EmbeddedBackend(student.parent).describe(student.name))
    encoder = Encoder()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one Triton instance's thread (restored at the end)
    matrix = torch.randn(384, 384)

    def compute_for(seconds: float) -> None:
        until = time.perf_counter() + seconds
        while time.perf_counter() < until:
            matrix @ matrix

    before = {"hot": lambda: None, "after idle": lambda: time.sleep(gap_ms / 1000),
              "after compute": lambda: compute_for(gap_ms / 1000)}
    samples = {condition: {step: [] for step in STEPS} for condition in CONDITIONS}
    with tempfile.TemporaryDirectory(prefix="adaudit-cold-") as work, restored_threads(threads):
        log = DecisionLog(f"sqlite:///{work}/decisions.db")
        log.prepare_schema()
        for item in raw[:20]:  # warm-up: first calls load the tokenizer and compile SQL
            encoder.encode(decode_ads([item], limits, [spec.image_size]), spec)
            log.add_decisions([decision_row(spec.name)])
        for round_number in range(rounds):
            for condition in CONDITIONS:
                for index in range(per_round):
                    item = raw[(round_number * per_round + index) % len(raw)]
                    row = decision_row(spec.name)
                    before[condition]()
                    t0 = time.perf_counter()
                    decoded = decode_ads([item], limits, [spec.image_size])
                    t1 = time.perf_counter()
                    encoder.encode(decoded, spec)
                    t2 = time.perf_counter()
                    log.add_decisions([row])
                    t3 = time.perf_counter()
                    for step, seconds in (("decode", t1 - t0), ("encode", t2 - t1), ("log write", t3 - t2)):
                        samples[condition][step].append(seconds * 1000)
        log.close()
    table = {condition: {step: statistics.median(values) for step, values in by_step.items()}
             for condition, by_step in samples.items()}
    for figures in table.values():
        figures["all three"] = sum(figures[step] for step in STEPS)
    summary = {"command": " ".join(["python", "-m", "benchmarks.cold_path", *sys.argv[1:]]), "student": str(student),
               "machine": machine(), "ads": len(raw), "rounds": rounds, "per_round": per_round, "gap_ms": gap_ms,
               "p50_ms": table, "cold_over_hot": table["after idle"]["all three"] / table["hot"]["all three"],
               "wall_seconds": time.perf_counter() - started}
    write_results(out, "cold_path", summary, report(summary))
    return summary


def report(summary: dict) -> str:
    table, machine = summary["p50_ms"], summary["machine"]
    lines = ["# The gateway's own per-ad work, hot and cold", "", f"`{summary['command']}`", "",
             f"Student `{summary['student']}`; {summary['ads']} test ads; {machine['cpu']}, {machine['cores']} cores, "
             f"torch {machine['torch']}; {summary['rounds']} alternating rounds of {summary['per_round']} ads per "
             f"condition; the gap before each ad: {summary['gap_ms']:g} ms; {summary['wall_seconds']:.0f} s.", "",
             "| before each ad | decode ms | encode ms | log write ms | all three ms |", "| --- | --- | --- | --- | --- |"]
    for condition, figures in table.items():
        lines.append(f"| {condition} | {figures['decode']:.3f} | {figures['encode']:.3f} | {figures['log write']:.3f} "
                     f"| {figures['all three']:.3f} |")
    lines += ["", f"After idle the same steps take **{summary['cold_over_hot']:.1f}x** as long as hot (p50s).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--student", type=Path, required=True, help="student model folder")
    parser.add_argument("--data", type=Path, required=True, help="data folder with test.jsonl and its images")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "benchmarks" / "results")
    parser.add_argument("--ads", type=int, default=128, help="distinct ads to cycle through")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds")
    parser.add_argument("--per-round", type=int, default=200, help="ads per condition per round")
    parser.add_argument("--gap-ms", type=float, default=6.0, help="idle or compute time before each ad")
    args = parser.parse_args(argv)
    if not (args.student / "config.json").is_file():
        raise SystemExit(f"error: {args.student} is not a model folder (no config.json)")
    if not (args.data / "test.jsonl").is_file():
        raise SystemExit(f"error: {args.data} has no test.jsonl")
    summary = run(args.student, args.data, args.out, args.ads, args.rounds, args.per_round, args.gap_ms)
    print(report(summary))


if __name__ == "__main__":
    main()
