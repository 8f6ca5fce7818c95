"""The physical limit: how fast this machine multiplies matrices, and the latency floor it implies.

A model that needs F floating-point operations per ad cannot answer faster than F / peak,
where peak is the best float32 matmul rate the machine reaches (large square matrices, where
nothing but arithmetic limits it). Measured single-threaded and with the threads the latency
measurement uses.

Run on its own, it times one student against that floor on every engine adaudit has, in
alternating rounds (a change of machine load hits them all alike), and writes
OUT/physical_limit.{json,md}:

    python -m benchmarks.physical_limit --student runs/bench/student --data runs/bench/data --out benchmarks/results

Engines: eager PyTorch, torch.compile (inductor), ONNX Runtime with the any-batch graph only, and
ONNX Runtime as serving runs it (the batch-1 graph for one ad; export/onnx_runtime.py). Latency
is the p50 of batch-1 calls over the test split's ads, their copy trimmed as in every other
latency figure; the batch-32 time per ad is beside it. The student's weights do not change its
latency, so any student of the default recipe's shape gives the same figures.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

GOAL = 3.0  # issue 7: student latency within 3x of the FLOPs floor


@torch.inference_mode()
def matmul_gflops(threads: int, size: int = 2048, repeats: int = 20) -> float:
    """Best float32 GFLOP/s of a size x size matmul over `repeats` calls with `threads` threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        generator = torch.Generator().manual_seed(0)
        a = torch.randn(size, size, generator=generator)
        b = torch.randn(size, size, generator=generator)
        torch.matmul(a, b)  # warm-up
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            torch.matmul(a, b)
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return 2 * size**3 / best / 1e9


def peak_matmul() -> dict:
    threads = torch.get_num_threads()
    return {"size": 2048, "threads": threads, "gflops_single_thread": matmul_gflops(1),
            "gflops_all_threads": matmul_gflops(threads)}


def floor_ms(flops: float, gflops: float) -> float:
    """The latency floor of `flops` operations at `gflops` GFLOP/s, in milliseconds."""
    return flops / (gflops * 1e9) * 1000


def compiled_latency(model: torch.nn.Module, split, repeats: int = 60) -> dict:
    """Batch-1 p50 of `model` after torch.compile (inductor, C++ kernels), to show how much of the
    distance to the floor is eager PyTorch's per-operator overhead. Dynamic shapes: the copy's
    length varies from ad to ad. Returns the p50 and the seconds compilation took."""
    from adaudit.training.measure import latency  # the same inputs and loop as every other latency figure

    compiled = torch.compile(model.eval(), dynamic=True)
    started = time.perf_counter()
    with torch.inference_mode():
        compiled(**split.inputs(torch.tensor([0])))
    compile_seconds = time.perf_counter() - started
    return {**latency(compiled, split, repeats=repeats, throughput_repeats=0), "compile_seconds": compile_seconds}


def engines(student: Path, work: Path) -> dict[str, torch.nn.Module]:
    """The student on each engine, by label."""
    from adaudit.export.onnx_runtime import OnnxRuntimeAuditModel, example_inputs, export_onnx
    from adaudit.models.modeling import AuditModel

    model = AuditModel.from_pretrained(student).eval()
    graph = export_onnx(model, example_inputs(model.config), work / "model.onnx")
    return {"eager PyTorch": model,
            "ONNX Runtime, any-batch graph": OnnxRuntimeAuditModel(graph, batch_one=False),
            "ONNX Runtime, batch-1 graph for one ad (serving)": OnnxRuntimeAuditModel(graph)}


def run(student: Path, data: Path, out: Path, rounds: int, compile_too: bool) -> dict:
    from adaudit.data.encoding import encode_split
    from adaudit.core.files import write_results
    from adaudit.training.measure import flops_per_ad, machine, paired_latency
    from adaudit.models.preprocessing import AuditProcessor

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="adaudit-floor-") as work:
        models = engines(student, Path(work))
        eager = models["eager PyTorch"]
        test = encode_split(data, "test", AuditProcessor(eager.config, eager.tokenizer), eager.config.tasks)
        flops = flops_per_ad(eager, test)
        print(f"{flops / 1e6:.1f}M FLOPs per ad; timing the peak matmul rate and {len(models)} engines in {rounds} "
              "alternating rounds", flush=True)
        # the machine's speed drifts within minutes: the peak is measured in every round, beside the engines,
        # and the floor comes from its median, as the latencies come from theirs
        peaks = []
        timings = paired_latency(models, test, rounds=rounds, before_round=lambda: peaks.append(peak_matmul()))
        peak = {**peaks[0], **{key: float(statistics.median(p[key] for p in peaks))
                               for key in ("gflops_single_thread", "gflops_all_threads")}}
        peak["gflops_all_threads_by_round"] = [p["gflops_all_threads"] for p in peaks]
        floor = floor_ms(flops, peak["gflops_all_threads"])
        rows = []
        for label, figures in timings.items():
            rows.append({"engine": label, **figures, "latency_over_floor": figures["latency_ms_p50"] / floor,
                         "batch_32_per_ad_over_floor": 1000 / figures["throughput_per_s"] / floor})
        if compile_too:
            print("compiling with torch.compile (inductor)", flush=True)
            compiled = compiled_latency(eager, test)
            rows.append({"engine": "torch.compile (inductor)", **compiled,
                         "latency_over_floor": compiled["latency_ms_p50"] / floor})
    best = min(rows, key=lambda row: row["latency_ms_p50"])
    summary = {"command": " ".join(["python", "-m", "benchmarks.physical_limit", *sys.argv[1:]]),
               "student": str(student), "machine": machine(), "physical_limit": peak, "flops_per_ad": flops,
               "floor_ms": floor, "rounds": rounds, "engines": rows, "goal": GOAL, "best_engine": best["engine"],
               "best_latency_over_floor": best["latency_over_floor"], "met": best["latency_over_floor"] <= GOAL,
               "wall_seconds": time.perf_counter() - started}
    write_results(out, "physical_limit", summary, report(summary))
    return summary


def report(summary: dict) -> str:
    m, peak = summary["machine"], summary["physical_limit"]
    lines = ["# The student against the FLOPs floor", "", f"`{summary['command']}`", "",
             f"Student `{summary['student']}`. {m['cpu']}, {m['cores']} cores, torch {m['torch']} "
             f"({m['torch_threads']} threads). Peak float32 matmul ({peak['size']}x{peak['size']}): "
             f"{peak['gflops_single_thread']:.1f} GFLOP/s on one thread, {peak['gflops_all_threads']:.1f} GFLOP/s on "
             f"{peak['threads']} (medians of one measurement per round; by round: "
             + ", ".join(f"{value:.0f}" for value in peak.get("gflops_all_threads_by_round", [])) + "). "
             f"{summary['flops_per_ad'] / 1e6:.1f}M FLOPs per ad: floor "
             f"**{summary['floor_ms']:.3f} ms**. Batch-1 p50 over the test split's ads (copy trimmed), median of "
             f"{summary['rounds']} alternating rounds; {summary['wall_seconds']:.0f} s in all.", "",
             "| engine | p50 ms (b=1) | p95 ms | x floor (b=1) | ms per ad at b=32 | x floor (b=32) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row in summary["engines"]:
        per_ad = 1000 / row["throughput_per_s"] if row.get("throughput_per_s") else None
        lines.append(f"| {row['engine']} | {row['latency_ms_p50']:.3f} | {row['latency_ms_p95']:.3f} | "
                     f"{row['latency_over_floor']:.2f} | " + (f"{per_ad:.3f} | {row['batch_32_per_ad_over_floor']:.2f} |"
                                                               if per_ad else "n/a | n/a |"))
    verdict = "met" if summary["met"] else "not met"
    lines += ["", f"Goal: batch-1 latency within {summary['goal']:.0f}x of the floor: **{verdict}** "
              f"({summary['best_engine']}: {summary['best_latency_over_floor']:.2f}x).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The student's latency against this machine's FLOPs floor.")
    parser.add_argument("--student", type=Path, required=True, help="student model folder")
    parser.add_argument("--data", type=Path, required=True, help="data folder with the test split")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results", help="results folder")
    parser.add_argument("--rounds", type=int, default=5, help="alternating timing rounds")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile figure")
    args = parser.parse_args(argv)
    for folder, what in ((args.student / "config.json", "a model folder"), (args.data / "test.jsonl", "a data folder")):
        if not folder.is_file():
            print(f"error: {folder.parent} is not {what} (no {folder.name})", file=sys.stderr)
            return 2
    summary = run(args.student, args.data, args.out, args.rounds, not args.no_compile)
    print(report(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
