"""adaudit's compression against what a user would pick instead, in one run.

Same teacher, same distillation ads, same number of distillation epochs as the default
recipe spends in total, same test split, same batch-1 latency target (the AntGMM student's).
Every final model is evaluated on the test split and then timed together with the others in
alternating rounds, so the latency figures are comparable. Also the physical limit: the
student's FLOPs over the machine's peak matmul rate.

Usage: python -m benchmarks.peers [--run runs/bench] [--work runs/peers] [--results benchmarks/results]
(`make bench-peers`). Methods live in peer_methods.py; results go to RESULTS/peers.{json,md} and
RESULTS/pareto.png, the models each method built to WORK/.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from safetensors.torch import load_file, save_file

from adaudit.compression.augmentation import make_views
from adaudit.compression.distillation import TeacherCache, cache_teacher
from adaudit.compression.pipeline import RECIPE_FILE
from adaudit.compression.recipe import Recipe
from adaudit.compression.stages import shape_summary
from adaudit.data.encoding import encode_split, tokenised_for
from adaudit.training.evaluation import evaluate, predict_logits
from adaudit.core.files import atomic_write_text
from adaudit.training.measure import flops_per_ad, latency, machine, paired_latency
from adaudit.models.modeling import AuditModel
from adaudit.models.preprocessing import AuditProcessor

from benchmarks.peer_methods import METHODS, Built, Setting, check_outputs, distillation_epochs
from benchmarks.peer_report import goals, markdown, pareto_front, plot
from benchmarks.physical_limit import compiled_latency, floor_ms, peak_matmul

STUDENT_KEY = "antgmm"


def megabytes(model: torch.nn.Module) -> float:
    """Bytes of a model's weights (int8 weights count one byte each), in MB."""
    def size(value) -> int:
        if isinstance(value, torch.Tensor):
            return value.numel() * value.element_size()
        if isinstance(value, (tuple, list)):
            return sum(size(v) for v in value)
        return 0
    return sum(size(v) for v in model.state_dict().values()) / 1e6


def run_peers(teacher_dir: Path, data_dir: Path, student_dir: Path, searched_dir: Path, work: Path, results: Path,
              methods: list[str] | None = None, epochs: int | None = None, rounds: int = 5,
              pruning_steps: int = 20, command: str = "", log=print) -> dict:
    started = time.perf_counter()
    load_start = os.getloadavg()
    log(f"machine: {machine()}; load average {load_start[0]:.2f}")
    teacher = AuditModel.from_pretrained(teacher_dir)
    recipe = Recipe.model_validate_json((student_dir / RECIPE_FILE).read_text())
    processor = AuditProcessor.from_folder(teacher.config, teacher_dir)
    train = encode_split(data_dir, "train", processor, teacher.config.tasks)
    generator = torch.Generator().manual_seed(recipe.seed)  # the very ads the AntGMM student was distilled on
    train = train.subset(torch.randperm(len(train), generator=generator)[:recipe.distillation.samples])
    test = encode_split(data_dir, "test", processor, teacher.config.tasks)
    log(f"{len(train)} distillation ads, {len(test)} test ads; caching the teacher's outputs")
    cache, teacher_predictions = teacher_outputs(teacher, train, test, work / "teacher_outputs.safetensors")

    limit = peak_matmul()
    log(f"peak matmul: {limit['gflops_single_thread']:.0f} GFLOP/s on one thread, "
        f"{limit['gflops_all_threads']:.0f} on {limit['threads']}")
    student = AuditModel.from_pretrained(student_dir)
    target = paired_latency({"student": student}, tokenised_for(student, test, data_dir, "test"), rounds=3)["student"]
    setting = Setting(teacher, student_dir, searched_dir, train, test, cache, recipe,
                      epochs if epochs is not None else distillation_epochs(recipe, teacher.config),
                      target["latency_ms_p50"], work, data_dir, log, pruning_steps,
                      make_views(teacher, train, recipe, log))
    log(f"target batch-1 p50 {setting.target_ms:.2f} ms; budget {setting.epochs} distillation epochs per method")

    built: dict[str, Built] = {}
    entries = [measure_entry("teacher", f"teacher ({teacher_dir.name})", "reference",
                             Built(teacher, 0.0, teacher_dir, notes=[]), test, teacher_predictions)]
    entries[0].update(latency(teacher, test, repeats=30, throughput_repeats=1))
    pending = []
    chosen = [m for m in METHODS if methods is None or m.key in methods]
    summary = {
        "command": command, "teacher": str(teacher_dir), "data": str(data_dir),
        "distillation_samples": len(train), "test_samples": len(test), "epochs": setting.epochs,
        "augmented_views": 0 if setting.views is None else len(setting.views.plan.text_source),
        "target_ms": setting.target_ms, "physical_limit": limit, "entries": entries, "pending": pending,
        "timing": "provisional: each model timed alone right after it was built; the paired timing is still to come",
    }
    for number, method in enumerate(chosen, 1):
        log(f"[{number}/{len(chosen)}] {method.label}")
        result = build_or_resume(method, setting)
        if result is None:
            pending.append({"key": method.key, "label": method.label, "reason": "no model folder with report.json yet"})
            log("  pending: no model yet")
            continue
        own_test = setting.split_for(result.model, "test")
        check_outputs(result.model, own_test)
        built[method.key] = result
        entries.append(measure_entry(method.key, method.label, method.group, result, own_test, teacher_predictions))
        e = entries[-1]
        e.update(latency(result.model, own_test, repeats=30, throughput_repeats=1))
        log(f"  built in {result.seconds / 60:.1f} min: {e['params'] / 1e6:.2f}M params, verdict accuracy "
            f"{e['accuracy']:.4f}, violation F1 {e['violation_macro_f1']:.4f}, p50 {e['latency_ms_p50']:.2f} ms (alone)")
        write_results(summary, built, results, time.perf_counter() - started, load_start)  # what is measured so far

    log(f"timing all {len(entries)} models together, {rounds} alternating rounds")
    models = {"teacher": teacher, **{key: result.model for key, result in built.items()}}
    timings = paired_latency(models, {key: setting.split_for(model, "test") for key, model in models.items()},
                             rounds=rounds)
    for entry in entries:
        entry.update(timings[entry["key"]])
    summary["timing"] = f"paired: all models timed together at the end, {rounds} alternating rounds"
    if STUDENT_KEY in built:
        log("timing the AntGMM student under torch.compile (the distance to the floor that is per-operator overhead)")
        student = built[STUDENT_KEY].model
        summary["compiled_student"] = compiled_latency(student, setting.split_for(student, "test"))
    write_results(summary, built, results, time.perf_counter() - started, load_start)
    log(f"done in {(time.perf_counter() - started) / 60:.1f} min: {results / 'peers.md'}")
    return summary


def teacher_outputs(teacher: AuditModel, train, test, path: Path) -> tuple[TeacherCache, dict]:
    """The teacher's cached outputs on the distillation ads and its test predictions; kept in `path`
    so that an interrupted run does not compute them again."""
    if path.is_file():
        saved = load_file(str(path))
        logits = {key.removeprefix("logits."): v for key, v in saved.items() if key.startswith("logits.")}
        predictions = {key.removeprefix("test."): v for key, v in saved.items() if key.startswith("test.")}
        return TeacherCache(logits, saved["pooled"]), predictions
    cache = cache_teacher(teacher, train)
    predictions = {t: v.argmax(-1) for t, v in predict_logits(teacher, test).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"pooled": cache.pooled.contiguous(), **{f"logits.{t}": v.contiguous() for t, v in cache.logits.items()},
               **{f"test.{t}": v.contiguous() for t, v in predictions.items()}}, str(path))
    return cache, predictions


def write_results(summary: dict, built: dict[str, Built], results: Path, wall: float, load_start) -> None:
    entries = summary["entries"]
    for entry in entries:
        entry["floor_ms"] = floor_ms(entry["flops_per_ad"], summary["physical_limit"]["gflops_all_threads"])
        entry["latency_over_floor"] = entry["latency_ms_p50"] / entry["floor_ms"]
        entry["batch_32_per_ad_over_floor"] = 1000 / entry["throughput_per_s"] / entry["floor_ms"]
    compiled = summary.get("compiled_student")
    if compiled and STUDENT_KEY in built:
        student_entry = next(e for e in entries if e["key"] == STUDENT_KEY)
        compiled["latency_over_floor"] = compiled["latency_ms_p50"] / student_entry["floor_ms"]
    student_key = STUDENT_KEY if STUDENT_KEY in built else entries[-1]["key"]
    # the whole benchmark: this run, the build time of methods an earlier (interrupted) run built, and the
    # compression of the reused AntGMM student (teacher training excluded)
    reused = built[STUDENT_KEY].seconds if STUDENT_KEY in built else 0.0
    resumed = sum(result.seconds for result in built.values() if result.resumed)
    summary.update({
        "student_key": student_key, "pareto_front": sorted(pareto_front(entries)), "wall_seconds": wall + resumed,
        "this_invocation_seconds": wall, "resumed_methods_seconds": resumed, "machine": machine(),
        # other jobs on the machine during the run (1-minute load average; 2 cores here)
        "load_average_start": load_start[0], "load_average_end": os.getloadavg()[0],
        "goals": {**goals(entries, student_key, wall + resumed + reused), "includes_reused_student_seconds": reused,
                  "includes_resumed_methods_seconds": resumed},
    })
    results.mkdir(parents=True, exist_ok=True)
    atomic_write_text(results / "peers.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(results / "peers.md", markdown(summary))
    plot(entries, set(summary["pareto_front"]), summary["target_ms"], results / "pareto.png")


def build_or_resume(method, setting: Setting) -> Built | None:
    """Build a method's model, or reload it if an interrupted run of this benchmark already saved it."""
    marker = setting.out / f"{method.key}.json"
    if marker.is_file():
        saved = json.loads(marker.read_text())
        setting.log(f"  resumed from {saved['folder']}")
        return Built(AuditModel.from_pretrained(Path(saved["folder"])), saved["seconds"], Path(saved["folder"]),
                     notes=saved["notes"] + ["built by an earlier invocation of this benchmark (resumed)"],
                     details=saved["details"], resumed=True)
    result = method.build(setting)
    if result is not None and result.folder is not None and result.folder.parent == setting.out:
        atomic_write_text(marker, json.dumps({"folder": str(result.folder), "seconds": result.seconds,
                                              "notes": result.notes, "details": result.details}) + "\n")
    return result


def measure_entry(key: str, label: str, group: str, result: Built, test, teacher_predictions) -> dict:
    float_model = result.float_model or result.model  # (an ONNX session's weights are not in a state dict)
    metrics = evaluate(result.model, test, teacher_predictions)
    return {"key": key, "label": label, "group": group, "params": float_model.num_parameters(),
            "megabytes": megabytes(result.model) or megabytes(float_model),
            "flops_per_ad": flops_per_ad(float_model, test), **metrics,
            "wall_seconds": result.seconds, "reloadable": result.folder is not None,
            "folder": str(result.folder) if result.folder else None,
            "shape": shape_summary(result.model) if result.folder else None,
            "notes": result.notes, "details": result.details}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/bench"), help="folder with data/, teacher/, student/")
    parser.add_argument("--work", type=Path, default=Path("runs/peers"), help="where the methods' models go")
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--searched", type=Path, help="adaudit's searched student (default: RUN/searched, "
                        "else RUN/search/searched/student)")
    parser.add_argument("--methods", help="comma-separated method keys (default: all)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating latency rounds")
    args = parser.parse_args()
    console = Console(stderr=False, log_path=False)
    for name in ("data", "teacher", "student"):
        if not (args.run / name).is_dir():
            print(f"error: {args.run / name} does not exist: run `make bench` first", file=sys.stderr)
            sys.exit(1)
    searched = args.searched or next((folder for folder in (args.run / "searched", args.run / "search/searched/student")
                                      if (folder / "report.json").is_file()), args.run / "searched")
    run_peers(args.run / "teacher", args.run / "data", args.run / "student", searched, args.work,
              args.results, args.methods.split(",") if args.methods else None, rounds=args.rounds,
              command="python " + " ".join(sys.argv), log=console.log)


if __name__ == "__main__":
    main()
