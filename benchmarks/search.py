"""The policy-search benchmark (issue 5): searched vs uniform ratios, and the search's two ablations,
all at one latency budget and one distillation budget, in one run.

    .venv/bin/python -m benchmarks.search [--run runs/bench] [--target-speedup 13.5] [--final-epochs 4]

One latency model is calibrated and one budget (the teacher's batch-1 latency / target) is set for
every variant; each variant's policy is then distilled by the same stages of recipes/auto.yaml
(with `--final-epochs` final epochs for all). At the end every student is timed in alternating
rounds and evaluated on the test split. Steps whose output exists are skipped (resumable).
Writes RUN/search/<variant>/ and benchmarks/results/search.{json,md} plus the search plots.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from adaudit.compression.pipeline import compress
from adaudit.compression.recipe import load_recipe
from adaudit.compression.search import (LatencyModel, calibration_configs, plot_search, policy_recipe,
                                        search_policy)
from adaudit.data.encoding import encode_split, tokenised_for
from adaudit.training.evaluation import evaluate, predict_logits
from adaudit.core.files import atomic_write_text
from adaudit.training.measure import latency, machine, paired_latency
from adaudit.models.modeling import AuditModel
from adaudit.models.preprocessing import AuditProcessor

VARIANTS = {  # name -> search settings changed from recipes/auto.yaml
    "searched": {},
    "uniform": {"strategy": "uniform"},
    "searched_without_generalization_term": {"generalization_weight": 0.0},
    "searched_without_projector_tuning": {"projector_steps": 0},
    # the searched settings, under the latency the uniform ratio reached (its predicted latency) instead of
    # the budget: the uniform ratio moves in whole blocks and heads and lands below the budget
    "searched_at_uniform_latency": {},
}


def log(message: str) -> None:
    print(time.strftime("%H:%M:%S"), message, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/bench"))
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--target-speedup", type=float, default=13.5)
    parser.add_argument("--final-epochs", type=int, default=4)
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="comma-separated variants to run (the rest are left out of the report)")
    parser.add_argument("--gap-seeds", type=int, default=0,
                        help="also run the search step alone, with and without the generalization term, on this many "
                             "more seeds (other search samples and populations) and report the loss gaps")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for every step (1: steadier timings)")
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    chosen = arguments.variants.split(",")
    unknown = sorted(set(chosen) - set(VARIANTS))
    if unknown or "searched" not in chosen:
        parser.error(f"--variants: unknown {', '.join(unknown)}" if unknown else "--variants must include searched")
    variants = {name: changes for name, changes in VARIANTS.items() if name in chosen}
    started = time.perf_counter()
    run, folder = arguments.run, arguments.run / "search"
    folder.mkdir(parents=True, exist_ok=True)

    teacher = AuditModel.from_pretrained(run / "teacher")
    processor = AuditProcessor.from_folder(teacher.config, run / "teacher")
    base = load_recipe("auto").model_copy(update={"final_epochs": arguments.final_epochs})
    train = encode_split(run / "data", "train", processor, teacher.config.tasks)
    test = encode_split(run / "data", "test", processor, teacher.config.tasks)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(base.seed))

    setup_file = folder / "budget.json"
    if setup_file.exists():
        setup = json.loads(setup_file.read_text())
        latency_model = LatencyModel(**setup["latency_model"])
    else:
        teacher_ms = latency(teacher, test, repeats=60, throughput_repeats=0)["latency_ms_p50"]
        log(f"teacher batch-1 latency {teacher_ms:.2f} ms; calibrating the latency model")
        search_ads = train.subset(order[:base.search.samples])
        latency_model = LatencyModel.calibrate(calibration_configs(teacher, base, 32, base.seed), search_ads, log)
        setup = {"teacher_latency_ms": teacher_ms, "budget_ms": teacher_ms / arguments.target_speedup,
                 "target_speedup": arguments.target_speedup, "latency_model": latency_model.__dict__}
        atomic_write_text(setup_file, json.dumps(setup, indent=2) + "\n")
    log(f"budget {setup['budget_ms']:.2f} ms; latency model held-out r2 {setup['latency_model']['fit']['held_out']['r2']:.3f}")

    for name, changes in variants.items():
        variant = folder / name
        variant.mkdir(exist_ok=True)
        if not (variant / "search.json").exists():
            log(f"{name}: searching")
            recipe = base.model_copy(update={"search": base.search.model_copy(update=changes)})
            budget = setup["budget_ms"]
            if name == "searched_at_uniform_latency":
                if not (folder / "uniform" / "search.json").exists():
                    parser.error("searched_at_uniform_latency needs the uniform variant first")
                budget = json.loads((folder / "uniform" / "search.json").read_text())["chosen"]["latency_ms"]
                log(f"{name}: budget {budget:.2f} ms, the uniform ratio's predicted latency")
            section = search_policy(teacher, train, order, recipe, budget, log, latency_model)
            atomic_write_text(variant / "recipe.json", policy_recipe(recipe, section["policy"]).model_dump_json(indent=2))
            atomic_write_text(variant / "search.json", json.dumps(section, indent=2) + "\n")
        if not (variant / "student" / "report.json").exists():
            log(f"{name}: distilling the policy")
            compress(run / "teacher", run / "data", variant / "student", variant / "recipe.json", log=log)

    gaps_file = folder / "generalization_gaps.json"
    gaps = json.loads(gaps_file.read_text()) if gaps_file.exists() else []
    for seed in range(1, arguments.gap_seeds + 1):
        if any(g["seed"] == seed for g in gaps):
            continue
        seeded = base.model_copy(update={"seed": base.seed + seed})
        seed_order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seeded.seed))
        row = {"seed": seed}
        for label, weight in (("with_term", base.search.generalization_weight), ("without_term", 0.0)):
            log(f"generalization gap, seed {seed}, {label.replace('_', ' ')}")
            recipe = seeded.model_copy(update={"search": seeded.search.model_copy(
                update={"generalization_weight": weight})})
            section = search_policy(teacher, train, seed_order, recipe, setup["budget_ms"], log, latency_model)
            row[label] = {"gap": section["chosen_generalization_gap"], "search_loss": section["chosen"]["loss"],
                          "held_out_loss": section["chosen_held_out_loss"]}
        gaps.append(row)
        atomic_write_text(gaps_file, json.dumps(gaps, indent=2) + "\n")

    log("timing every student in alternating rounds and evaluating on the test split")
    models = {"teacher": teacher, "default_recipe": AuditModel.from_pretrained(run / "student")}
    models |= {name: AuditModel.from_pretrained(folder / name / "student") for name in variants}
    tests = {name: tokenised_for(model, test, run / "data", "test") for name, model in models.items()}
    timings = paired_latency(models, tests)
    teacher_predictions = {t: v.argmax(-1) for t, v in predict_logits(teacher, test).items()}
    rows = {}
    for name, model in models.items():
        searched = json.loads((folder / name / "search.json").read_text()) if name in variants else None
        rows[name] = {**evaluate(model, tests[name], teacher_predictions), **timings[name], "params": model.num_parameters(),
                      "predicted_latency_ms": searched["chosen"]["latency_ms"] if searched else None,
                      "search_loss": searched["chosen"]["loss"] if searched else None,
                      "held_out_loss": searched["chosen_held_out_loss"] if searched else None,
                      "generalization_gap": searched["chosen_generalization_gap"] if searched else None,
                      "search_seconds": searched["seconds"] if searched else None,
                      "distillation_seconds": json.loads((folder / name / "student" / "report.json").read_text())[
                          "wall_seconds"] if searched else None,
                      "budget_ms": searched["budget_ms"] if searched else None,
                      "policy": searched["policy"] if searched else None}
    result = {"command": "python -m benchmarks.search " + " ".join(
                  f"--{k.replace('_', '-')} {v}" for k, v in vars(arguments).items()),
              **setup, "generalization_gaps": gaps, "final_epochs": arguments.final_epochs,
              "default_recipe_final_epochs": json.loads((run / "student" / "recipe.json").read_text())["final_epochs"],
              "variants": rows, "wall_seconds": time.perf_counter() - started, "machine": machine()}
    arguments.results.mkdir(parents=True, exist_ok=True)
    atomic_write_text(arguments.results / "search.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(arguments.results / "search.md", markdown(result))
    plot_search(json.loads((folder / "searched" / "search.json").read_text()), arguments.results)
    for png in ("search_fitness.png", "search_candidates.png"):
        shutil.copy(arguments.results / png, folder / "searched" / png)
    log(f"done in {(time.perf_counter() - started) / 60:.1f} min")


def markdown(result: dict) -> str:
    teacher = result["variants"]["teacher"]
    lines = [f"# Policy search: searched vs uniform, at {result['budget_ms']:.2f} ms "
             f"(teacher {result['teacher_latency_ms']:.2f} ms / {result['target_speedup']})", "",
             f"`{result['command']}`, {result['machine']['cpu']}, {result['machine']['cores']} cores, "
             f"torch {result['machine']['torch']}; this invocation {result['wall_seconds'] / 60:.0f} min (steps whose "
             "output existed were skipped; each variant's search and distillation times are in its row).", "",
             "| model | params | p50 ms (predicted) | verdict acc | violation F1 | agreement | search loss | "
             "held-out loss | gap | search s | distillation min |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in result["variants"].items():
        predicted = f" ({row['predicted_latency_ms']:.2f})" if row["predicted_latency_ms"] else ""
        extra = (f"{row['search_loss']:.3f} | {row['held_out_loss']:.3f} | {row['generalization_gap']:+.3f} | "
                 f"{row['search_seconds']:.0f} | {row['distillation_seconds'] / 60:.1f}"
                 if row["search_loss"] is not None else " | | | | ")
        lines.append(f"| {name} | {row['params'] / 1e6:.2f}M | {row['latency_ms_p50']:.2f}{predicted} | "
                     f"{100 * row['accuracy']:.1f}% | {100 * row['violation_macro_f1']:.1f}% | "
                     f"{100 * row['agreement']:.1f}% | {extra} |")
    lines += ["", f"Teacher: {100 * teacher['accuracy']:.1f}% verdict accuracy. The default recipe's student "
              f"(hand-set ratios, {result.get('default_recipe_final_epochs', '?')} final epochs, its vocabulary "
              "stage) is a reference; every searched/uniform variant has the same stages and distillation budget "
              f"({result.get('final_epochs', '?')} final epochs).", ""]
    if result.get("generalization_gaps"):
        lines += ["Generalization gap (held-out minus search-sample loss of the chosen policy), the search step alone "
                  "on more seeds (other 64 search ads, other populations):", "",
                  "| seed | with the term | without |", "|---|---|---|"]
        for row in result["generalization_gaps"]:
            lines.append(f"| {row['seed']} | {row['with_term']['gap']:+.3f} | {row['without_term']['gap']:+.3f} |")
        lines.append("")
    at_uniform = result["variants"].get("searched_at_uniform_latency")
    if at_uniform:
        lines += [f"searched_at_uniform_latency: the same search under {at_uniform['budget_ms']:.2f} ms, the uniform "
                  "ratio's predicted latency, instead of the budget.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
