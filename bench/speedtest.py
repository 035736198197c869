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


def speed_args(description: str, steps: int):
    """The speed benchmarks' options (--steps, --threads), with the thread count and the seed set."""
    import argparse

    import torch

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--steps", type=int, default=steps)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from quality import cpu_flags

    print(cpu_flags())
    return args


def compare(models: dict, make_step, flops: float, rounds: int, batch: int, unit: str) -> dict[str, dict]:
    """Time `models` side by side (interleaved) in float32 and bf16 autocast; print samples/s, ms/step and MFU
    against the matmul peak measured here; return {precision: {model: samples/s}}."""
    rates = {}
    for precision, bf16 in (("float32", False), ("bf16 autocast", True)):
        peak = matmul_peak(torch.bfloat16 if bf16 else torch.float32)
        steps = {k: make_step(m, k, bf16) for k, m in models.items()}
        rate, ms = interleaved_rates(steps, rounds, batch)
        print(f"\n{precision}: matmul peak {peak:.0f} GFLOP/s")
        for k in steps:
            mfu = flops * rate[k] / batch / 1e9 / peak
            print(f"  {k:10s} {rate[k]:7.1f} {unit}/s  ({ms[k]:.0f} ms/step, MFU {mfu:.0%})")
        rates[precision] = rate
    return rates
