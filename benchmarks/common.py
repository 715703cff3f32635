"""Shared helpers of the benchmark scripts: matmul peak of this machine, RSS, the shared mirror, PBMC replicas.

Every benchmark reports its throughput as a fraction of the matmul peak measured in the same run, because machines
of the same class differ several-fold (AVX2 only, AVX-512, AMX; with or without native bf16).
"""

from __future__ import annotations

import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

__all__ = [
    "matmul_peak_gflops",
    "peak_rss_mib",
    "peak_rss_gib",
    "current_rss_mib",
    "machine_line",
    "cpu_capability",
    "mirror",
    "pbmc_replicas",
    "Timer",
]

REPO = Path(__file__).resolve().parents[1]


def matmul_peak_gflops(dtype: object = "float32", *, budget_s: float = 1.5, max_n: int = 2048) -> float:
    """Best GFLOP/s of a square matmul in ``dtype`` on the CPU, measured now, within about ``budget_s`` seconds.

    The size grows from 256 to ``max_n`` while one product takes under a tenth of the budget, so a machine
    without native bf16 (where a 2048³ bf16 product takes minutes) is measured at a smaller size instead of hanging.
    """
    import torch

    dt = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    n, best = 256, 0.0
    t_end = time.perf_counter() + budget_s
    while True:
        a, b = torch.randn(n, n, dtype=dt), torch.randn(n, n, dtype=dt)
        t = time.perf_counter()
        a @ b  # warm-up
        one = time.perf_counter() - t
        reps = max(1, min(5, int(budget_s / 4 / max(one, 1e-6))))
        for _ in range(reps):
            t = time.perf_counter()
            a @ b
            best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
        if n >= max_n or one > budget_s / 10 or time.perf_counter() > t_end:
            return best
        n *= 2


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (MiB)."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024 if sys.platform != "darwin" else kib / 2**20


def peak_rss_gib() -> float:
    """Peak resident set size of this process so far (GiB)."""
    return peak_rss_mib() / 1024


def current_rss_mib() -> float:
    """Resident set size now (Linux ``/proc``), MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def cpu_capability() -> str:
    """The SIMD level PyTorch dispatches to on this CPU (``"AVX2"``, ``"AVX512"``, ``"AVX512_BF16"``, ``"AMX"``...)."""
    import torch

    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # pragma: no cover - old torch
        return "unknown"


def machine_line() -> str:
    """Torch version, threads, SIMD level and the measured fp32 / bf16 matmul peaks."""
    import torch

    fp32 = matmul_peak_gflops("float32")
    bf16 = matmul_peak_gflops("bfloat16")
    return (
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability {cpu_capability()}; "
        f"matmul peak fp32 {fp32:.0f} GFLOP/s, bf16 {bf16:.0f} GFLOP/s"
    )


def mirror(required: str = "") -> Path:
    """The shared mirror (``$SCFM_MIRROR`` or ``../shared`` beside the checkout); exit when it is absent."""
    env = os.environ.get("SCFM_MIRROR")
    p = Path(env) if env else REPO.parent / "shared"
    if not (p / required).is_dir():
        sys.exit(f"shared mirror not found at {p} (needs {required or 'the folder'}); set SCFM_MIRROR")
    return p.resolve()


def pbmc_replicas(n_cells: int, path: str | Path | None = None):
    """The 200 real PBMCs, replicated to ``n_cells`` cells (unique ``obs_names``; ``obs``/``var`` kept)."""
    import anndata as ad
    import scipy.sparse as sp

    a = ad.read_h5ad(path or mirror("data") / "data" / "pbmc" / "pbmc_10k_protein_v3_200cells.h5ad")
    reps = int(np.ceil(n_cells / a.n_obs))
    X = sp.vstack([sp.csr_matrix(a.X)] * reps).tocsr()[:n_cells]
    obs = a.obs.iloc[np.tile(np.arange(a.n_obs), reps)[:n_cells]].copy()
    obs.index = [f"c{i}" for i in range(n_cells)]
    return ad.AnnData(X, obs=obs, var=a.var.copy())


class Timer:
    """``with Timer() as t: ...`` then ``t.s`` seconds."""

    def __enter__(self) -> Timer:
        self._t = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.s = time.perf_counter() - self._t
