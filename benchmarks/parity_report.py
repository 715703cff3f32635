"""Print the largest absolute difference between scfm and every official reference in ``../shared/fixtures``.

The parity tests assert these bounds (≤ 1e-5); this script reports the measured values, for release notes.
It uses the calling conventions of the issues: ``scfm.models.load(<family>, checkpoint=..., ...)`` and
``scfm.tl.embed``. Geneformer tokens are compared exactly (number of differing cells); embeddings as
max |scfm - official| over all cells and dimensions.

Usage::

    SCFM_MIRROR=../shared python benchmarks/parity_report.py
"""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from common import mirror

import scfm


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


def geneformer(shared) -> None:
    from scfm.models.geneformer import load_dictionaries, tokenize

    fx, res = shared / "fixtures" / "geneformer", shared / "resources" / "geneformer"
    pbmc = ad.read_h5ad(fx / "input_pbmc200.h5ad")
    for v in ("v1", "v2"):
        ref = np.load(fx / f"tokens_{v}.npz", allow_pickle=True)
        toks = tokenize(pbmc, load_dictionaries(res / v))
        n_diff = sum(not np.array_equal(toks.cell(i), ref["input_ids"][ref["offsets"][i] : ref["offsets"][i + 1]])
                     for i in range(pbmc.n_obs))
        print(f"geneformer {v} tokens: {pbmc.n_obs - n_diff}/{pbmc.n_obs} cells identical")
    index = np.load(fx / "tokens_v2.npz", allow_pickle=True)["cell_index"]
    for v, pooling, ref_file in [("v1", "mean", "emb_v1_cell.npy"), ("v2", "mean", "emb_v2_cell.npy"),
                                 ("v2", "cls", "emb_v2_cls.npy")]:
        m = scfm.models.load("geneformer", checkpoint=fx / f"tiny-{v}", resources=res / v, random_weights=True)
        a = pbmc.copy()
        scfm.tl.embed(a, model=m, pooling=pooling)
        ref = pd.DataFrame(np.load(fx / ref_file), index=index).loc[a.obs_names].to_numpy()
        print(f"geneformer {v} pooling={pooling}: max |diff| {_max_diff(a.obsm['X_geneformer'], ref):.2e}")


def scgpt(shared) -> None:
    fx = shared / "fixtures" / "scgpt"
    m = scfm.models.load("scgpt", checkpoint=fx / "tiny", random_weights=True)
    for max_length in (1200, 5000):
        a = ad.read_h5ad(fx / "input_pbmc200.h5ad")
        scfm.tl.embed(a, model=m, max_length=max_length, seed=0)
        ref = np.load(fx / f"cell_emb_maxlen{max_length}.npy")
        print(f"scgpt max_length={max_length}: max |diff| {_max_diff(a.obsm['X_scgpt'], ref):.2e}")


def scfoundation(shared) -> None:
    fx = shared / "fixtures" / "scfoundation"
    runs = json.loads((fx / "ref" / "runs.json").read_text())["runs"]
    models = {}
    for run in runs:
        args = run["get_embedding_args"]
        if args["output_type"] != "cell":
            continue
        key = "cell" if args["version"] == "ce" else "rde"
        if key not in models:
            models[key] = scfm.models.load("scfoundation", checkpoint=fx / "tiny" / "models.ckpt",
                                           checkpoint_key=key)
        if run["input_file"].endswith(".csv"):
            df = pd.read_csv(fx / run["input_file"], index_col=0)
            a = ad.AnnData(sp.csr_matrix(df.to_numpy()), obs=pd.DataFrame(index=df.index.astype(str)),
                           var=pd.DataFrame(index=df.columns.astype(str)))
        else:
            a = ad.read_h5ad(fx / run["input_file"])
        scfm.tl.embed(a, model=models[key], pre_normalized=args["pre_normalized"], tgthighres=args["tgthighres"],
                      pool=args["pool_type"])
        ref = np.load(fx / run["file"])
        print(f"scfoundation {run['file'].split('/')[-1]}: max |diff| {_max_diff(a.obsm['X_scfoundation'], ref):.2e}")


def main() -> None:
    shared = mirror()
    scfm.settings.mirror = shared
    scfm.settings.verbosity = 0
    scfm.settings.device = "cpu"
    geneformer(shared)
    scgpt(shared)
    scfoundation(shared)


if __name__ == "__main__":
    main()
