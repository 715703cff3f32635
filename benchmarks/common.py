"""Shared helpers of the benchmark scripts: matmul peak of this machine, peak RSS, timing."""

from __future__ import annotations

import resource
import sys
import time

import torch

__all__ = ["matmul_peak_gflops", "peak_rss_gib", "machine_line", "Timer"]


def matmul_peak_gflops(dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 5) -> float:
    """Best-of-``repeats`` GFLOP/s of an ``n × n`` matmul in ``dtype`` on the CPU, measured now."""
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def peak_rss_gib() -> float:
    """Peak resident set size of this process so far (GiB)."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 2**20 if sys.platform != "darwin" else kib / 2**30


def machine_line() -> str:
    """Torch version, threads and the measured fp32 / bf16 matmul peaks."""
    fp32 = matmul_peak_gflops(torch.float32)
    bf16 = matmul_peak_gflops(torch.bfloat16)
    return (
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; matmul peak fp32 {fp32:.0f} GFLOP/s, "
        f"bf16 {bf16:.0f} GFLOP/s"
    )


class Timer:
    """``with Timer() as t: ...`` then ``t.s`` seconds."""

    def __enter__(self) -> Timer:
        self._t = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.s = time.perf_counter() - self._t
