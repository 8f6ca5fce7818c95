"""Evidence benchmark (issue 28, item 5): does the top span find the trigger phrase, and what does explain cost?

    .venv/bin/python -m benchmarks.evidence --model STUDENT --data DATA [--ads 200] [--latency-ads 30] \
        [--rounds 3] [--threads 1] [--max-chars N] [--window N] [--grid N] [--compare-windows 2 3 4] \
        [--note TEXT] [--out benchmarks/results]

Through the gateway, in process (FastAPI's TestClient, the embedded backend on MODEL, a SQLite log in a
temporary folder; no Triton, no network), with the gateway's default explain settings:

1. Evidence: the test split's ads whose violation is carried by the copy (the data generator's six text
   categories, with the trigger phrase found again in the copy from the generator's phrase lists,
   data/generator.py TRIGGERS: the JSONL does not record where it put it; a gambling ad whose gambling is
   in the picture has clean copy and is left out). Each is audited with explain=true; counted: the share
   whose top span overlaps the trigger phrase's characters (goal: at least 80%), also among the ads whose
   explained class is their true class, and per class; how tight the top span is (its length, the share of its
   characters inside the phrase, the share narrowed to a phrase shorter than its clause), how many rows each
   explanation scored and how often the picture's grid was searched.
   The generator sets every trigger phrase off with punctuation, so the clause level alone finds it; the same
   ads are audited again with the copy's punctuation, symbols and spaces removed (one clause: the word level
   alone must find the phrase), which says what the method does on copy that does not set its phrases off.
2. Overhead: `--latency-ads` ads, each audited alternately with explain off and on for `--rounds` rounds
   after a warm-up; the p50 of each (wall time of the whole request in the client) and the added p50
   (goal: under 10 ms on this CPU), also as the p50 of each ad's on minus its off request. Batch 1, one
   request at a time. The machine's load average is recorded at the start and after these rounds; `--note`
   says in the results what else ran on the machine.
3. The evidence figures (1.) again for each explain_window of `--compare-windows`: what a longer phrase buys
   and costs in rows.

Writes OUT/evidence.json and OUT/evidence.md (with the exact command), each atomically.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from fastapi.testclient import TestClient

from adaudit.core.files import write_results
from adaudit.data.generator import TEXT_VIOLATIONS, TRIGGERS
from adaudit.service.app import create_app
from adaudit.service.evidence import CARRYING_DROP, clauses
from adaudit.service.settings import GatewaySettings

GOAL_OVERLAP, GOAL_ADDED_MS = 0.80, 10.0


def trigger_span(text: str, violation: str) -> tuple[int, int] | None:
    """Where the generator's trigger phrase of `violation` sits in `text` (the longest one found), or None."""
    if violation not in TEXT_VIOLATIONS:
        return None
    phrases = [p for split in TRIGGERS[violation].values() for p in split if p in text]
    if not phrases:
        return None
    phrase = max(phrases, key=len)
    start = text.index(phrase)
    return start, start + len(phrase)


def load_ads(data: Path) -> list[dict]:
    rows = [json.loads(line) for line in (data / "test.jsonl").read_text(encoding="utf-8").splitlines() if line]
    for row in rows:
        row["image_base64"] = base64.b64encode((data / row["image"]).read_bytes()).decode()
    return rows


def audit(client: TestClient, row: dict, explain: bool) -> tuple[dict, float]:
    started = time.perf_counter()
    response = client.post("/v1/audits", json={"image_base64": row["image_base64"], "text": row["text"],
                                               "explain": explain})
    took = time.perf_counter() - started
    if response.status_code != 200:
        raise SystemExit(f"the gateway answered {response.status_code}: {response.text}")
    return response.json(), took


def copy_violation_ads(rows: list[dict], limit: int) -> list[tuple[dict, tuple[int, int]]]:
    """The ads whose copy carries their violation, with where the trigger phrase sits (at most `limit`)."""
    return [(row, span) for row in rows if (span := trigger_span(row["text"], row["labels"]["violation"]))][:limit]


def joined(ads: list[tuple[dict, tuple[int, int]]]) -> list[tuple[dict, tuple[int, int]]]:
    """The same ads with the copy's punctuation, symbols and spaces removed (the breaks the evidence's clauses
    end at), so the whole copy is one clause; those whose trigger phrase is still found in it."""
    found = []
    for row, _ in ads:
        text = "".join(row["text"][start:end] for words in clauses(row["text"], len(row["text"]))
                       for start, end in words)
        if span := trigger_span(text, row["labels"]["violation"]):
            found.append(({**row, "text": text}, span))
    return found


def top_span_figures(evidence: dict, text: str, trigger: tuple[int, int], max_chars: int) -> dict:
    """Of one answer: whether its top span overlaps the trigger phrase, its length, the share of its characters
    inside the phrase, and whether it is narrower than the clause it lies in (the word level refined it)."""
    spans = evidence["copy"]["spans"]
    if not spans:
        return {"hit": False, "length": None, "inside": None, "narrowed": False}
    start, end = spans[0]["start"], spans[0]["end"]
    clause = next(((words[0][0], words[-1][1]) for words in clauses(text, max_chars)
                   if words[0][0] <= start and end <= words[-1][1]), (start, end))
    inside = max(0, min(end, trigger[1]) - max(start, trigger[0]))
    return {"hit": start < trigger[1] and trigger[0] < end, "length": end - start, "inside": inside / (end - start),
            "narrowed": end - start < clause[1] - clause[0]}


def share(count: int, total: int) -> float | None:
    return count / total if total else None


def percentile(values: list[int], q: int) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def evidence_figures(client: TestClient, ads: list[tuple[dict, tuple[int, int]]], max_chars: int) -> dict:
    """The top-span overlap share over `ads` (copy-violation ads and their trigger phrases), how tight the top
    spans are, the rows scored per explanation and how often the picture's grid was searched."""
    per_class: dict[str, list[int]] = {}
    found, same, variants, grids = [], [], [], 0
    for row, trigger in ads:
        evidence = audit(client, row, True)[0]["evidence"]
        figures = top_span_figures(evidence, row["text"], trigger, max_chars)
        found.append(figures)
        if evidence["violation"] == row["labels"]["violation"]:
            same.append(figures["hit"])
        variants.append(evidence["variants"])
        grids += bool(evidence["picture"]["scores"])
        counts = per_class.setdefault(row["labels"]["violation"], [0, 0])
        counts[0], counts[1] = counts[0] + figures["hit"], counts[1] + 1
    hits = sum(figures["hit"] for figures in found)
    spanned = [figures for figures in found if figures["length"] is not None]
    return {"ads": len(ads), "top_span_overlaps": hits, "share": share(hits, len(ads)),
            "explained_true_class": len(same), "share_when_true_class": share(sum(same), len(same)),
            "top_span_mean_chars": round(float(np.mean([f["length"] for f in spanned])), 2) if spanned else None,
            "top_span_inside_phrase": round(float(np.mean([f["inside"] for f in spanned])), 4) if spanned else None,
            "top_span_narrowed": share(sum(f["narrowed"] for f in found), len(ads)),
            "variants_p50": percentile(variants, 50), "variants_p90": percentile(variants, 90),
            "grid_searched": share(grids, len(ads)),
            "per_class": {name: {"ads": n, "share": h / n} for name, (h, n) in sorted(per_class.items())}}


def latency_figures(client: TestClient, rows: list[dict], ads: int, rounds: int) -> dict:
    """p50 of whole requests with explain off and on (alternating, after one warm-up pass of each), and the p50
    of each ad's on minus its off request just before (a figure that drifts less with the machine's load)."""
    sample = rows[:ads]
    for row in sample[:5]:
        audit(client, row, False), audit(client, row, True)
    off, on, inside, variants = [], [], [], []
    for _ in range(rounds):
        for row in sample:
            off.append(audit(client, row, False)[1])
            answer, took = audit(client, row, True)
            on.append(took)
            inside.append(answer["evidence"]["took_ms"] / 1000)
            variants.append(answer["evidence"]["variants"])
    p50 = {name: float(np.percentile(values, 50)) * 1000 for name, values in
           (("off", off), ("on", on), ("evidence_inside", inside))}
    paired = float(np.percentile(np.subtract(on, off), 50)) * 1000  # each pair back to back: less load drift
    return {"requests_each": len(off), "p50_off_ms": round(p50["off"], 3), "p50_on_ms": round(p50["on"], 3),
            "added_p50_ms": round(p50["on"] - p50["off"], 3), "added_paired_p50_ms": round(paired, 3),
            "evidence_took_p50_ms": round(p50["evidence_inside"], 3),
            "evidence_took_p90_ms": round(float(np.percentile(inside, 90)) * 1000, 3),
            "variants_p50": percentile(variants, 50), "variants_p90": percentile(variants, 90)}


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def evidence_lines(ev: dict, what: str) -> list[str]:
    """The markdown lines of one `evidence_figures` result."""
    return [f"- {what}: {ev['ads']} ads; top span overlaps the trigger phrase: **{percent(ev['share'])}**; among the "
            f"{ev['explained_true_class']} whose explained class is the true class: "
            f"{percent(ev['share_when_true_class'])}. Top span: {ev['top_span_mean_chars']} characters on average, "
            f"{percent(ev['top_span_inside_phrase'])} of them inside the phrase; narrowed to a phrase shorter than "
            f"its clause: {percent(ev['top_span_narrowed'])}. Rows scored per explanation: p50 {ev['variants_p50']}, "
            f"p90 {ev['variants_p90']}; the picture's grid searched for {percent(ev['grid_searched'])}."]


def markdown(summary: dict) -> str:
    ev, lat, machine = summary["evidence"], summary["latency"], summary["machine"]
    lines = ["# Evidence from the model: occlusion spans and the cost of explain", "",
             f"Command: `{summary['command']}`", "",
             f"Model {summary['model']}, data {summary['data']} (test split), the embedded backend in process "
             f"(FastAPI TestClient), torch threads {summary['threads']}, explain settings {summary['settings']}, "
             f"CARRYING_DROP {summary['carrying_drop']}.", "",
             f"Machine: {machine['cpus']} CPUs, 1-minute load average {machine['load_at_start']} at the start and "
             f"{machine['load_at_end']} after the latency rounds"
             + (f"; {machine['note']}" if machine["note"] else "") + ".", "",
             *evidence_lines(ev, "Copy-violation ads, copy as generated"),
             f"  Goal >= {100 * GOAL_OVERLAP:.0f}%: {'met' if summary['goals']['overlap_met'] else 'not met'}.",
             *evidence_lines(summary["evidence_joined"], "The same ads with the copy's punctuation, symbols and "
                             "spaces removed (one clause: the word level alone)"),
             f"- Batch-1 p50, whole request: explain off {lat['p50_off_ms']} ms, on {lat['p50_on_ms']} ms, "
             f"added **{lat['added_p50_ms']} ms** (goal < {GOAL_ADDED_MS:.0f} ms: "
             f"{'met' if summary['goals']['added_met'] else 'not met'}); p50 of the paired differences (each "
             f"ad's on minus its off request just before) {lat['added_paired_p50_ms']} ms; the evidence step "
             f"itself {lat['evidence_took_p50_ms']} ms p50, {lat['evidence_took_p90_ms']} ms p90; rows scored p50 "
             f"{lat['variants_p50']}, p90 {lat['variants_p90']}; {lat['requests_each']} requests each.", "",
             "| class | ads | top span overlaps | without punctuation: ads | overlaps |",
             "| --- | --- | --- | --- | --- |"]
    others = summary["evidence_joined"]["per_class"]
    for name, row in ev["per_class"].items():
        other = others.get(name, {"ads": 0, "share": None})
        lines.append(f"| {name} | {row['ads']} | {percent(row['share'])} | {other['ads']} | "
                     f"{percent(other['share'])} |")
    return "\n".join(lines + window_lines(summary["windows"]) + [""])


def gateway_settings(scratch: Path, args: argparse.Namespace, window: int | None) -> GatewaySettings:
    """The gateway's settings: the embedded backend on MODEL, a SQLite log in `scratch`, the explain_* settings
    given (unset: the gateway's defaults)."""
    given = (("max_chars", args.max_chars), ("window", window), ("grid", args.grid))
    return GatewaySettings(backend="embedded", model_dir=scratch / "models", primary_model="student",
                           shadow_fraction=0.0, database_url=f"sqlite:///{scratch}/log-{window}.db",
                           **{f"explain_{name}": value for name, value in given if value is not None})


def window_figures(figures: dict, figures_joined: dict) -> dict:
    """What the window comparison shows of one explain_window: the share found and the rows it cost."""
    return {"share": figures["share"], "variants_p50": figures["variants_p50"],
            "variants_p90": figures["variants_p90"], "joined_share": figures_joined["share"],
            "joined_top_span_mean_chars": figures_joined["top_span_mean_chars"],
            "joined_top_span_inside_phrase": figures_joined["top_span_inside_phrase"],
            "joined_variants_p50": figures_joined["variants_p50"],
            "joined_variants_p90": figures_joined["variants_p90"]}


def compare_windows(scratch: Path, args: argparse.Namespace, ads: list, measured: dict) -> dict:
    """`window_figures` for each of `--compare-windows` (the evidence figures only, no latency); `measured`: those
    already measured, by window."""
    compared = {}
    for window in args.compare_windows:
        if window not in measured:
            settings = gateway_settings(scratch, args, window)
            with TestClient(create_app(settings)) as client:
                measured[window] = window_figures(evidence_figures(client, ads, settings.explain_max_chars),
                                                  evidence_figures(client, joined(ads), settings.explain_max_chars))
        compared[str(window)] = measured[window]
    return compared


def window_lines(compared: dict) -> list[str]:
    """The markdown table of the window comparison."""
    lines = ["", "explain_window compared (the evidence figures only; rows scored per explanation, p50 / p90):", "",
             "| explain_window | overlaps | rows | without punctuation: overlaps | top span characters | inside "
             "the phrase | rows |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for window, row in compared.items():
        lines.append(f"| {window} | {percent(row['share'])} | {row['variants_p50']} / {row['variants_p90']} | "
                     f"{percent(row['joined_share'])} | {row['joined_top_span_mean_chars']} | "
                     f"{percent(row['joined_top_span_inside_phrase'])} | {row['joined_variants_p50']} / "
                     f"{row['joined_variants_p90']} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="the model folder to explain (student)")
    parser.add_argument("--data", type=Path, required=True, help="a data folder with test.jsonl and images/")
    parser.add_argument("--ads", type=int, default=1_000_000, help="at most this many copy-violation ads")
    parser.add_argument("--latency-ads", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the embedded backend)")
    parser.add_argument("--compare-windows", type=int, nargs="*", default=[2, 3, 4],
                        help="explain_window values whose evidence figures are measured too")
    parser.add_argument("--note", default="", help="what else ran on the machine (written into the results)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    for name in ("max-chars", "window", "grid"):  # the gateway's explain_* settings; unset: its defaults
        parser.add_argument(f"--{name}", type=int, default=None, help=f"the gateway's explain_{name.replace('-', '_')}")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started, load_at_start = time.perf_counter(), round(os.getloadavg()[0], 2)
    rows = load_ads(args.data)
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        (scratch / "models").mkdir()
        (scratch / "models" / "student").symlink_to(args.model.resolve())
        settings = gateway_settings(scratch, args, args.window)
        ads = copy_violation_ads(rows, args.ads)
        with TestClient(create_app(settings)) as client:
            figures = evidence_figures(client, ads, settings.explain_max_chars)
            figures_joined = evidence_figures(client, joined(ads), settings.explain_max_chars)
            latency = latency_figures(client, rows, args.latency_ads, args.rounds)
        load_at_end = round(os.getloadavg()[0], 2)
        windows = compare_windows(scratch, args, ads,
                                  {settings.explain_window: window_figures(figures, figures_joined)})
    summary = {"command": shlex.join(["python", "-m", "benchmarks.evidence", *sys.argv[1:]]),
               "model": str(args.model), "data": str(args.data), "threads": args.threads,
               "settings": {name: getattr(settings, name) for name in
                            ("explain_max_chars", "explain_window", "explain_grid")},
               "carrying_drop": CARRYING_DROP,
               "machine": {"cpus": os.cpu_count(), "load_at_start": load_at_start, "load_at_end": load_at_end,
                           "note": args.note},
               "evidence": figures, "evidence_joined": figures_joined, "latency": latency, "windows": windows,
               "goals": {"overlap_met": figures["share"] is not None and figures["share"] >= GOAL_OVERLAP,
                         "added_met": latency["added_p50_ms"] < GOAL_ADDED_MS},
               "wall_seconds": round(time.perf_counter() - started, 1)}
    write_results(args.out, "evidence", summary, markdown(summary))
    print(markdown(summary))


if __name__ == "__main__":
    main()
