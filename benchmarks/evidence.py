"""Evidence benchmark (issue 28, item 5): does the top span find the trigger phrase, and what does explain cost?

    .venv/bin/python -m benchmarks.evidence --model STUDENT --data DATA [--ads 200] [--latency-ads 30] \
        [--rounds 3] [--threads 1] [--max-chars N] [--window N] [--grid N] [--out benchmarks/results]

Through the gateway, in process (FastAPI's TestClient, the embedded backend on MODEL, a SQLite log in a
temporary folder; no Triton, no network), with the gateway's default explain settings:

1. Evidence: the test split's ads whose violation is carried by the copy (the data generator's six text
   categories, with the trigger phrase found again in the copy from the generator's phrase lists,
   data/generator.py TRIGGERS: the JSONL does not record where it put it; a gambling ad whose gambling is
   in the picture has clean copy and is left out). Each is audited with explain=true; counted: the share
   whose top span overlaps the trigger phrase's characters (goal: at least 80%), also among the ads whose
   explained class is their true class, and per class.
2. Overhead: `--latency-ads` ads, each audited alternately with explain off and on for `--rounds` rounds
   after a warm-up; the p50 of each (wall time of the whole request in the client) and the added p50
   (goal: under 10 ms on this CPU). Batch 1, one request at a time.

Writes OUT/evidence.json and OUT/evidence.md (with the exact command), each atomically.
"""

from __future__ import annotations

import argparse
import base64
import json
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


def evidence_figures(client: TestClient, rows: list[dict], limit: int) -> dict:
    """The top-span overlap share over the copy-violation ads (at most `limit`)."""
    ads = [(row, span) for row in rows if (span := trigger_span(row["text"], row["labels"]["violation"]))]
    ads = ads[:limit]
    per_class: dict[str, list[int]] = {}
    hits = same = same_hits = 0
    for row, (start, end) in ads:
        evidence = audit(client, row, True)[0]["evidence"]
        spans = evidence["copy"]["spans"]
        hit = bool(spans) and spans[0]["start"] < end and start < spans[0]["end"]
        hits += hit
        if evidence["violation"] == row["labels"]["violation"]:
            same += 1
            same_hits += hit
        counts = per_class.setdefault(row["labels"]["violation"], [0, 0])
        counts[0], counts[1] = counts[0] + hit, counts[1] + 1
    return {"ads": len(ads), "top_span_overlaps": hits, "share": hits / len(ads) if ads else None,
            "explained_true_class": same, "share_when_true_class": same_hits / same if same else None,
            "per_class": {name: {"ads": n, "share": h / n} for name, (h, n) in sorted(per_class.items())}}


def latency_figures(client: TestClient, rows: list[dict], ads: int, rounds: int) -> dict:
    """p50 of whole requests with explain off and on (alternating, after one warm-up pass of each)."""
    sample = rows[:ads]
    for row in sample[:5]:
        audit(client, row, False), audit(client, row, True)
    off, on, inside = [], [], []
    for _ in range(rounds):
        for row in sample:
            off.append(audit(client, row, False)[1])
            answer, took = audit(client, row, True)
            on.append(took)
            inside.append(answer["evidence"]["took_ms"] / 1000)
    p50 = {name: float(np.percentile(values, 50)) * 1000 for name, values in
           (("off", off), ("on", on), ("evidence_inside", inside))}
    return {"requests_each": len(off), "p50_off_ms": round(p50["off"], 3), "p50_on_ms": round(p50["on"], 3),
            "added_p50_ms": round(p50["on"] - p50["off"], 3),
            "evidence_took_p50_ms": round(p50["evidence_inside"], 3)}


def markdown(summary: dict) -> str:
    ev, lat = summary["evidence"], summary["latency"]
    share = "n/a" if ev["share"] is None else f"{100 * ev['share']:.1f}%"
    true_share = "n/a" if ev["share_when_true_class"] is None else f"{100 * ev['share_when_true_class']:.1f}%"
    lines = ["# Evidence from the model: occlusion spans and the cost of explain", "",
             f"Command: `{summary['command']}`", "",
             f"Model {summary['model']}, data {summary['data']} (test split), the embedded backend in process "
             f"(FastAPI TestClient), torch threads {summary['threads']}, explain settings {summary['settings']}.", "",
             f"- Copy-violation ads: {ev['ads']}; top span overlaps the trigger phrase: **{share}** "
             f"(goal >= {100 * GOAL_OVERLAP:.0f}%: {'met' if summary['goals']['overlap_met'] else 'not met'}); "
             f"among the {ev['explained_true_class']} whose explained class is the true class: "
             f"{true_share}.",
             f"- Batch-1 p50, whole request: explain off {lat['p50_off_ms']} ms, on {lat['p50_on_ms']} ms, "
             f"added **{lat['added_p50_ms']} ms** (goal < {GOAL_ADDED_MS:.0f} ms: "
             f"{'met' if summary['goals']['added_met'] else 'not met'}); the evidence step itself "
             f"{lat['evidence_took_p50_ms']} ms p50; {lat['requests_each']} requests each.", "",
             "| class | ads | top span overlaps |", "| --- | --- | --- |"]
    lines += [f"| {name} | {row['ads']} | {100 * row['share']:.1f}% |" for name, row in ev["per_class"].items()]
    return "\n".join(lines + [""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="the model folder to explain (student)")
    parser.add_argument("--data", type=Path, required=True, help="a data folder with test.jsonl and images/")
    parser.add_argument("--ads", type=int, default=1_000_000, help="at most this many copy-violation ads")
    parser.add_argument("--latency-ads", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the embedded backend)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    for name in ("max-chars", "window", "grid"):  # the gateway's explain_* settings; unset: its defaults
        parser.add_argument(f"--{name}", type=int, default=None, help=f"the gateway's explain_{name.replace('-', '_')}")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    rows = load_ads(args.data)
    with tempfile.TemporaryDirectory() as scratch:
        (Path(scratch) / "models").mkdir()
        (Path(scratch) / "models" / "student").symlink_to(args.model.resolve())
        settings = GatewaySettings(backend="embedded", model_dir=Path(scratch) / "models", primary_model="student",
                                   shadow_fraction=0.0, database_url=f"sqlite:///{scratch}/log.db",
                                   **{f"explain_{name}": value for name, value in (("max_chars", args.max_chars),
                                      ("window", args.window), ("grid", args.grid)) if value is not None})
        with TestClient(create_app(settings)) as client:
            figures = evidence_figures(client, rows, args.ads)
            latency = latency_figures(client, rows, args.latency_ads, args.rounds)
    summary = {"command": shlex.join(["python", "-m", "benchmarks.evidence", *sys.argv[1:]]),
               "model": str(args.model), "data": str(args.data), "threads": args.threads,
               "settings": {name: getattr(settings, name) for name in
                            ("explain_max_chars", "explain_window", "explain_grid")},
               "evidence": figures, "latency": latency,
               "goals": {"overlap_met": figures["share"] is not None and figures["share"] >= GOAL_OVERLAP,
                         "added_met": latency["added_p50_ms"] < GOAL_ADDED_MS},
               "wall_seconds": round(time.perf_counter() - started, 1)}
    write_results(args.out, "evidence", summary, markdown(summary))
    print(markdown(summary))


if __name__ == "__main__":
    main()
