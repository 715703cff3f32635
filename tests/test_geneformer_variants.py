"""Geneformer on input variants beyond the shared fixtures: deep cells, few genes, duplicate IDs, n_counts types.

Each test compares scfm with an independent, straightforward per-cell computation of the official rules
(``shared/fixtures/geneformer/PROVENANCE.md``: T1-T8, E1/E4/E5) or with the official fixture tokens.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import scfm
from scfm.models.geneformer import load_dictionaries, tokenize

ATOL, RTOL = 1e-5, 1e-4


@pytest.fixture(scope="module")
def pbmc(gf: Path) -> ad.AnnData:
    a = ad.read_h5ad(gf / "input_pbmc200.h5ad")
    a.var["ensembl_id"] = a.var["ensembl_id"].astype(str)
    return a


def _reference_tokens(X: np.ndarray, n_counts: np.ndarray, ids: list[str], d, size: int) -> list[np.ndarray]:
    """Per cell: official T2-T8 on a dense row (no duplicates, no ties): value = count * (1/n) * 1e4 * (1/median)."""
    genes = [(j, d.mapping_dict.get(g.upper())) for j, g in enumerate(ids)]
    genes = [(j, m) for j, m in genes if m is not None]
    cols = np.array([j for j, _ in genes])
    tok = np.array([d.token_dict[m] for _, m in genes])
    recip_med = np.divide(1, np.array([d.median_dict[m] for _, m in genes]))
    special = d.special_token
    out = []
    for i in range(X.shape[0]):
        x = X[i, cols]
        nz = np.flatnonzero(x)
        v = x[nz] * np.divide(1, n_counts[i : i + 1])[0] * 10_000 * recip_med[nz]
        assert len(np.unique(v)) == len(v)  # no exact ties: any sort order is the official one
        t = tok[nz][np.argsort(-v, kind="stable")]
        if special:
            t = np.r_[d.cls_id, t[: size - 2], d.eos_id]
        else:
            t = t[:size]
        out.append(t)
    return out


@pytest.mark.parametrize("v", ["v1", "v2"])
def test_deep_cells_and_float32_n_counts(pbmc, res, v):
    """Cells with more expressed genes than the input size (2048 / 4096) are cut to their top genes."""
    rng = np.random.default_rng(1)
    X = pbmc.X.tocsr()
    rows = [np.asarray(X[rng.choice(200, k, replace=False)].sum(0)).ravel() for k in (3, 40, 120)]
    D = np.stack(rows).astype(np.float32)
    d = load_dictionaries(res / v)
    for dtype in (np.int64, np.float32):
        n_counts = D.sum(1).astype(dtype)
        a = ad.AnnData(sp.csr_matrix(D), obs=pd.DataFrame({"n_counts": n_counts}, index=["c3", "c40", "c120"]),
                       var=pbmc.var.copy())
        toks = tokenize(a, d)
        ref = _reference_tokens(D, n_counts, list(a.var["ensembl_id"]), d, d.model_input_size)
        for i in range(3):
            np.testing.assert_array_equal(toks.cell(i), ref[i])
        assert toks.lengths.max() == d.model_input_size  # the deepest cell is truncated


def test_v2_collapse_triggered_by_symbol_key(pbmc, gf, res):
    """V2: an ``ensembl_id`` entry that is a symbol key of the mapping dict (``FTL``), a lower-case copy of an ID,
    an exact duplicate and out-of-vocabulary duplicates: the copies are summed (official collapse branch, T3), so
    with the counts split between the copies the tokens are those of the original cells."""
    cells = np.arange(20, 30)
    a = pbmc[cells]
    X = a.X.toarray()
    ids = list(a.var["ensembl_id"])
    extra, names = [], []
    rng = np.random.default_rng(0)
    for gid, new in [("ENSG00000087086", "FTL"), ("ENSG00000019582", "ensg00000019582"),
                     ("ENSG00000075624", "ENSG00000075624"), (None, "ENSG99999999999"), (None, "ENSG99999999999"),
                     ("ENSG00000075624", "ENSG00000075624.7")]:  # versioned: matched without the version
        if gid is None:
            extra.append(rng.integers(0, 3, len(cells)).astype(np.float32))
        else:
            j = ids.index(gid)
            half = np.floor(X[:, j] / 2)
            extra.append(X[:, j] - half)
            X[:, j] = half
        names.append(new)
    var = pd.DataFrame({"ensembl_id": ids + names}, index=[f"g{i}" for i in range(len(ids) + len(names))])
    b = ad.AnnData(sp.csr_matrix(np.c_[X, np.stack(extra, 1)]), obs=a.obs.copy(), var=var)
    toks = tokenize(b, load_dictionaries(res / "v2"))
    ref = np.load(gf / "tokens_v2.npz", allow_pickle=True)
    for k, i in enumerate(cells):
        np.testing.assert_array_equal(toks.cell(k), ref["input_ids"][ref["offsets"][i] : ref["offsets"][i + 1]])


@pytest.mark.parametrize("v", ["v1", "v2"])
def test_cells_with_few_known_genes(pbmc, gf, res, v):
    """Cells with 1-3 genes of the vocabulary (plus unmapped genes): embeddings equal a direct one-cell forward
    pass; ``delete`` of a cell's only gene is NaN for V1 (nothing to compare) and the ``<cls>`` cosine for V2."""
    m = scfm.models.load("geneformer", checkpoint=gf / f"tiny-{v}", resources=res / v, random_weights=True)
    d = m.dictionaries
    ids = np.asarray(pbmc.var["ensembl_id"])
    unmapped = np.flatnonzero(ids == "")
    actb = int(np.flatnonzero(ids == "ENSG00000075624")[0])
    known = [j for j in np.flatnonzero(ids != "") if d.token_of(ids[j]) is not None and j != actb][:3]
    X = np.zeros((3, pbmc.n_vars), dtype=np.float32)
    X[:, unmapped[:20]] = 5
    X[0, actb] = 2
    X[1, [actb, known[0]]] = [4, 1]
    X[2, known] = [3, 2, 1]
    a = ad.AnnData(sp.csr_matrix(X), obs=pd.DataFrame(index=["one", "two", "three"]), var=pbmc.var.copy())
    scfm.tl.embed(a, model=m, pooling="mean")
    toks = tokenize(a, d)
    net = m.network
    layer = net.num_layers - 1
    for i in range(3):
        t = torch.as_tensor(toks.cell(i), dtype=torch.long)[None]
        with torch.no_grad():
            h = net.hidden_states(t, [t.shape[1]], layer=layer)[0]
        exp = h[1:-1].mean(0) if d.special_token else h.mean(0)
        np.testing.assert_allclose(a.obsm["X_geneformer"][i], exp.numpy(), atol=ATOL, rtol=RTOL)
    assert [len(toks.cell(i)) for i in range(3)] == ([3, 4, 5] if d.special_token else [1, 2, 3])
    scfm.tl.in_silico_perturb(a, genes=["ENSG00000075624"], model=m, perturbation="delete")
    vals = a.obsm["geneformer_perturbation"].iloc[:, 0]
    assert np.isnan(vals["three"])  # lacks the gene
    assert np.isfinite(vals["two"])
    assert np.isfinite(vals["one"]) if d.special_token else np.isnan(vals["one"])


@pytest.mark.parametrize("v", ["v1", "v2"])
def test_versioned_ensembl_ids_are_matched(pbmc, gf, res, v):
    """'ENSG….7' IDs (dropped by the official code) are looked up without the version: the official tokens."""
    ref = np.load(gf / f"tokens_{v}.npz", allow_pickle=True)
    a = pbmc.copy()
    ids = a.var["ensembl_id"].to_numpy(dtype=object)
    a.var["ensembl_id"] = [f"{g}.{i % 20 + 1}" if g.startswith("ENSG") else g for i, g in enumerate(ids)]
    d = load_dictionaries(res / v)
    toks = tokenize(a, d)
    np.testing.assert_array_equal(toks.offsets, ref["offsets"])
    np.testing.assert_array_equal(toks.input_ids, ref["input_ids"])
    from scfm.models.geneformer._tokenizer import build_gene_plan

    plan = build_gene_plan(a.var, d)
    assert plan.coverage["n_versioned_ids_matched_without_version"] == plan.coverage["n_genes_in_vocabulary"] > 0
    assert build_gene_plan(pbmc.var, d).coverage["n_versioned_ids_matched_without_version"] == 0


def test_cell_by_cell_attention_equals_masked_batch(gf):
    """On CPU a padded batch attends cell by cell; the masked batched call (used on GPUs) gives the same states."""
    m = scfm.models.load("geneformer", checkpoint=gf / "tiny-v2", resources=gf.parent.parent / "resources"
                         / "geneformer" / "v2")
    net = m.network
    rng = np.random.default_rng(0)
    lengths = torch.tensor([40, 23, 7])
    ids = torch.from_numpy(rng.integers(4, net.config.vocab_size, (3, 40)))
    with torch.inference_mode():
        h = net.hidden_states(ids, lengths, layer=net.num_layers)
        x = net.embed_tokens(ids)
        mask = net.key_mask(lengths, 40)
        for blk in net.layers:
            x = blk(x, mask, None)
        one = [net.hidden_states(ids[i : i + 1, :n], torch.tensor([n]), layer=net.num_layers)[0]
               for i, n in enumerate(lengths.tolist())]
        first = net.hidden_states(ids, lengths, layer=net.num_layers, first_only=True)  # <cls> only, last layer
        first_mid = net.hidden_states(ids, lengths, layer=1, first_only=True)
        full_mid = net.hidden_states(ids, lengths, layer=1)
    for i, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(h[i, :n], x[i, :n], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(h[i, :n], one[i], atol=1e-5, rtol=1e-5)
    assert first.shape == (3, 1, h.shape[-1])
    torch.testing.assert_close(first, h[:, :1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(first_mid, full_mid[:, :1], atol=1e-5, rtol=1e-5)
