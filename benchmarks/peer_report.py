"""The peers benchmark's results: Pareto front, goals, the Markdown table and the plot."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

EQUAL_LATENCY = 0.05  # peers within 5% of the student's latency (or faster) count as "at equal latency"
FLOOR_GOAL = 3.0  # student latency within 3x of the FLOPs floor
WALL_GOAL_MINUTES = 60.0
ONNX_KEY = "student_onnx_runtime"  # the AntGMM student's weights on ONNX Runtime


def pareto_front(entries: list[dict]) -> set[str]:
    """Keys of the entries no other entry beats on both batch-1 latency (lower) and verdict accuracy (higher)."""
    front = set()
    for entry in entries:
        dominated = any(
            other["latency_ms_p50"] <= entry["latency_ms_p50"] and other["accuracy"] >= entry["accuracy"]
            and (other["latency_ms_p50"] < entry["latency_ms_p50"] or other["accuracy"] > entry["accuracy"])
            for other in entries if other is not entry)
        if not dominated:
            front.add(entry["key"])
    return front


def goals(entries: list[dict], student_key: str, wall_seconds: float) -> dict:
    by_key = {entry["key"]: entry for entry in entries}
    student = by_key[student_key]
    comparisons = []
    for peer in entries:
        if peer["group"] != "peer":
            continue
        comparable = peer["latency_ms_p50"] <= student["latency_ms_p50"] * (1 + EQUAL_LATENCY)
        comparisons.append({
            "peer": peer["key"], "latency_ratio": peer["latency_ms_p50"] / student["latency_ms_p50"],
            "at_equal_latency": comparable,
            "student_better_accuracy": student["accuracy"] > peer["accuracy"],
            "student_better_violation_f1": student["violation_macro_f1"] > peer["violation_macro_f1"]})
    at_equal = [c for c in comparisons if c["at_equal_latency"]]
    front = pareto_front(entries)
    return {
        # the student counts as on the front when it is, in eager PyTorch or on ONNX Runtime (the same weights)
        "student_on_pareto_front": student_key in front or ONNX_KEY in front,
        "beats_every_peer_at_equal_latency": all(
            c["student_better_accuracy"] and c["student_better_violation_f1"] for c in at_equal),
        "peers_at_equal_latency": [c["peer"] for c in at_equal],
        "comparisons": comparisons,
        "student_latency_over_floor": student["latency_over_floor"],
        # the same student on ONNX Runtime (same weights and FLOPs, another engine), when measured
        "onnx_runtime_latency_over_floor": by_key[ONNX_KEY]["latency_over_floor"] if ONNX_KEY in by_key else None,
        "within_floor_goal": min(e["latency_over_floor"] for e in (student, by_key.get(ONNX_KEY)) if e) <= FLOOR_GOAL,
        "wall_minutes": wall_seconds / 60,
        "within_wall_goal": wall_seconds / 60 <= WALL_GOAL_MINUTES,
    }


def table(entries: list[dict], front: set[str]) -> list[str]:
    lines = ["| method | params | FLOPs/ad | p50 ms (b=1) | p95 ms | ads/s (b=32) | x floor | verdict acc % "
             "| violation F1 % | agreement % | wall min | reloadable | Pareto |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in entries:
        lines.append(
            f"| {e['label']} | {e['params'] / 1e6:.2f}M | {e['flops_per_ad'] / 1e6:.1f}M | {e['latency_ms_p50']:.2f} "
            f"| {e['latency_ms_p95']:.2f} | {e['throughput_per_s']:.0f} | {e['latency_over_floor']:.1f} "
            f"| {100 * e['accuracy']:.2f} | {100 * e['violation_macro_f1']:.2f} | {100 * e['agreement']:.2f} "
            f"| {e['wall_seconds'] / 60:.1f} | {'yes' if e['reloadable'] else 'no'} "
            f"| {'front' if e['key'] in front else ''} |")
    return lines


def markdown(summary: dict) -> str:
    entries, limit, achieved = summary["entries"], summary["physical_limit"], summary["goals"]
    front = set(summary["pareto_front"])
    student = next(e for e in entries if e["key"] == summary["student_key"])
    lines = [f"# Peers: the same teacher, data, budget and latency target", "",
             f"Command: `{summary['command']}`", "",
             f"Teacher `{summary['teacher']}`, {summary['distillation_samples']} distillation ads, "
             f"{summary['epochs']} distillation epochs per method (the default recipe's total), "
             f"{summary['test_samples']} test ads; target batch-1 p50 latency {summary['target_ms']:.2f} ms "
             "(the AntGMM student's, measured at the start of this run).", "",
             f"Timing: {summary['timing']}. Load average (1 min, {summary['machine']['cores']} cores) "
             f"{summary['load_average_start']:.1f} at the start, {summary['load_average_end']:.1f} at the end.", ""]
    lines += table(entries, front)
    lines += ["", "Notes per method:", ""]
    lines += [f"- **{e['label']}**: " + "; ".join(e["notes"]) for e in entries if e["notes"]]
    lines += [f"- **{p['label']}**: pending ({p['reason']})" for p in summary["pending"]]
    lines += ["", "## Physical limit", "",
              f"Peak float32 matmul ({limit['size']}x{limit['size']}): {limit['gflops_single_thread']:.0f} GFLOP/s on "
              f"one thread, {limit['gflops_all_threads']:.0f} GFLOP/s on {limit['threads']} threads. The student's "
              f"{student['flops_per_ad'] / 1e6:.1f}M FLOPs per ad give a floor of {student['floor_ms']:.3f} ms; it "
              f"measures {student['latency_ms_p50']:.2f} ms at batch 1, **{student['latency_over_floor']:.1f}x** the floor.",
              "", *floor_detail(summary, student), "",
              "## Goals", "",
              f"- student on the Pareto front (verdict accuracy vs batch-1 latency; in eager PyTorch or on ONNX Runtime): "
              f"**{'yes' if achieved['student_on_pareto_front'] else 'no'}**",
              f"- beats every peer at equal latency (within {100 * EQUAL_LATENCY:.0f}%, or faster) on verdict accuracy "
              f"and violation macro-F1: **{'yes' if achieved['beats_every_peer_at_equal_latency'] else 'no'}** "
              f"(peers at equal latency: {', '.join(achieved['peers_at_equal_latency']) or 'none'})",
              f"- student latency within {FLOOR_GOAL:.0f}x of the FLOPs floor: "
              f"**{'yes' if achieved['within_floor_goal'] else 'no'}** ({achieved['student_latency_over_floor']:.1f}x "
              "in eager PyTorch" + (f", {achieved['onnx_runtime_latency_over_floor']:.1f}x on ONNX Runtime)"
                                    if achieved.get("onnx_runtime_latency_over_floor") else ")"),
              f"- whole benchmark within {WALL_GOAL_MINUTES:.0f} minutes: "
              f"**{'yes' if achieved['within_wall_goal'] else 'no'}** ({achieved['wall_minutes']:.1f} min: "
              f"{summary['this_invocation_seconds'] / 60:.1f} min this invocation, "
              f"{achieved['includes_resumed_methods_seconds'] / 60:.1f} min of methods an earlier invocation built, "
              f"{achieved['includes_reused_student_seconds'] / 60:.1f} min compressing the reused AntGMM student)", "",
              f"Machine: {summary['machine']}", ""]
    return "\n".join(lines)


def floor_detail(summary: dict, student: dict) -> list[str]:
    """Where the distance to the floor goes: batch-1 calls are bound by per-operator overhead,
    which batching spreads and compilation cuts."""
    lines = [f"- per ad at batch 32 ({student['throughput_per_s']:.0f} ads/s): {1000 / student['throughput_per_s']:.3f} ms, "
             f"**{student['batch_32_per_ad_over_floor']:.1f}x** the floor: a batch spreads each operator's fixed "
             "cost over 32 ads and fills the matrices"]
    engine = next((e for e in summary["entries"] if e["key"] == ONNX_KEY), None)
    if engine:
        lines.append(f"- batch 1 on ONNX Runtime (the same weights exported to ONNX): {engine['latency_ms_p50']:.2f} ms, "
                     f"**{engine['latency_over_floor']:.1f}x** the floor")
    compiled = summary.get("compiled_student")
    if compiled and "latency_over_floor" in compiled:
        lines.append(f"- batch 1 under `torch.compile` (inductor, dynamic shapes; {compiled['compile_seconds']:.0f} s "
                     f"to compile): {compiled['latency_ms_p50']:.2f} ms, **{compiled['latency_over_floor']:.1f}x** the "
                     "floor: the rest of the batch-1 gap is per-operator and per-kernel overhead on matrices of a "
                     "few dozen rows, which no FLOP count sees")
    return lines


def plot(entries: list[dict], front: set[str], target_ms: float, path: Path) -> None:
    figure, axes = plt.subplots(1, 2, figsize=(13, 5))
    colours = {"ours": "tab:blue", "peer": "tab:orange", "reference": "tab:grey"}
    markers = "os^vDP*Xph<>"
    for axis, metric, title in ((axes[0], "accuracy", "verdict accuracy"),
                                (axes[1], "violation_macro_f1", "violation macro-F1")):
        for number, e in enumerate(entries):
            axis.scatter(e["latency_ms_p50"], 100 * e[metric], color=colours[e["group"]], s=60,
                         marker=markers[number % len(markers)], label=e["label"] + (" (front)" if e["key"] in front else ""),
                         edgecolor="black" if e["key"] in front else "none", zorder=3)
        if metric == "accuracy":
            on_front = sorted((e for e in entries if e["key"] in front), key=lambda e: e["latency_ms_p50"])
            axis.step([e["latency_ms_p50"] for e in on_front], [100 * e[metric] for e in on_front], where="post",
                      color="black", linewidth=0.8, zorder=2)
        axis.axvline(target_ms, color="tab:red", linestyle="--", linewidth=0.8)
        axis.set_xscale("log")
        axis.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        axis.set_xlabel("batch-1 p50 latency (ms, log scale); red dashed: the target")
        axis.set_ylabel(f"{title} (%)")
        axis.set_title(f"{title} vs latency (blue: adaudit, orange: peers)")
        axis.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0.12, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)
