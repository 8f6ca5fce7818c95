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
