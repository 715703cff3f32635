"""Geneformer speed and memory: tokenisation, embedding (fp32 / bf16), backed tokenisation RSS.

Usage::

    python benchmarks/bench_geneformer.py --quick          # tokenisation + matmul peak only (~1 min)
    python benchmarks/bench_geneformer.py                  # + embedding with real-size random-weight models
    python benchmarks/bench_geneformer.py --backed-cells 100000   # + RSS of tokenising a backed h5ad
    python benchmarks/bench_geneformer.py --official-path DIR     # + the official code side by side

``--official-path`` names a folder holding the official ``geneformer`` package (not shipped with scfm; on a CPU
machine patched ``"cuda"`` -> ``"cpu"`` as ``../shared/fixtures/geneformer/PROVENANCE.md`` describes): its
``TranscriptomeTokenizer`` and ``EmbExtractor`` then run on the same files, cells and batch size as scfm, and the
outputs are compared (tokens cell by cell, embeddings by max absolute difference).

Every stage runs in its own subprocess so that its peak RSS (``ru_maxrss``) is its own. Data: the 200 real PBMCs of
the shared mirror (``$SCFM_MIRROR`` or ``../shared``), replicated. The models are random-weight networks with the
real V1 6-layer (``config_6L_256.json``) and V2 12-layer (``config_12L_512.json``) configurations: compute does
not depend on the weights. For comparison, the official code on this machine class: tokenizer ~1,500 cells/s (V2,
h5ad to tokens), EmbExtractor V1 6L ~3.3 cells/s at batch 10 (~20 % of the fp32 matmul peak).

The "official-style" tokenizer line re-creates the official algorithm (scipy ``X / n_counts * 10000 / median``
on 512-cell chunks, then one ``np.argsort`` per cell) in this process, to compare on the same machine at the same
moment (shared machines vary). It is not the official code, which also reads the file and builds a dataset.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import cpu_capability, current_rss_mib, matmul_peak_gflops, mirror, pbmc_replicas, peak_rss_mib

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]


def _mirror() -> Path:
    return mirror("fixtures/geneformer")


def _pbmc(n_cells: int):
    return pbmc_replicas(n_cells, _mirror() / "fixtures" / "geneformer" / "input_pbmc200.h5ad")


# ---- stages (each runs in a subprocess and prints one JSON line) --------------------------------------------------
def stage_matmul(_: argparse.Namespace) -> dict:
    import torch

    return {
        "fp32_gflops": round(matmul_peak_gflops("float32"), 1),
        "bf16_gflops": round(matmul_peak_gflops("bfloat16"), 1),
        "threads": torch.get_num_threads(),
        "cpu_capability": cpu_capability(),
    }


def stage_tokenize(args: argparse.Namespace) -> dict:
    import scipy.sparse as sp

    from scfm.models.geneformer import build_gene_plan, load_dictionaries, tokenize

    d = load_dictionaries(_mirror() / "resources" / "geneformer" / "v2")
    a = _pbmc(args.tok_cells)
    tokenize(a[:500].copy(), d)  # warm-up
    best = 0.0
    for _ in range(args.repeats):
        t = time.perf_counter()
        toks = tokenize(a, d)
        best = max(best, a.n_obs / (time.perf_counter() - t))
    # the official algorithm, re-created (see the module docstring), on a 2,000-cell slice
    plan = build_gene_plan(a.var, d)
    loc = np.flatnonzero(plan.var_slot >= 0)
    med = 1 / plan.slot_recip_median
    tok = plan.slot_token
    m = min(2000, a.n_obs)
    X = a.X[:m]
    n = a.obs["n_counts"].to_numpy()[:m, None]
    t = time.perf_counter()
    ref = []
    for i in range(0, m, 512):
        Xn = sp.csr_matrix(X[i : i + 512][:, loc] / n[i : i + 512] * 10_000 / med)
        ref += [tok[Xn[j].indices][np.argsort(-Xn[j].data)] for j in range(Xn.shape[0])]
    official_style = m / (time.perf_counter() - t)
    return {
        "cells": a.n_obs,
        "cells_per_s": round(best),
        "official_style_cells_per_s": round(official_style),
        "speedup_vs_official_style": round(best / official_style, 1),
        "speedup_vs_official_1500": round(best / 1500, 1),
        "mean_tokens": round(float(toks.lengths.mean()), 1),
        "peak_rss_mib": round(peak_rss_mib()),
    }


def _random_model(version: str, config: str):
    import torch

    from scfm.models.geneformer import BertConfig, GeneformerModel, GeneformerNetwork, load_dictionaries

    res = _mirror() / "resources" / "geneformer" / version.lower()
    cfg = BertConfig.from_json(res / config)
    torch.manual_seed(0)
    net = GeneformerNetwork(cfg)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.02)
    return GeneformerModel(net, load_dictionaries(res), device="cpu", random_weights=True)


def _flops_per_cell(cfg, lens: np.ndarray, n_layers: int) -> float:
    """Matmul FLOPs of ``n_layers`` encoder layers (projections, MLP, attention scores and values)."""
    h, i = cfg.hidden_size, cfg.intermediate_size
    per_tok = 2 * (4 * h * h + 2 * h * i)
    return float(np.sum(n_layers * (per_tok * lens + 4 * lens.astype(np.float64) ** 2 * h)))


def stage_embed(args: argparse.Namespace) -> dict:
    import torch

    from scfm.models import CellData

    version, config, n_cells, precision = args.model.split(":")
    m = _random_model(version, config)
    torch.set_num_threads(int(args.threads) if args.threads else torch.get_num_threads())
    a = _pbmc(200)[: int(n_cells)].copy()
    from scfm.models.geneformer import tokenize

    lens = tokenize(a, m).lengths
    cd = CellData(a)
    m.embed(CellData(a[:2].copy()), batch_size=2, device="cpu", precision=precision)  # warm-up
    key = "fp32" if precision == "float32" else "bf16"
    peak_before = stage_matmul(args)[f"{key}_gflops"]  # the same moment: shared machines vary
    t = time.perf_counter()
    m.embed(cd, batch_size=10, device="cpu", precision=precision)
    dt = time.perf_counter() - t
    peak = max(peak_before, stage_matmul(args)[f"{key}_gflops"])
    n_layers = m.network.layer_to_quant(-1)
    flops = _flops_per_cell(m.network.config, lens, n_layers)
    return {
        "model": f"{version} {config}",
        "precision": precision,
        "cells": int(n_cells),
        "mean_tokens": round(float(lens.mean()), 1),
        "layers_run": n_layers,
        "cells_per_s": round(int(n_cells) / dt, 2),
        "tokens_per_s": round(float(lens.sum()) / dt),
        "gflops_per_s": round(flops / dt / 1e9, 1),
        "matmul_peak_now": peak,
        "pct_of_matmul_peak": round(100 * flops / dt / 1e9 / peak, 1),
        "peak_rss_mib": round(peak_rss_mib()),
    }


def stage_write_backed(args: argparse.Namespace) -> dict:
    """Write a big h5ad chunk by chunk (never all in memory)."""
    import anndata as ad
    import h5py
    import pandas as pd

    base = _pbmc(200)
    n = int(args.backed_cells)
    path = Path(args.path)
    first = ad.AnnData(base.X, obs=base.obs.iloc[:0].copy().reindex(base.obs_names), var=base.var)
    first.obs = base.obs.copy()
    first.write_h5ad(path)
    t = time.perf_counter()
    with h5py.File(path, "r+") as f:
        Xd = ad.io.sparse_dataset(f["X"])
        done = base.n_obs
        while done < n:
            k = min(base.n_obs, n - done)
            Xd.append(base.X[:k])
            done += k
        obs = pd.DataFrame(
            {"n_counts": np.tile(base.obs["n_counts"].to_numpy(), n // base.n_obs + 1)[:n]},
            index=[f"c{i}" for i in range(n)],
        )
        del f["obs"]
        ad.io.write_elem(f, "obs", obs)
    return {"cells": n, "file_mib": round(path.stat().st_size / 2**20), "write_s": round(time.perf_counter() - t, 1)}


def stage_tokenize_h5ad(args: argparse.Namespace) -> dict:
    """End to end, as the official figure is quoted: read an h5ad of ``--tok-cells`` PBMCs, tokenize (V2)."""
    import anndata as ad

    from scfm.models.geneformer import load_dictionaries, tokenize

    d = load_dictionaries(_mirror() / "resources" / "geneformer" / "v2")
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pbmc.h5ad"
        _pbmc(args.tok_cells).write_h5ad(path)
        tokenize(ad.read_h5ad(path)[:500].copy(), d)  # warm-up (compiles the kernel)
        for mode in ("memory", "backed"):
            best = 0.0
            for _ in range(args.repeats):
                t = time.perf_counter()
                tokenize(ad.read_h5ad(path, backed="r" if mode == "backed" else None), d)
                best = max(best, args.tok_cells / (time.perf_counter() - t))
            out[f"{mode}_cells_per_s"] = round(best)
    return {"cells": args.tok_cells, **out, "peak_rss_mib": round(peak_rss_mib())}


def stage_tokenize_official(args: argparse.Namespace) -> dict:
    """The official ``TranscriptomeTokenizer`` on the same h5ad (if its package is given), and scfm beside it.

    ``--official-path`` is a folder holding the official ``geneformer`` package (not shipped with scfm; needs
    ``datasets`` and ``loompy``). Both tokenizers read the same file, h5ad to tokens (best of 2 runs for the
    official code, best of 3 for scfm); the tokens are compared cell by cell.
    """
    import anndata as ad

    sys.path.insert(0, str(Path(args.official_path).resolve()))
    from geneformer.tokenizer import TranscriptomeTokenizer

    from scfm.models.geneformer import load_dictionaries, tokenize

    d = load_dictionaries(_mirror() / "resources" / "geneformer" / "v2")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in"
        src.mkdir()
        a = _pbmc(args.tok_cells)
        a.obs["cell_id"] = np.arange(a.n_obs)
        a.write_h5ad(src / "pbmc.h5ad")
        official = TranscriptomeTokenizer(
            custom_attr_name_dict={"cell_id": "cell_id"}, nproc=1, chunk_size=512, model_input_size=4096,
            special_token=True, collapse_gene_ids=True,
        )
        t_official = np.inf  # best of 2 (the official run takes tens of seconds), scfm best of 3
        for r in range(2):
            t = time.perf_counter()
            official.tokenize_data(src, Path(tmp), f"official{r}", file_format="h5ad")
            t_official = min(t_official, time.perf_counter() - t)
        tokenize(ad.read_h5ad(src / "pbmc.h5ad")[:500].copy(), d)  # warm-up (compiles the kernel)
        t_ours = np.inf
        for _ in range(3):
            t = time.perf_counter()
            ours = tokenize(ad.read_h5ad(src / "pbmc.h5ad"), d)
            t_ours = min(t_ours, time.perf_counter() - t)
        from datasets import load_from_disk

        ds = load_from_disk(str(Path(tmp) / "official0.dataset"))
        ids, cells = ds["input_ids"], ds["cell_id"]
        same = sum(np.array_equal(np.asarray(ids[i]), ours.cell(int(cells[i]))) for i in range(len(ids)))
    return {
        "cells": args.tok_cells,
        "official_cells_per_s": round(args.tok_cells / t_official),
        "scfm_cells_per_s": round(args.tok_cells / t_ours),
        "speedup": round(t_official / t_ours, 1),
        "cells_with_identical_tokens": int(same),
    }


def stage_embed_official(args: argparse.Namespace) -> dict:
    """The official ``EmbExtractor`` beside ``scfm.tl.embed``: same random real-size V1 6L model, same cells, batch 10.

    The official code hard-codes ``"cuda"``; on a CPU machine use a copy patched as described in
    ``../shared/fixtures/geneformer/PROVENANCE.md`` (``"cuda"`` → ``"cpu"``). Needs ``transformers``, ``peft``,
    ``tdigest``, ``datasets``, ``loompy``.
    """
    import anndata as ad
    import torch
    from transformers import BertConfig as HFConfig
    from transformers import BertForMaskedLM

    sys.path.insert(0, str(Path(args.official_path).resolve()))
    from geneformer.emb_extractor import EmbExtractor
    from geneformer.tokenizer import TranscriptomeTokenizer

    import scfm

    res = _mirror() / "resources" / "geneformer" / "v1"
    n = int(args.cells_v1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        hf = BertForMaskedLM(HFConfig.from_json_file(res / "config_6L_256.json")).eval()
        hf.save_pretrained(tmp / "model", safe_serialization=True)
        (tmp / "in").mkdir()
        a = _pbmc(n)
        a.obs["cell_id"] = np.arange(n)
        a.write_h5ad(tmp / "in" / "pbmc.h5ad")
        TranscriptomeTokenizer(
            custom_attr_name_dict={"cell_id": "cell_id"}, nproc=1, chunk_size=512, model_input_size=2048,
            special_token=False, collapse_gene_ids=True, gene_median_file=res / "gene_median_dictionary_gc30M.pkl",
            token_dictionary_file=res / "token_dictionary_gc30M.pkl",
            gene_mapping_file=res / "ensembl_mapping_dict_gc30M.pkl",
        ).tokenize_data(tmp / "in", tmp, "v1", file_format="h5ad")
        ex = EmbExtractor(
            model_type="Pretrained", num_classes=0, emb_mode="cell", cell_emb_style="mean_pool", filter_data=None,
            max_ncells=None, emb_layer=-1, emb_label=["cell_id"], forward_batch_size=10, nproc=1,
            token_dictionary_file=str(res / "token_dictionary_gc30M.pkl"),
        )
        t = time.perf_counter()
        off = ex.extract_embs(str(tmp / "model"), str(tmp / "v1.dataset"), str(tmp), "emb")
        t_official = time.perf_counter() - t
        m = scfm.models.load("geneformer", checkpoint=tmp / "model", resources=res, device="cpu")
        b = ad.read_h5ad(tmp / "in" / "pbmc.h5ad")
        scfm.tl.embed(b[:2].copy(), model=m, batch_size=2)  # warm-up
        t = time.perf_counter()
        scfm.tl.embed(b, model=m, batch_size=10, pooling="mean")
        t_ours = time.perf_counter() - t
        off_x = off.drop(columns=["cell_id"]).to_numpy(np.float32)
        ours = b.obsm["X_geneformer"][off["cell_id"].to_numpy().astype(int)]
    return {
        "cells": n,
        "official_cells_per_s": round(n / t_official, 2),
        "scfm_cells_per_s": round(n / t_ours, 2),
        "speedup": round(t_official / t_ours, 2),
        "max_abs_diff": float(np.abs(off_x - ours).max()),
    }


def stage_tokenize_backed(args: argparse.Namespace) -> dict:
    import anndata as ad

    from scfm.models import CellData
    from scfm.models.geneformer import build_gene_plan, iter_tokenized, load_dictionaries

    d = load_dictionaries(_mirror() / "resources" / "geneformer" / "v2")
    a = ad.read_h5ad(args.path, backed="r")
    cd = CellData(a, chunk_size=int(args.chunk))
    plan = build_gene_plan(cd.var, d)
    before = current_rss_mib()
    t = time.perf_counter()
    n_tok = 0
    rss: list[float] = []
    for _, toks, _ in iter_tokenized(cd, plan, d):
        n_tok += int(toks.lengths.sum())  # streamed: tokens are not kept
        rss.append(current_rss_mib())
    dt = time.perf_counter() - t
    a.file.close()
    k = max(1, len(rss) // 4)
    return {"cells": a.n_obs, "chunk": int(args.chunk), "cells_per_s": round(a.n_obs / dt), "tokens": n_tok,
            "rss_before_mib": round(before), "rss_during_mib": [round(x) for x in rss[::k]],
            "peak_rss_mib": round(peak_rss_mib())}


STAGES = {
    "matmul": stage_matmul,
    "tokenize": stage_tokenize,
    "embed": stage_embed,
    "write_backed": stage_write_backed,
    "tokenize_backed": stage_tokenize_backed,
    "tokenize_h5ad": stage_tokenize_h5ad,
    "tokenize_official": stage_tokenize_official,
    "embed_official": stage_embed_official,
}


def _run(stage: str, **kw) -> dict:
    cmd = [sys.executable, str(HERE), "--stage", stage]
    for k, v in kw.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"stage {stage} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tokenisation and matmul peak only")
    p.add_argument("--tok-cells", type=int, default=20_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cells-v1", type=int, default=200)
    p.add_argument("--cells-v2", type=int, default=40)
    p.add_argument("--backed-cells", type=int, default=0, help="also tokenise a backed h5ad of this many cells")
    p.add_argument("--chunk", type=int, default=10_000)
    p.add_argument("--threads", default="")
    p.add_argument("--official-path", default="", help="folder holding the official `geneformer` package: "
                   "also time its TranscriptomeTokenizer on the same file")
    # internal
    p.add_argument("--stage", default="")
    p.add_argument("--model", default="")
    p.add_argument("--path", default="")
    args = p.parse_args()

    if args.stage:
        print(json.dumps(STAGES[args.stage](args)))
        return

    results: dict = {}
    peak = _run("matmul")
    results["matmul_peak"] = peak
    print(f"matmul peak: fp32 {peak['fp32_gflops']} GFLOP/s, bf16 {peak['bf16_gflops']} GFLOP/s "
          f"({peak['threads']} threads, CPU capability {peak['cpu_capability']})")
    tok = _run("tokenize", tok_cells=args.tok_cells, repeats=args.repeats)
    results["tokenize"] = tok
    print(f"tokenize V2, {tok['cells']} PBMC cells in memory: {tok['cells_per_s']} cells/s "
          f"(official-style here: {tok['official_style_cells_per_s']} cells/s, x{tok['speedup_vs_official_style']}; "
          f"vs official 1,500 cells/s: x{tok['speedup_vs_official_1500']}), peak RSS {tok['peak_rss_mib']} MiB")
    from scfm._torch import cpu_has_native_bf16

    native_bf16 = cpu_has_native_bf16()
    h5 = _run("tokenize_h5ad", tok_cells=args.tok_cells, repeats=args.repeats)
    results["tokenize_h5ad"] = h5
    print(f"tokenize V2, h5ad file -> tokens, {h5['cells']} cells: read into memory {h5['memory_cells_per_s']} "
          f"cells/s, backed {h5['backed_cells_per_s']} cells/s (x{h5['memory_cells_per_s'] / 1500:.1f} / "
          f"x{h5['backed_cells_per_s'] / 1500:.1f} vs the official 1,500 cells/s quoted for a ~360 GFLOP/s machine)")
    if args.official_path:
        o = _run("tokenize_official", tok_cells=args.tok_cells, official_path=args.official_path)
        results["tokenize_official"] = o
        print(f"tokenize V2, h5ad -> tokens, {o['cells']} cells, side by side: official TranscriptomeTokenizer "
              f"{o['official_cells_per_s']} cells/s, scfm {o['scfm_cells_per_s']} cells/s (x{o['speedup']}); "
              f"identical tokens for {o['cells_with_identical_tokens']} of {o['cells']} cells")
    if args.official_path and not args.quick:
        o = _run("embed_official", cells_v1=args.cells_v1, official_path=args.official_path)
        results["embed_official"] = o
        print(f"embed V1 6L fp32, batch 10, {o['cells']} cells, side by side: official EmbExtractor "
              f"{o['official_cells_per_s']} cells/s, scfm {o['scfm_cells_per_s']} cells/s (x{o['speedup']}); "
              f"max |difference| {o['max_abs_diff']:.2e}")
    if not args.quick:
        for spec in (f"V1:config_6L_256.json:{args.cells_v1}", f"V2:config_12L_512.json:{args.cells_v2}"):
            for prec in ("float32", "bfloat16"):
                if prec == "bfloat16" and not native_bf16:
                    print(f"embed {spec.split(':')[1]} bfloat16: skipped, this CPU has no native bf16 "
                          f"(bf16 matmul peak {peak['bf16_gflops']} GFLOP/s)")
                    continue
                r = _run("embed", model=f"{spec}:{prec}", threads=args.threads)
                key = "fp32" if prec == "float32" else "bf16"
                results.setdefault("embed", []).append(r)
                extra = f", x{r['cells_per_s'] / 3.3:.1f} vs official 3.3 cells/s" if spec.startswith("V1") else ""
                print(f"embed {r['model']} {prec}, batch 10, {r['cells']} cells (mean {r['mean_tokens']} tokens, "
                      f"{r['layers_run']} layers run): {r['cells_per_s']} cells/s, {r['tokens_per_s']} tokens/s, "
                      f"{r['gflops_per_s']} GFLOP/s = {r['pct_of_matmul_peak']} % of the {key} matmul peak measured "
                      f"around it ({r['matmul_peak_now']}){extra}; "
                      f"peak RSS {r['peak_rss_mib']} MiB")
    if args.backed_cells:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "big.h5ad"
            w = _run("write_backed", backed_cells=args.backed_cells, path=path)
            r = _run("tokenize_backed", path=path, chunk=args.chunk)
            results["backed"] = {**w, **r}
            print(f"tokenize backed h5ad, {r['cells']} cells ({w['file_mib']} MiB file), chunk {r['chunk']}: "
                  f"{r['cells_per_s']} cells/s; RSS before {r['rss_before_mib']} MiB, during (every quarter) "
                  f"{r['rss_during_mib']} MiB, peak {r['peak_rss_mib']} MiB")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
