"""Geneformer: parity with the official tokenizer / EmbExtractor (shared fixtures) and input handling."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import scfm
from scfm.models.geneformer import build_gene_plan, load_dictionaries, tokenize
from scfm.models.geneformer._tokenizer import TARGET_SUM, tokenize_block

ATOL, RTOL = 1e-5, 1e-4


# ---- fixtures ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pbmc(gf: Path) -> ad.AnnData:
    return ad.read_h5ad(gf / "input_pbmc200.h5ad")


@pytest.fixture(scope="module")
def m1(gf: Path, res: Path):
    return scfm.models.load("geneformer", checkpoint=gf / "tiny-v1", resources=res / "v1", random_weights=True)


@pytest.fixture(scope="module")
def m2(gf: Path, res: Path):
    return scfm.models.load("geneformer", checkpoint=gf / "tiny-v2", resources=res / "v2", random_weights=True)


def _tokens(gf: Path, v: str) -> dict[str, np.ndarray]:
    f = np.load(gf / f"tokens_{v}.npz", allow_pickle=True)
    return {k: f[k] for k in f.files}


def _short_cells(gf: Path, n: int) -> np.ndarray:
    """Positions of the ``n`` shortest cells (V2 tokens), to keep forward passes cheap."""
    return np.sort(np.argsort(_tokens(gf, "v2")["lengths"], kind="stable")[:n])


def _snapshot(a: ad.AnnData) -> tuple:
    return (list(a.obsm), list(a.varm), list(a.obs.columns), list(a.var.columns), dict(a.uns).keys())


# ---- tokenizer parity -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("v", ["v1", "v2"])
def test_tokens_identical_to_official(pbmc, gf, res, v):
    ref = _tokens(gf, v)
    toks = tokenize(pbmc, load_dictionaries(res / v))
    assert list(ref["cell_index"]) == list(pbmc.obs_names)
    np.testing.assert_array_equal(toks.offsets, ref["offsets"])
    np.testing.assert_array_equal(toks.input_ids, ref["input_ids"])
    if v == "v1":  # 26 cells are deeper than the input size: truncated to the top 2048 genes
        assert (toks.lengths == 2048).sum() == 26
    else:
        starts, ends = toks.offsets[:-1], toks.offsets[1:] - 1
        assert (toks.input_ids[starts] == 2).all() and (toks.input_ids[ends] == 3).all()


def test_tokens_through_model_and_without_n_counts(pbmc, gf, m2):
    ref = _tokens(gf, "v2")
    a = pbmc.copy()
    del a.obs["n_counts"]  # scfm uses the row sums over all genes (= the fixture's n_counts)
    toks = tokenize(a, m2)
    np.testing.assert_array_equal(toks.input_ids, ref["input_ids"])


def test_symbols_only_map_through_model_dictionaries(pbmc, gf, res):
    a = pbmc.copy()
    del a.var["ensembl_id"]  # var_names are symbols: mapped with gene_name_id_dict_gc95M
    d = load_dictionaries(res / "v2")
    plan = build_gene_plan(a.var, d)
    assert plan.coverage["n_symbols_mapped_to_ensembl"] == 14030
    np.testing.assert_array_equal(tokenize(a, d).input_ids, _tokens(gf, "v2")["input_ids"])


def test_duplicate_ids_are_summed(pbmc, gf, res):
    """Two columns with the same Ensembl ID: counts summed, the summed column placed after the others (T3)."""
    cells = np.arange(8)
    a = pbmc[cells].copy()
    j = int(np.flatnonzero(a.var["ensembl_id"] == "ENSG00000075624")[0])  # ACTB
    X = a.X.toarray()
    half = np.floor(X[:, j] / 2)
    X2 = np.c_[X, X[:, j] - half]
    X2[:, j] = half
    var = pd.concat([a.var, a.var.iloc[[j]]])
    var.index = [*a.var_names, "ACTB-copy"]
    b = ad.AnnData(sp.csr_matrix(X2.astype(np.float32)), obs=a.obs.copy(), var=var)
    d = load_dictionaries(res / "v2")
    plan = build_gene_plan(b.var, d)
    assert plan.collapsed and plan.coverage["duplicate_ids_collapsed"] == 1
    toks = tokenize(b, d)
    ref = _tokens(gf, "v2")
    for i in cells:
        np.testing.assert_array_equal(toks.cell(i), ref["input_ids"][ref["offsets"][i] : ref["offsets"][i + 1]])


def test_truncation_keeps_top_genes(pbmc, gf, res):
    ref = _tokens(gf, "v2")
    toks = tokenize(pbmc[:5], load_dictionaries(res / "v2"), model_input_size=50)
    for i in range(5):
        full = ref["input_ids"][ref["offsets"][i] : ref["offsets"][i + 1]]
        expect = np.r_[full[:49], full[-1]]  # <cls> + top 48 genes + <eos>
        np.testing.assert_array_equal(toks.cell(i), expect)


def _reference_tokens(X: sp.csr_matrix, n_counts: np.ndarray, plan) -> list[np.ndarray]:
    """Straightforward per-cell implementation: the official formula and a *stable* descending sort."""
    out = []
    for i in range(X.shape[0]):
        row = X[i]
        slot = plan.var_slot[row.indices]
        keep = slot >= 0
        s, c = slot[keep], row.data[keep]
        order = np.argsort(s, kind="stable")
        s, c = s[order], c[order]
        v = c * np.divide(1, n_counts[i]) * TARGET_SUM * plan.slot_recip_median[s]
        out.append(plan.slot_token[s[np.argsort(-v, kind="stable")]])
    return out


def test_ties_deterministic_and_match_stable_sort(res):
    """Many exact ties (equal counts of genes with equal medians) and near-ties: stable order, exactly."""
    d = load_dictionaries(res / "v2")
    med = pd.Series(d.median_dict)
    in_vocab = med[med.index.isin(list(d.token_dict))]
    shared_median = in_vocab[in_vocab.duplicated(keep=False)].index[:300]  # genes sharing one median
    others = in_vocab.index[~in_vocab.index.isin(shared_median)][:700]
    ids = np.r_[np.asarray(shared_median), np.asarray(others)]
    rng = np.random.default_rng(0)
    n = 300
    X = sp.random(n, len(ids), density=0.4, format="csr", random_state=rng)
    X.data = np.ceil(X.data * 3).astype(np.float32)  # counts 1..3: ties everywhere
    var = pd.DataFrame({"ensembl_id": ids}, index=[f"g{i}" for i in range(len(ids))])
    plan = build_gene_plan(var, d)
    n_counts = np.asarray(X.sum(1)).ravel().astype(np.int64) + 7
    toks, _ = tokenize_block(X, n_counts, plan, model_input_size=10_000, cls_id=None, eos_id=None)
    ref = _reference_tokens(X, n_counts, plan)
    for i in range(n):
        np.testing.assert_array_equal(toks.cell(i), ref[i])


def test_explicit_zeros_are_not_genes(pbmc, gf, res):
    a = pbmc[:3].copy()
    X = a.X.tocsr().copy()
    X.data[:5] = 0  # stored zeros
    a.X = X
    d = load_dictionaries(res / "v2")
    toks = tokenize(a, d, validate=True)
    b = a.copy()
    b.X.eliminate_zeros()
    np.testing.assert_array_equal(toks.input_ids, tokenize(b, d).input_ids)


# ---- embeddings: the public calling convention -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("which", "pooling", "ref_file"),
    [("m1", "mean", "emb_v1_cell.npy"), ("m2", "mean", "emb_v2_cell.npy"), ("m2", "cls", "emb_v2_cls.npy")],
)
def test_cell_embeddings_match_official(pbmc, gf, request, which, pooling, ref_file):
    m = request.getfixturevalue(which)
    a = pbmc.copy()
    scfm.tl.embed(a, model=m, pooling=pooling)
    ref = pd.DataFrame(np.load(gf / ref_file), index=_tokens(gf, "v2")["cell_index"])
    got = a.obsm["X_geneformer"]
    assert got.shape == (200, 64) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref.loc[a.obs_names].to_numpy(), atol=ATOL, rtol=RTOL)
    prov = a.uns["scfm"]["X_geneformer"]
    assert prov["params"]["pooling"] == pooling and prov["random_weights"]
    assert "X_geneformer_valid" not in a.obs


def test_gene_embeddings_match_official(pbmc, gf, m2):
    ref = np.load(gf / "emb_v2_gene.npz", allow_pickle=True)
    a = pbmc[list(ref["cell_index"])].copy()
    scfm.tl.gene_embeddings(a, model=m2, batch_size=2)
    got = pd.DataFrame(a.varm["geneformer_gene"], index=a.var["ensembl_id"].astype(str).to_numpy())
    ids = [g for g in ref["gene_ids"] if not str(g).startswith("<")]
    exp = pd.DataFrame(ref["gene_embs"], index=ref["gene_ids"]).loc[ids]
    assert len(ids) > 1000
    np.testing.assert_allclose(got.loc[ids].to_numpy(), exp.to_numpy(), atol=ATOL, rtol=RTOL)
    # genes not in either cell's input have no embedding
    n_embedded = int(np.isfinite(a.varm["geneformer_gene"][:, 0]).sum())
    assert n_embedded == len(ids)


def test_cell_without_known_gene_is_nan_and_masked(pbmc, gf, m2):
    cells = _short_cells(gf, 6)
    a = pbmc[cells].copy()
    X = a.X.toarray()
    unmapped = np.flatnonzero(a.var["ensembl_id"].astype(str) == "")[:5]
    empty = np.zeros((1, a.n_vars), dtype=np.float32)
    empty[0, unmapped] = 3
    obs = pd.concat([a.obs, pd.DataFrame({"n_counts": [15], "cell_id": ["junk"]}, index=["junk"])])
    b = ad.AnnData(sp.csr_matrix(np.r_[X, empty]), obs=obs, var=a.var.copy())
    scfm.tl.embed(b, model=m2, pooling="mean")
    E = b.obsm["X_geneformer"]
    assert np.isnan(E[-1]).all() and np.isfinite(E[:-1]).all()
    assert b.obs["X_geneformer_valid"].tolist() == [True] * 6 + [False]
    ref = pd.DataFrame(np.load(gf / "emb_v2_cell.npy"), index=_tokens(gf, "v2")["cell_index"])
    np.testing.assert_allclose(E[:-1], ref.loc[a.obs_names].to_numpy(), atol=ATOL, rtol=RTOL)


def test_backed_equals_in_memory_and_batch_size_independent(pbmc, gf, m1, tmp_path):
    cells = _short_cells(gf, 12)
    a = pbmc[cells].copy()
    path = tmp_path / "cells.h5ad"
    a.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    from scfm.models import CellData

    mem = m1.embed(CellData(a, chunk_size=5), batch_size=5, device="cpu")
    bk = m1.embed(CellData(backed, chunk_size=5), batch_size=5, device="cpu")
    np.testing.assert_array_equal(mem.X, bk.X)
    one = m1.embed(CellData(a), batch_size=1, device="cpu")
    np.testing.assert_allclose(one.X, mem.X, atol=ATOL, rtol=RTOL)
    scfm.tl.embed(backed, model=m1)  # the public call on backed data (other batches: round-off only)
    np.testing.assert_allclose(backed.obsm["X_geneformer"], mem.X, atol=ATOL, rtol=RTOL)
    backed.file.close()


def test_bfloat16_close_to_float32(pbmc, gf, m2):
    from scfm.models import CellData

    a = pbmc[_short_cells(gf, 4)].copy()
    f32 = m2.embed(CellData(a), batch_size=4, device="cpu")
    bf16 = m2.embed(CellData(a), batch_size=4, device="cpu", precision="bfloat16")
    cos = (f32.X * bf16.X).sum(1) / np.linalg.norm(f32.X, axis=1) / np.linalg.norm(bf16.X, axis=1)
    assert (cos > 0.99).all()


# ---- bad input ------------------------------------------------------------------------------------------------
def test_bad_inputs_raise_and_leave_adata_untouched(pbmc, gf, m1, m2):
    import scanpy as sc

    a = pbmc[_short_cells(gf, 4)].copy()
    logn = a.copy()
    sc.pp.normalize_total(logn)
    sc.pp.log1p(logn)
    before = _snapshot(logn)
    with pytest.raises(ValueError, match="log-normalised"):
        scfm.tl.embed(logn, model=m2)
    assert _snapshot(logn) == before

    mouse = a.copy()
    del mouse.var["ensembl_id"]
    mouse.var_names = [s.capitalize() for s in a.var_names]
    before = _snapshot(mouse)
    with pytest.raises(ValueError, match="convert_orthologs"):
        scfm.tl.embed(mouse, model=m2)
    assert _snapshot(mouse) == before

    before = _snapshot(a)
    with pytest.raises(ValueError, match="pooling='cls'"):
        scfm.tl.embed(a, model=m1, pooling="cls")
    with pytest.raises(ValueError, match="emb_layer"):
        scfm.tl.embed(a, model=m2, emb_layer=1)
    with pytest.raises(ValueError, match="pooling"):
        scfm.tl.embed(a, model=m2, pooling="max")
    nothing = a.copy()
    nothing.var["ensembl_id"] = ""
    with pytest.raises(ValueError, match="None of the"):
        scfm.tl.embed(nothing, model=m2)
    assert _snapshot(a) == before


def test_checkpoint_dictionary_mismatch_and_unknown_keys(gf, res, tmp_path):
    with pytest.raises(ValueError, match="do not belong together"):
        scfm.models.load("geneformer", checkpoint=gf / "tiny-v1", resources=res / "v2")
    from safetensors.torch import load_file, save_file

    state = load_file(str(gf / "tiny-v2" / "model.safetensors"))
    assert any(k.startswith("cls.") for k in state)  # the MLM head is present and ignored
    for name, change in [("extra", {"bert.encoder.layer.0.extra.weight": state["cls.predictions.bias"].clone()}),
                         ("missing", None)]:
        folder = tmp_path / name
        folder.mkdir()
        shutil.copy(gf / "tiny-v2" / "config.json", folder / "config.json")
        st = dict(state)
        if change is None:
            del st["bert.encoder.layer.1.output.dense.weight"]
        else:
            st.update(change)
        save_file(st, str(folder / "model.safetensors"))
        with pytest.raises(ValueError, match="unexpected keys" if change else "missing keys"):
            scfm.models.load("geneformer", checkpoint=folder, resources=res / "v2")


def test_version_detection_and_layer_choice(m1, m2):
    from scfm.models.geneformer import layer_to_quant

    assert m1.generation == "V1" and m1.model_input_size == 2048 and m1.dictionaries.cls_id is None
    assert m2.generation == "V2" and m2.model_input_size == 4096 and m2.dictionaries.cls_id == 2
    assert m2.network.layer_to_quant(-1) == 1 and layer_to_quant(2, 0) == 2
    with pytest.raises(ValueError):
        layer_to_quant(2, 1)


# ---- registry -------------------------------------------------------------------------------------------------
def test_registry_entries(shared):
    from scfm._io.safe import sha256sum

    df = scfm.models.list("geneformer")
    names = {"geneformer-v1-10m", "geneformer-v2-104m", "geneformer-v2-316m", "geneformer-v2-104m-clcancer"}
    assert names <= set(df.index)
    for name in names:
        e = scfm.models.info(name)
        assert e.license == "Apache-2.0" and e.family == "geneformer"
        assert {f.filename for f in e.checkpoint} >= {"config.json"}
        for f in e.resources:
            assert f.hf_repo == "ctheodoris/Geneformer" and f.mirror_path
            assert sha256sum(shared / f.mirror_path) == f.sha256
    assert scfm.models.info("geneformer-v1-10m").input_length == 2048
    cfg = json.loads((shared / "resources/geneformer/v1/config_6L_256.json").read_text())
    assert cfg["hidden_size"] == scfm.models.info("geneformer-v1-10m").embedding_dim


def test_near_ties_ordered_by_full_value():
    """Values equal in the sort key's kept bits but not in full precision are still ranked exactly."""
    from scfm.models.geneformer import GeneformerDictionaries

    n_genes = 40
    ids = [f"ENSG{i:011d}" for i in range(n_genes)]
    rng = np.random.default_rng(1)
    base = rng.uniform(0.5, 3, n_genes // 2)
    # pairs of medians differing in the 12th significant digit; the larger median (smaller value) comes first
    med = np.ravel(np.c_[base * (1 + 1e-12), base])
    d = GeneformerDictionaries(
        "V1",
        {"<pad>": 0, "<mask>": 1, **{g: i + 2 for i, g in enumerate(ids)}},
        dict(zip(ids, med, strict=True)),
        {g: g for g in ids},
    )
    X = sp.csr_matrix(np.ones((3, n_genes), dtype=np.float32))
    plan = build_gene_plan(pd.DataFrame({"ensembl_id": ids}, index=ids), d, species_check=False)
    toks, _ = tokenize_block(X, np.array([40, 40, 40]), plan, model_input_size=100)
    ref = _reference_tokens(X, np.array([40, 40, 40]), plan)
    for i in range(3):
        np.testing.assert_array_equal(toks.cell(i), ref[i])
    # within each pair, the gene with the smaller median (the second one) ranks first
    first = toks.cell(0)
    assert list(first[:2]) in ([2 + 2 * k + 1, 2 + 2 * k] for k in range(n_genes // 2))


@pytest.mark.parametrize("collapse", [False, True])
@pytest.mark.parametrize(
    ("data_dtype", "n_counts_dtype"), [(np.float32, np.int64), (np.float32, np.float32), (np.int32, np.float64)]
)
def test_numba_kernel_equals_numpy_fallback(collapse, data_dtype, n_counts_dtype, monkeypatch):
    """The compiled kernel and the numpy fallback give identical tokens and n_ranked: exact ties, near-ties
    (1e-12 relative), cells longer than the input size, empty cells, explicit zeros, out-of-vocabulary genes."""
    pytest.importorskip("numba")
    from scfm.models.geneformer import GeneformerDictionaries, _tokenizer

    monkeypatch.setattr(_tokenizer, "_PARALLEL_MIN_NNZ", 0)  # threads even for this small block

    rng = np.random.default_rng(7)
    n_ids = 400
    ids = [f"ENSG{i:011d}" for i in range(n_ids)]
    med = rng.choice([0.25, 0.5, 1.0, 1.5, 3.0], n_ids) * (1 + rng.choice([0.0, 1e-12, -1e-12, 3e-13, 2e-16], n_ids))
    d = GeneformerDictionaries(
        "V2",
        {"<pad>": 0, "<mask>": 1, "<cls>": 2, "<eos>": 3, **{g: i + 4 for i, g in enumerate(ids)}},
        dict(zip(ids, med, strict=True)),
        {g: g for g in ids},
    )
    var_ids = ids + ["", "ENSG99999999999"] * 25  # 50 genes outside the vocabulary
    if collapse:
        var_ids += ids[:30]  # duplicated IDs: summed, placed after the others (T3)
    var = pd.DataFrame({"ensembl_id": var_ids}, index=[f"g{i}" for i in range(len(var_ids))])
    plan = build_gene_plan(var, d, species_check=False)
    assert plan.collapsed == collapse
    n = 700
    dens = rng.choice([0.0, 0.02, 0.3, 0.9], n)  # empty, short, medium and long cells
    X = sp.csr_matrix((rng.random((n, len(var_ids))) < dens[:, None]) * rng.choice([1, 1, 2, 3, 40], (n, len(var_ids))))
    X = X.astype(data_dtype)
    X.data[rng.random(X.nnz) < 0.05] = 0  # explicit zeros
    n_counts = (np.asarray(X.sum(1)).ravel() + 5).astype(n_counts_dtype)
    for size, cls_id, eos_id in [(4096, 2, 3), (120, 2, 3), (3, 2, 3), (2048, None, None), (57, None, None)]:
        kw = {"model_input_size": size, "cls_id": cls_id, "eos_id": eos_id}
        a, na = tokenize_block(X.copy(), n_counts, plan, engine="numba", **kw)
        b, nb = tokenize_block(X.copy(), n_counts, plan, engine="numpy", **kw)
        np.testing.assert_array_equal(na, nb)
        np.testing.assert_array_equal(a.offsets, b.offsets)
        np.testing.assert_array_equal(a.input_ids, b.input_ids)
        assert a.input_ids.dtype == b.input_ids.dtype and a.offsets.dtype == b.offsets.dtype
    assert (na == 0).any() and (na > 57).any()
    if not collapse:  # and both equal a stable descending argsort
        X.eliminate_zeros()
        ref = _reference_tokens(X, n_counts, plan)
        for i in range(n):
            np.testing.assert_array_equal(a.cell(i), ref[i][:57])


def test_numba_kernel_crowded_values():
    """Many distinct values within a tiny range next to an outlier (the kernel's merge-sort path), exact ties."""
    pytest.importorskip("numba")
    from scfm.models.geneformer import GeneformerDictionaries

    n_ids = 600
    ids = [f"ENSG{i:011d}" for i in range(n_ids)]
    med = 1 - np.arange(n_ids) * 1e-9  # values rise with the column: a stable sort reverses them
    med[::7] = med[1]  # and exact ties
    d = GeneformerDictionaries(
        "V1", {"<pad>": 0, "<mask>": 1, **{g: i + 2 for i, g in enumerate(ids)}}, dict(zip(ids, med, strict=True)),
        {g: g for g in ids},
    )
    plan = build_gene_plan(pd.DataFrame({"ensembl_id": ids}, index=ids), d, species_check=False)
    X = np.ones((4, n_ids), dtype=np.float32)
    X[:, 3] = 5000  # outlier
    X[1, 100:] = 2
    X[3, :] = 0
    X = sp.csr_matrix(X)
    n_counts = np.array([7000, 7000, 7000, 1])
    for size in (2048, 100):
        a, na = tokenize_block(X.copy(), n_counts, plan, model_input_size=size, engine="numba")
        b, nb = tokenize_block(X.copy(), n_counts, plan, model_input_size=size, engine="numpy")
        np.testing.assert_array_equal(na, nb)
        np.testing.assert_array_equal(a.offsets, b.offsets)
        np.testing.assert_array_equal(a.input_ids, b.input_ids)
        ref = _reference_tokens(X, n_counts, plan)
        for i in range(3):
            np.testing.assert_array_equal(a.cell(i), ref[i][:size])


@pytest.mark.parametrize(("name", "tiny"), [("geneformer-v1-10m", "tiny-v1"), ("geneformer-v2-104m", "tiny-v2")])
def test_release_dictionaries_come_from_the_mirror(gf, name, tiny, tmp_path):
    """The registry's dictionary files resolve (sha256-verified) from the mirror under their release names."""
    from scfm._io.download import fetch

    entry = scfm.models.info(name)
    for f in entry.resources:
        fetch(f, tmp_path)
    assert sorted(p.name for p in tmp_path.glob("*.pkl")) == sorted(f.filename for f in entry.resources)
    m = scfm.models.load("geneformer", checkpoint=gf / tiny, resources=tmp_path, random_weights=True)
    assert m.generation == entry.version


def test_release_with_local_checkpoint_fetches_only_resources(gf, tmp_path, monkeypatch):
    """`load(<release>, checkpoint=<local folder>)` takes the weights from that folder and fetches only the
    dictionaries (here from the mirror, offline); it never asks for the release's weight files."""
    import scfm._io.download as dl

    monkeypatch.setattr(scfm.settings, "cachedir", tmp_path)
    asked: list[str] = []
    real_fetch = dl.fetch

    def spy(file, folder=None, **kw):
        asked.append(file.filename)
        return real_fetch(file, folder, **kw)

    monkeypatch.setattr(dl, "fetch", spy)
    m = scfm.models.load("geneformer-v1-10m", checkpoint=gf / "tiny-v1", random_weights=True)
    entry = scfm.models.info("geneformer-v1-10m")
    assert sorted(asked) == sorted(f.filename for f in entry.resources)
    assert not (tmp_path / "models" / "geneformer-v1-10m" / "checkpoint").exists()
    assert m.generation == "V1" and m.name == "geneformer-v1-10m"
