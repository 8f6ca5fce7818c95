"""The physical limit: how fast this machine multiplies matrices, and the latency floor it implies.

A model that needs F floating-point operations per ad cannot answer faster than F / peak,
where peak is the best float32 matmul rate the machine reaches (large square matrices, where
nothing but arithmetic limits it). Measured single-threaded and with the threads the latency
measurement uses.
"""

from __future__ import annotations

import time

import torch


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
    from adaudit.measure import latency  # the same inputs and loop as every other latency figure

    compiled = torch.compile(model.eval(), dynamic=True)
    started = time.perf_counter()
    with torch.inference_mode():
        compiled(**split.inputs(torch.tensor([0])))
    compile_seconds = time.perf_counter() - started
    return {**latency(compiled, split, repeats=repeats, throughput_repeats=0), "compile_seconds": compile_seconds}
