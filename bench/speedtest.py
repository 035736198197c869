"""Timing helpers shared by the side-by-side speed benchmarks in this folder."""

import statistics
import time

import torch


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    """GFLOP/s of an n^3 matmul in `dtype` on this machine now: the ceiling MFU is measured against."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    return 2 * n**3 / min(timed(lambda: a @ b) for _ in range(reps)) / 1e9


def interleaved_rates(steps: dict, rounds: int, batch: int) -> tuple[dict, dict]:
    """Samples/s and median ms/step of each training step, run round by round so noise hits all alike."""
    for fn in steps.values():  # warm-up: allocator, oneDNN kernels
        fn()
        fn()
    times = {k: [] for k in steps}
    for _ in range(rounds):
        for k, fn in steps.items():
            times[k].append(timed(fn))
    medians = {k: statistics.median(v) for k, v in times.items()}
    return {k: batch / m for k, m in medians.items()}, {k: 1000 * m for k, m in medians.items()}
