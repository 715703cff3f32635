"""scFoundation embedding speed and memory with the released 100M architecture (random weights).

What it measures (printed):

* the fp32 and bf16 matmul peak of this machine (GFLOP/s), measured in the same run;
* cells/s of ``scfm.tl.embed`` (``pre_normalized='F'``, ``tgthighres='t4'``, ``pool='all'``) on real PBMCs
  (the 200 raw-count cells of ../shared, aligned inside scfm), fp32 and bf16, with the encoder FLOPs actually
  done and the % of the matching matmul peak;
* peak RSS of the process.

``--rss10k``: embeds 10,000 cells (the 200 PBMCs tiled 50×, in-memory CSR with all 16,727 genes) in one call
and reports the peak RSS. With real cell lengths (~1,500 tokens) this takes hours on 2 cores in fp32 (use
``--precision bfloat16`` to shorten it). ``--rss10k-probe``: the same 10,000-cell call, in which the real
encoder runs on the longest batches (those that need the most memory; ``--probe-batches``) and every other
batch gets a zero tensor of the right shape instead, so the whole data path (reading, alignment, tokens,
output) is real and the network's memory peak is hit, in minutes.

Usage::

    python benchmarks/bench_scfoundation.py [--n-cells 200] [--batch-size 16] [--skip-bf16]
    python benchmarks/bench_scfoundation.py --rss10k-probe
    python benchmarks/bench_scfoundation.py --rss10k --precision bfloat16
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from common import matmul_peak_gflops, mirror, pbmc_replicas, peak_rss_gib


def _rss_now_gib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**30


def encoder_flops(lengths: np.ndarray, dim: int = 768, depth: int = 12, bins: int = 100) -> float:
    """Matmul FLOPs of value embedding + encoder for cells of the given token counts."""
    n = lengths.astype(np.float64)
    per_layer = 24 * n * dim**2 + 4 * n**2 * dim  # qkv+out+ff, and QK^T + AV
    emb = 2 * n * (bins * bins + bins * dim)
    return float((depth * per_layer + emb).sum())


def _mirror() -> Path:
    return mirror("data")


def _pbmc(n_cells: int):
    return pbmc_replicas(n_cells)


def _token_lengths(model, adata) -> np.ndarray:
    from scfm.models import CellData
    from scfm.models.scfoundation._inputs import make_tokens

    data = CellData(adata)
    al = model._align(data, pre_normalized="F", gene_symbols=None, min_panel_fraction=0.25, total_counts=None)
    return make_tokens(data.rows(0, adata.n_obs), al.colmap, pre_normalized="F", tgthighres="t4").lengths


def run_speed(args) -> None:
    import torch

    import scfm
    from scfm.models.scfoundation import random_model

    scfm.settings.verbosity = 1
    scfm.settings.mirror = _mirror()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    peak32 = matmul_peak_gflops(torch.float32)
    peak16 = matmul_peak_gflops(torch.bfloat16)
    print(f"matmul peak: fp32 {peak32:.0f} GFLOP/s, bf16 {peak16:.0f} GFLOP/s")
    model = random_model()
    print(f"model: released architecture, random weights; RSS after build {_rss_now_gib():.2f} GiB")
    adata = _pbmc(args.n_cells)
    lengths = _token_lengths(model, adata)
    flops = encoder_flops(lengths)
    print(f"{adata.n_obs} cells, {lengths.mean():.0f} tokens/cell (max {lengths.max()}), "
          f"{flops / adata.n_obs / 1e9:.0f} GFLOP/cell")
    from scfm._torch import cpu_has_native_bf16

    native = cpu_has_native_bf16()
    if not native and not args.skip_bf16:
        print(f"bfloat16: skipped, this CPU has no native bf16 (bf16 matmul peak {peak16:.1f} GFLOP/s)")
    precisions = ["float32"] + ([] if args.skip_bf16 or not native else ["bfloat16"])
    for prec in precisions:
        a = adata.copy()
        t = time.perf_counter()
        scfm.tl.embed(a, model=model, batch_size=args.batch_size, precision=prec)
        dt = time.perf_counter() - t
        # the machine may be shared: measure the peak again right after the run and use the higher value
        again = matmul_peak_gflops(torch.float32 if prec == "float32" else torch.bfloat16)
        peak = max(peak32 if prec == "float32" else peak16, again)
        print(f"{prec:9s} batch {args.batch_size}: {a.n_obs / dt:.2f} cells/s ({dt:.1f} s), "
              f"{flops / dt / 1e9:.0f} GFLOP/s = {100 * flops / dt / 1e9 / peak:.0f}% of the {prec} matmul peak "
              f"({peak:.0f}); "
              f"peak RSS so far {peak_rss_gib():.2f} GiB")


def run_rss10k(args, probe: bool) -> None:
    import torch

    import scfm
    from scfm.models.scfoundation import random_model

    scfm.settings.verbosity = 1
    scfm.settings.mirror = _mirror()
    model = random_model()
    adata = _pbmc(10_000)
    print(f"10,000 cells × {adata.n_vars} genes, CSR {adata.X.data.nbytes / 2**20:.0f} MiB of values; "
          f"RSS before embedding {_rss_now_gib():.2f} GiB")
    if probe:
        lengths = _token_lengths(model, adata)
        # The same batching as the model: batches come in ascending length order within the (single) chunk,
        # so the last ones hold the longest cells and need the most memory; only those run the real encoder.
        batches = list(model._batches(lengths, np.arange(adata.n_obs), args.batch_size, 16_384))
        n_batches = len(batches)
        first_real = max(0, n_batches - args.probe_batches)
        state = {"calls": 0, "real": 0}
        encode = model.net.encode

        def probe_encode(values, positions, key_padding=None):
            state["calls"] += 1
            if state["calls"] > first_real:
                state["real"] += 1
                return encode(values, positions, key_padding)
            return torch.zeros(*values.shape, model.net.dim)

        model.net.encode = probe_encode
        biggest = max(len(b) * int(lengths[b].max()) for b in batches[first_real:])
        print(f"probe: {n_batches} batches; the real encoder runs on the last {n_batches - first_real} (the longest "
              f"cells, up to {int(lengths.max())} tokens, {biggest} padded tokens per batch)")
    t = time.perf_counter()
    scfm.tl.embed(adata, model=model, batch_size=args.batch_size, precision=args.precision)
    dt = time.perf_counter() - t
    print(f"embedded {adata.n_obs} cells in {dt:.0f} s; obsm {adata.obsm['X_scfoundation'].shape}")
    if probe:
        print(f"probe: {state['real']} of {state['calls']} encoder calls ran the real network")
    print(f"peak RSS {peak_rss_gib():.2f} GiB (limit 8 GiB)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-cells", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--skip-bf16", action="store_true")
    p.add_argument("--rss10k", action="store_true", help="embed 10,000 cells for real and report peak RSS")
    p.add_argument("--rss10k-probe", action="store_true", help="10,000-cell data path, real encoder on the "
                                                                "longest batches only")
    p.add_argument("--probe-batches", type=int, default=3)
    p.add_argument("--precision", default="float32")
    args = p.parse_args()
    if args.rss10k or args.rss10k_probe:
        run_rss10k(args, probe=args.rss10k_probe and not args.rss10k)
    else:
        run_speed(args)


if __name__ == "__main__":
    main()
