"""scGPT cell-embedding throughput with the real-size whole-human architecture (random weights).

12 layers, 512 wide, 8 heads, d_hid 512, 60,697-token vocabulary (the census vocabulary from the mirror);
PBMC cells (raw counts), max_length 1200, batch 16, through the public ``scfm.tl.embed`` call. Each precision
runs in its own process so its peak RSS is its own. Reports cells/s, tokens/s, model GFLOP/s and the % of the
matmul peak measured in the same process right before and after the timed run (fp32 and bf16
GEMM, 2048^3; on a shared machine this tracks the load), and peak RSS.

Model FLOPs count all 12 layers on every real (non-pad) token: 2 * (4 d^2 + 2 d d_hid) per token per layer for
the projections and feed-forward, and 4 * L * d per token per layer for attention (L = the cell's length).
scfm skips work the output does not need (padding is minimised by length sorting, the last layer computes only
the <cls> query), so the % of peak it reaches can exceed what the same kernels would do on the full model.

Reference (issue 4): the official ``scgpt.tasks.embed_data`` does ~0.9 cells/s on 2 cores at max_length 1200,
batch 16 (~20 % of an fp32 matmul peak of ~360 GFLOP/s).

Usage::

    python benchmarks/bench_scgpt.py            # 200 PBMCs (the shared 200-cell set), fp32 and bf16
    python benchmarks/bench_scgpt.py --quick    # 48 cells
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import cpu_capability, matmul_peak_gflops, peak_rss_mib

REPO = Path(__file__).resolve().parents[1]
MIRROR = Path(os.environ.get("SCFM_MIRROR", REPO.parent / "shared"))
OFFICIAL_CELLS_PER_S = 0.9

D, NHEAD, D_HID, NLAYERS = 512, 8, 512, 12


def model_flops(lengths) -> float:
    import numpy as np

    lengths = np.asarray(lengths, dtype=np.float64)
    per_token_layer = 2 * (4 * D * D + 2 * D * D_HID) + 4 * lengths * D
    return float(NLAYERS * (lengths * per_token_layer).sum())


def build_model():
    import torch

    from scfm.models.scgpt import ScGPTModel
    from scfm.models.scgpt._checkpoint import ScGPTConfig, read_vocab
    from scfm.models.scgpt._network import ScGPTEncoder

    vocab = read_vocab(MIRROR / "resources" / "scgpt" / "default_census_vocab.json")
    config = ScGPTConfig(embsize=D, nheads=NHEAD, d_hid=D_HID, nlayers=NLAYERS)
    torch.manual_seed(0)
    net = ScGPTEncoder(config, len(vocab))
    return ScGPTModel(network=net, vocab=vocab, config=config, name="scgpt-random-12x512", random_weights=True)


def run_one(precision: str, n_cells: int, batch_size: int, max_length: int) -> dict:
    import anndata as ad
    import numpy as np

    import scfm
    from scfm.models import CellData

    scfm.settings.verbosity = 1
    adata = ad.read_h5ad(MIRROR / "data" / "pbmc" / "pbmc_10k_protein_v3_200cells.h5ad")
    if n_cells > adata.n_obs:  # more cells than the file has: repeat it (new names, same counts)
        reps = -(-n_cells // adata.n_obs)
        adata = ad.concat([adata] * reps, index_unique="-")
    adata = adata[:n_cells].copy()
    m = build_model()
    t = time.perf_counter()
    tok = m.tokenize(CellData(adata), max_length=max_length, seed=0)
    t_tok = time.perf_counter() - t
    lengths = tok.lengths
    warm = adata[: min(batch_size, n_cells)].copy()
    scfm.tl.embed(warm, model=m, batch_size=batch_size, max_length=max_length, precision=precision, device="cpu")
    # the matmul peak is measured right before and after the timed run (the machine may be shared)
    peak_before = {k: matmul_peak_gflops(k) for k in ("float32", "bfloat16")}
    t = time.perf_counter()
    scfm.tl.embed(adata, model=m, batch_size=batch_size, max_length=max_length, precision=precision, device="cpu")
    wall = time.perf_counter() - t
    peak = {k: (v + matmul_peak_gflops(k)) / 2 for k, v in peak_before.items()}
    assert np.isfinite(adata.obsm["X_scgpt"]).all()
    return {
        "precision": precision,
        "cells": n_cells,
        "tokens_per_cell": float(lengths.mean()),
        "tokenize_cells_per_s": n_cells / t_tok,
        "seconds": wall,
        "cells_per_s": n_cells / wall,
        "tokens_per_s": float(lengths.sum()) / wall,
        "gflops": model_flops(lengths) / wall / 1e9,
        "peak_rss_mib": peak_rss_mib(),
        "matmul_peak": peak,
    }


def run_official(official_path: str, n_cells: int, batch_size: int, max_length: int) -> dict:
    """The official ``scgpt.tasks.embed_data`` beside ``scfm.tl.embed`` on one real-size random checkpoint.

    ``official_path`` is a folder holding the official ``scgpt`` package (a source checkout; no flash-attn, no
    torchtext needed at the commit the fixtures name). The checkpoint is built once in the official layout
    (``args.json``, ``vocab.json``, ``best_model.pt``) and both load it; same cells, max_length and batch size.
    """
    import shutil
    import tempfile

    import anndata as ad
    import torch

    sys.path.insert(0, str(Path(official_path).resolve()))
    from scgpt.model import TransformerModel
    from scgpt.tasks import embed_data
    from scgpt.tokenizer import GeneVocab

    import scfm

    scfm.settings.verbosity = 1
    adata = ad.read_h5ad(MIRROR / "data" / "pbmc" / "pbmc_10k_protein_v3_200cells.h5ad")[:n_cells].copy()
    adata.var["gene_name"] = adata.var_names
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        tiny = MIRROR / "fixtures" / "scgpt" / "tiny"
        shutil.copy(tiny / "vocab.json", folder / "vocab.json")
        args = json.loads((tiny / "args.json").read_text())
        args.update(embsize=D, nheads=NHEAD, d_hid=D_HID, nlayers=NLAYERS)
        (folder / "args.json").write_text(json.dumps(args))
        vocab = GeneVocab.from_file(folder / "vocab.json")
        torch.manual_seed(0)
        net = TransformerModel(
            ntoken=len(vocab), d_model=D, nhead=NHEAD, d_hid=D_HID, nlayers=NLAYERS,
            nlayers_cls=args["n_layers_cls"], n_cls=1, vocab=vocab, dropout=args["dropout"],
            pad_token=args["pad_token"], pad_value=args["pad_value"], do_mvc=True, do_dab=False,
            use_batch_labels=False, domain_spec_batchnorm=False, explicit_zero_prob=False,
            use_fast_transformer=False, pre_norm=False,
        )
        torch.save(net.state_dict(), folder / "best_model.pt")
        del net
        t = time.perf_counter()
        embed_data(adata.copy(), folder, gene_col="gene_name", max_length=max_length, batch_size=batch_size,
                   device="cpu", use_fast_transformer=False, return_new_adata=True)
        t_official = time.perf_counter() - t
        m = scfm.models.load("scgpt", checkpoint=folder, device="cpu")
        scfm.tl.embed(adata[:2].copy(), model=m, batch_size=2, max_length=max_length)  # warm-up
        t = time.perf_counter()
        scfm.tl.embed(adata, model=m, batch_size=batch_size, max_length=max_length, seed=0, device="cpu")
        t_ours = time.perf_counter() - t
    return {
        "cells": n_cells,
        "official_cells_per_s": n_cells / t_official,
        "scfm_cells_per_s": n_cells / t_ours,
        "speedup": t_official / t_ours,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=1200)
    p.add_argument("--precision", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--quick", action="store_true", help="48 cells")
    p.add_argument("--official-path", default="", help="folder holding the official `scgpt` package: run its "
                   "embed_data side by side (fp32)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    n = 48 if args.quick else args.cells
    if args.child == "official":
        print(json.dumps(run_official(args.official_path, n, args.batch_size, args.max_length)))
        return
    if args.child:
        print(json.dumps(run_one(args.child, n, args.batch_size, args.max_length)))
        return
    if args.official_path:
        cmd = [sys.executable, __file__, "--child", "official", "--official-path", args.official_path, "--cells",
               str(n), "--batch-size", str(args.batch_size), "--max-length", str(args.max_length)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        o = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"side by side, fp32, {n} cells, max_length {args.max_length}, batch {args.batch_size}: official "
              f"embed_data {o['official_cells_per_s']:.2f} cells/s, scfm {o['scfm_cells_per_s']:.2f} cells/s "
              f"(x{o['speedup']:.2f})")

    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; scGPT 12 x 512 (random weights), "
          f"{n} PBMC cells, max_length {args.max_length}, batch {args.batch_size}")
    rows = []
    from scfm._torch import cpu_has_native_bf16

    for prec in args.precision:
        if prec == "bfloat16" and not cpu_has_native_bf16():
            print(f"bfloat16: skipped, this CPU has no native bf16 (capability {cpu_capability()}; bf16 matmul peak "
                  f"{matmul_peak_gflops('bfloat16'):.1f} GFLOP/s vs fp32 {matmul_peak_gflops('float32'):.0f})")
            continue
        cmd = [sys.executable, __file__, "--child", prec, "--cells", str(n), "--batch-size", str(args.batch_size),
               "--max-length", str(args.max_length)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{'precision':>9} {'cells/s':>8} {'x official':>10} {'tokens/s':>9} {'GFLOP/s':>8} {'% peak':>12} "
          f"{'peak RSS':>9} {'tok/cell':>8} {'tokenise':>10}")
    for r in rows:
        peaks = r["matmul_peak"]
        peak = peaks["bfloat16" if r["precision"] == "bfloat16" else "float32"]
        pct_fp32 = 100 * r["gflops"] / peaks["float32"]
        pct = f"{100 * r['gflops'] / peak:.0f}%" + (f" ({pct_fp32:.0f}% fp32)" if r["precision"] != "float32" else "")
        print(f"{r['precision']:>9} {r['cells_per_s']:8.2f} {r['cells_per_s'] / OFFICIAL_CELLS_PER_S:9.1f}x "
              f"{r['tokens_per_s']:9.0f} {r['gflops']:8.0f} {pct:>12} {r['peak_rss_mib']:7.0f}Mi "
              f"{r['tokens_per_cell']:8.0f} {r['tokenize_cells_per_s']:7.0f}/s")
    for r in rows:
        pk = r["matmul_peak"]
        print(f"{r['precision']}: matmul peak around the run (square GEMM) fp32 {pk['float32']:.0f} GFLOP/s, "
              f"bf16 {pk['bfloat16']:.0f} GFLOP/s")
    print(f"official embed_data reference: {OFFICIAL_CELLS_PER_S} cells/s (fp32, same settings, issue 4)")


if __name__ == "__main__":
    main()
