"""Memory flat in data size: the peak resident memory of each command on a small and a ten times larger data set.

Issue 26, item 3's goal: the peak RSS of `adaudit teacher train` and of `adaudit compress` on 60,000 ads at
most 1.2x that on 6,000 ads. Every step runs as its own process, and its peak RSS is the kernel's own
figure for it (`ru_maxrss` of the rusage `os.wait4` returns when it ends: the largest of the process and
any process it started, such as the pack's DataLoader workers). Per data-set size:

- `adaudit data make --n N` (the generator's own memory, for reference);
- `adaudit data pack --preset P` (decodes every split into DATA/.packs/, what training and compression read);
- `adaudit teacher train --preset P --epochs E` (the `tiny` preset, 1 epoch by default: memory does not
  grow with the epochs, since every epoch reads the same pack the same way, and one epoch of 48,000 ads is
  long enough on two busy cores);
- `adaudit compress` (the preset's packaged recipe: for `tiny`, 120 distillation ads whatever the data's size,
  every stage evaluated on the whole test split).

    python -m benchmarks.scale --sizes 6000,60000 --work runs/scale --out benchmarks/results

A step whose figures are already in WORK/steps.json is not run again (an interrupted run continues).
Writes OUT/scale.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

GOAL = 1.2  # peak RSS at the largest size / at the smallest, at most
GOAL_STEPS = ("teacher train", "compress")
ADAUDIT = [sys.executable, "-m", "adaudit"]


def step_commands(size: int, work: Path, preset: str, epochs: int) -> dict[str, list[str]]:
    data, teacher, student = work / f"data-{size}", work / f"teacher-{size}", work / f"student-{size}"
    return {
        "data make": ["data", "make", "--out", str(data), "--n", str(size)],
        "data pack": ["data", "pack", "--data", str(data), "--preset", preset],
        "teacher train": ["teacher", "train", "--data", str(data), "--out", str(teacher), "--preset", preset,
                          "--epochs", str(epochs), "--device", "cpu"],
        "compress": ["compress", "--teacher", str(teacher), "--data", str(data), "--out", str(student),
                     "--device", "cpu"],
    }


def measured_run(arguments: list[str], log: Path) -> dict:
    """Run `adaudit ARGUMENTS` to its end; its exit code, wall time and peak RSS (MiB)."""
    started = time.perf_counter()
    with log.open("w") as output:
        process = subprocess.Popen([*ADAUDIT, *arguments], stdout=output, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    return {"exit_code": process.returncode, "wall_seconds": round(time.perf_counter() - started, 1),
            "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}  # Linux: kilobytes


def run_steps(sizes: list[int], work: Path, preset: str, epochs: int) -> dict:
    """Every step at every size, each measured once: WORK/steps.json keeps what was measured."""
    record = work / "steps.json"
    steps = json.loads(record.read_text()) if record.is_file() else {}
    for size in sizes:
        for step, arguments in step_commands(size, work, preset, epochs).items():
            name = f"{step} {size}"
            if name in steps:
                continue
            if step == "data make" and (work / f"data-{size}").exists():
                steps[name] = {"skipped": "the data set was already there"}
                continue
            print(f"{name}: adaudit {' '.join(arguments)}", file=sys.stderr, flush=True)
            log = work / f"{step.replace(' ', '-')}-{size}.log"
            steps[name] = {"command": "adaudit " + " ".join(arguments), **measured_run(arguments, log)}
            print(f"  {steps[name]}", file=sys.stderr, flush=True)
            if steps[name]["exit_code"] != 0:
                raise SystemExit(f"{name} failed: see {log}")
            record.write_text(json.dumps(steps, indent=2) + "\n")
    return steps


def summarise(steps: dict, sizes: list[int], work: Path, command: str) -> dict:
    from adaudit.training.measure import machine

    small, large = min(sizes), max(sizes)
    ratios = {step: steps[f"{step} {large}"]["peak_rss_mib"] / steps[f"{step} {small}"]["peak_rss_mib"]
              for step in ("data pack", *GOAL_STEPS)}
    ads = {size: json.loads((work / f"student-{size}" / "report.json").read_text())["distillation_samples"]
           for size in sizes}
    packs = {size: sum(p.stat().st_size for p in (work / f"data-{size}" / ".packs").rglob("*") if p.is_file())
             for size in sizes}
    return {"command": command, "sizes": sizes, "steps": steps, "ratio_largest_to_smallest": ratios,
            "goal": f"peak RSS of {' and '.join(GOAL_STEPS)} at {large} ads <= {GOAL}x that at {small}",
            "goal_met": all(ratios[step] <= GOAL for step in GOAL_STEPS),
            "distillation_samples": ads, "pack_mib": {size: round(b / 2**20, 1) for size, b in packs.items()},
            "machine": machine()}


def markdown(summary: dict) -> str:
    sizes = summary["sizes"]
    rows = ["| step | " + " | ".join(f"{size:,} ads: peak RSS, wall" for size in sizes) + " | ratio |",
            "| --- | " + " | ".join("---" for _ in sizes) + " | --- |"]
    for step in ("data make", "data pack", "teacher train", "compress"):
        entries = [summary["steps"][f"{step} {size}"] for size in sizes]
        cells = [entry.get("skipped") or f"{entry['peak_rss_mib']:.0f} MiB, {entry['wall_seconds']:.0f} s"
                 for entry in entries]
        ratio = summary["ratio_largest_to_smallest"].get(step)
        rows.append(f"| `{step}` | " + " | ".join(cells) + f" | {'' if ratio is None else f'{ratio:.2f}x'} |")
    verdict = "met" if summary["goal_met"] else "NOT met"
    return "\n".join([
        "# Memory against data size", "",
        f"Goal: {summary['goal']}: **{verdict}**.", "",
        *rows, "",
        f"Packs on disk (all splits): {', '.join(f'{s:,} ads {m} MiB' for s, m in summary['pack_mib'].items())}. "
        f"Distillation ads: {', '.join(f'{s:,} ads: {n}' for s, n in summary['distillation_samples'].items())}.", "",
        "Peak RSS: `ru_maxrss` of each command's process (and the processes it started), from `os.wait4`.",
        f"Machine: {summary['machine']['cpu']}, {summary['machine']['cores']} cores, torch "
        f"{summary['machine']['torch']}.", "",
        "Each step, exactly:", "",
        *[f"- `{entry['command']}`" for entry in summary["steps"].values() if "command" in entry], "",
        f"Made by `{summary['command']}`.", ""])


def plot(summary: dict, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = ("data pack", "teacher train", "compress")
    figure, axes = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(summary["sizes"])
    for i, size in enumerate(summary["sizes"]):
        values = [summary["steps"][f"{step} {size}"]["peak_rss_mib"] for step in steps]
        axes.bar([x + i * width for x in range(len(steps))], values, width, label=f"{size:,} ads")
    axes.set_xticks([x + width * (len(summary["sizes"]) - 1) / 2 for x in range(len(steps))], steps)
    axes.set_ylabel("peak RSS (MiB)")
    axes.set_title(f"peak memory per command; goal: largest / smallest <= {GOAL}x")
    axes.legend()
    figure.tight_layout()
    staging = out / ".scale.png.partial"
    figure.savefig(staging, dpi=120, format="png")
    os.replace(staging, out / "scale.png")  # readers see the old plot or the new one
    plt.close(figure)


def main() -> None:
    from adaudit.core.files import write_results

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="6000,60000", help="data-set sizes (ads), comma-separated")
    parser.add_argument("--work", type=Path, default=Path("runs/scale"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    sizes = sorted(int(size) for size in args.sizes.split(","))
    args.work.mkdir(parents=True, exist_ok=True)
    steps = run_steps(sizes, args.work, args.preset, args.epochs)
    summary = summarise(steps, sizes, args.work, "python -m benchmarks.scale " + " ".join(sys.argv[1:]))
    write_results(args.out, "scale", summary, markdown(summary))
    plot(summary, args.out)
    print(markdown(summary))


if __name__ == "__main__":
    main()
