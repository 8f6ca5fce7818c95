"""Size and speed of a model on this machine: parameters, FLOPs per ad, latency, throughput."""

from __future__ import annotations

import os
import platform
import time
from typing import Callable

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from adaudit.data.encoding import EncodedSplit
from adaudit.models.modeling import AuditModel


def flops_per_ad(model: AuditModel, split: EncodedSplit) -> int:
    counter = FlopCounterMode(display=False)  # its module hooks need autograd on: no inference_mode here
    with counter:
        model.eval()(**split.inputs(torch.arange(1)))
    return int(counter.get_total_flops())


@torch.inference_mode()
def latency(model: AuditModel, split: EncodedSplit, repeats: int = 60, throughput_batch: int = 32,
            throughput_repeats: int = 6) -> dict:
    """p50/p95 of batch-1 calls over `repeats` ads, and ads per second at batch `throughput_batch`
    (not measured when `throughput_repeats` is 0)."""
    model.eval()
    single = [split.inputs(torch.tensor([i % len(split)])) for i in range(repeats)]
    for inputs in single[:5]:
        model(**inputs)
    timings = []
    for inputs in single:
        start = time.perf_counter()
        model(**inputs)
        timings.append((time.perf_counter() - start) * 1000)
    result = {"latency_ms_p50": float(np.percentile(timings, 50)), "latency_ms_p95": float(np.percentile(timings, 95))}
    if not throughput_repeats:
        return result
    batch = split.inputs(torch.arange(throughput_batch) % len(split))
    model(**batch)
    start = time.perf_counter()
    for _ in range(throughput_repeats):
        model(**batch)
    elapsed = time.perf_counter() - start
    return {**result, "throughput_per_s": throughput_batch * throughput_repeats / elapsed}


def paired_latency(models: dict[str, AuditModel], split: EncodedSplit | dict[str, EncodedSplit],
                   rounds: int = 5, settle_s: float = 0.2,
                   before_round: Callable[[], None] | None = None) -> dict[str, dict]:
    """Latency of several models measured in alternating rounds, so a change of machine load
    during the measurement affects them all alike; the figures to take ratios from. `split`: one
    for all, or one per model (a student with a pruned vocabulary takes its own token ids).

    Before each model's turn the process sleeps `settle_s`: the worker threads of the model timed
    just before (OpenMP's, ONNX Runtime's) spin for a while after their last call, and on two cores
    they would take a core from the next model's first calls. `before_round`, if given, runs at the start
    of every round (a measurement that must drift with the models', such as the machine's peak rate)."""
    splits = split if isinstance(split, dict) else {name: split for name in models}
    samples: dict[str, list[dict]] = {name: [] for name in models}
    for _ in range(rounds):
        if before_round is not None:
            before_round()
        for name, model in models.items():
            time.sleep(settle_s)
            samples[name].append(latency(model, splits[name], repeats=30, throughput_repeats=3))
    return {name: {key: float(np.median([s[key] for s in runs])) for key in runs[0]}
            for name, runs in samples.items()}


def profile(model: AuditModel, split: EncodedSplit) -> dict:
    return {"params": model.num_parameters(), "flops_per_ad": flops_per_ad(model, split), **latency(model, split)}


def machine() -> dict:
    """The machine a measurement was taken on, recorded beside the figures."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as stream:
            cpu = next((line.split(":", 1)[1].strip() for line in stream if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "platform": platform.platform()}
