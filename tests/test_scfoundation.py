"""scFoundation: parity with the official get_embedding.py (../shared/fixtures/scfoundation), alignment, bad input.

Tolerance as PROVENANCE.md states: ``np.allclose(mine, ref, rtol=1e-5, atol=1e-5)``. The tiny fixture model has
head dim 8, which makes attention slow on CPU, so some modes are checked on a subset of the 200 PBMCs (every
mode on some cells, t4/all on all of them).
"""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import scfm
from scfm.models.scfoundation import PANEL_FILE, gene_states

TOL = {"rtol": 1e-5, "atol": 1e-5}
SUB = np.array([0, 3, 7, 42, 99, 150, 199])  # cells for the modes not run on all 200


def _close(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    assert np.allclose(a, b, **TOL), f"max abs diff {np.nanmax(np.abs(a - b)):.3g}"


@pytest.fixture(scope="module")
def fx(shared):
    return shared / "fixtures" / "scfoundation"


@pytest.fixture(scope="module")
def model(fx):
    return scfm.models.load("scfoundation", checkpoint=fx / "tiny" / "models.ckpt", checkpoint_key="cell")


@pytest.fixture(scope="module")
def pbmc_aligned(fx):
    return ad.read_h5ad(fx / "input_pbmc200_19264.h5ad")


@pytest.fixture(scope="module")
def demo10(fx):
    df = pd.read_csv(fx / "input_demo10.csv", index_col=0)
    return ad.AnnData(sp.csr_matrix(df.to_numpy()), obs=pd.DataFrame(index=df.index.astype(str)),
                      var=pd.DataFrame(index=df.columns.astype(str)))


def _ref(fx, name, rows=None):
    r = np.load(fx / "ref" / f"{name}.npy")
    return r if rows is None else r[rows]


def _emb(adata, model, **kw):
    a = adata.copy() if not adata.is_view else adata.copy()
    scfm.tl.embed(a, model=model, **kw)
    return a.obsm["X_scfoundation"]


# ---- loading --------------------------------------------------------------------------------------------------
def test_load_variants_and_folder(fx, model):
    rde = scfm.models.load("scfoundation", checkpoint=fx / "tiny", checkpoint_key="rde")
    assert model.family == "scfoundation" and model.embedding_dim == 32
    w_cell = model.net.value_emb.bins
    assert not torch.equal(w_cell, rde.net.value_emb.bins)  # different variant, different weights
    assert model.files["models.ckpt"] == json.loads((fx / "ref" / "runs.json").read_text())["ckpt_sha256"]
    with pytest.raises(ValueError, match="checkpoint_key"):
        scfm.models.load("scfoundation", checkpoint=fx / "tiny", checkpoint_key="bogus")


def test_unplaceable_and_missing_keys_fail(fx, tmp_path, shared):
    obj = torch.load(fx / "tiny" / "models.ckpt", weights_only=True)
    extra = {k: dict(v) for k, v in obj.items()}
    extra["cell"]["state_dict"] = dict(obj["cell"]["state_dict"])
    extra["cell"]["state_dict"]["model.encoder.some_new_layer.weight"] = torch.zeros(3)
    torch.save(extra, tmp_path / "models.ckpt")
    with pytest.raises(ValueError, match="cannot place"):
        scfm.models.load("scfoundation", checkpoint=tmp_path, resources=shared / "resources" / "scfoundation")
    missing = {k: dict(v) for k, v in obj.items()}
    missing["cell"]["state_dict"] = {k: v for k, v in obj["cell"]["state_dict"].items() if "linear2" not in k}
    torch.save(missing, tmp_path / "models.ckpt")
    with pytest.raises(ValueError, match="lacks"):
        scfm.models.load("scfoundation", checkpoint=tmp_path, resources=shared / "resources" / "scfoundation")


def test_registry_entry_and_panel_file(shared):
    from scfm._io.safe import sha256sum

    e = scfm.models.info("scfoundation-100m")
    assert e.family == "scfoundation" and e.load_options["checkpoint_key"] == "cell"
    assert "non-commercial" in e.license and "10.1038/s41592-024-02305-7" in e.citation
    assert e.checkpoint[0].filename == "models.ckpt" and "sharepoint.com" in e.source
    assert PANEL_FILE in e.resources
    assert PANEL_FILE.sha256 == sha256sum(shared / PANEL_FILE.mirror_path)
    assert "biomap-research/scFoundation" in PANEL_FILE.url
    assert "scfoundation-100m" in scfm.models.list(family="scfoundation").index
    # the weights are a manual download: loading the release without them says which file and where
    with pytest.raises(Exception, match="models.ckpt"):
        scfm.models.load("scfoundation-100m")


# ---- parity: cell embeddings -----------------------------------------------------------------------------------
@pytest.mark.parametrize("res", ["t4", "a5", "f1"])
@pytest.mark.parametrize("pool", ["all", "max"])
def test_demo10(fx, model, demo10, res, pool):
    X = _emb(demo10, model, pre_normalized="F", tgthighres=res, pool=pool)
    _close(X, _ref(fx, f"demo10_cell_{res}_{pool}"))


def test_demo10_rde(fx, demo10):
    rde = scfm.models.load("scfoundation", checkpoint=fx / "tiny" / "models.ckpt", checkpoint_key="rde")
    _close(_emb(demo10, rde, tgthighres="a5", pool="all"), _ref(fx, "demo10_cell_a5_all_rde"))


def test_pbmc200_t4_all_full(fx, model, pbmc_aligned):
    a = pbmc_aligned.copy()
    before = a.X.copy()
    scfm.tl.embed(a, model=model, pre_normalized="F", tgthighres="t4", pool="all")
    _close(a.obsm["X_scfoundation"], _ref(fx, "pbmc200_cell_t4_all"))
    assert (a.X != before).nnz == 0
    prov = a.uns["scfm"]["X_scfoundation"]
    assert prov["coverage"]["n_genes_matched"] == 19264
    assert prov["params"]["tgthighres"] == "t4"


@pytest.mark.parametrize(("res", "pool"), [("t4", "max"), ("a5", "all"), ("a5", "max"), ("f1", "all"), ("f1", "max")])
def test_pbmc200_modes_subset(fx, model, pbmc_aligned, res, pool):
    X = _emb(pbmc_aligned[SUB], model, pre_normalized="F", tgthighres=res, pool=pool)
    _close(X, _ref(fx, f"pbmc200_cell_{res}_{pool}", SUB))


@pytest.mark.parametrize(("res", "pool"), [("t4", "all"), ("t4", "max"), ("a5", "all")])
def test_prenormalized_T(fx, model, res, pool):
    a = ad.read_h5ad(fx / "input_pbmc200_19264_lognorm.h5ad")[SUB]
    _close(_emb(a, model, pre_normalized="T", tgthighres=res, pool=pool),
           _ref(fx, f"pbmc200_cell_preT_{res}_{pool}", SUB))


@pytest.mark.parametrize("res", ["t4", "a5"])
def test_prenormalized_A(fx, model, res):
    a = ad.read_h5ad(fx / "input_pbmc200_19265_lognorm_total.h5ad")[SUB]
    ref = _ref(fx, f"pbmc200_cell_preA_{res}_all", SUB)
    _close(_emb(a, model, pre_normalized="A", tgthighres=res, pool="all"), ref)
    # the same totals given as an obs column instead of the official 19,265th column
    b = a[:, :-1].copy()
    b.obs["raw_total"] = np.asarray(a[:, -1].X.toarray()).ravel()
    _close(_emb(b, model, pre_normalized="A", tgthighres=res, pool="all", total_counts="raw_total"), ref)


# ---- parity: gene output and internals -------------------------------------------------------------------------
def test_gene_output(fx, model):
    g = ad.read_h5ad(fx / "input_gene2_19264.h5ad")
    ref = _ref(fx, "gene2_gene_t4")
    out = gene_states(g, model, tgthighres="t4")
    _close(out, ref)
    # chosen cells and genes, in the order asked
    panel = list(g.var_names)
    genes = [panel[i] for i in (19263, 5, 1000, 77)]
    sub = gene_states(g, model, cells=[g.obs_names[1]], genes=genes)
    _close(sub, ref[[1]][:, [19263, 5, 1000, 77]])
    # varm: gene embedding = mean over cells of the per-cell states
    h = g.copy()
    scfm.tl.gene_embeddings(h, model=model)
    _close(h.varm["scfoundation_gene"], ref.mean(0))


def test_internals_cell_path(fx, model, pbmc_aligned):
    from scfm.models.scfoundation._inputs import make_tokens

    z = np.load(fx / "ref" / "internals_cell_2cells.npz")
    colmap = np.arange(19264)
    rows = z["cells_rows"]
    net = model.net
    for r in rows:
        p = f"cell{r}_"
        for res in ("t4", "a5", "f1"):
            tok = make_tokens(pbmc_aligned.X[[r]], colmap, pre_normalized="F", tgthighres=res)
            np.testing.assert_allclose(tok.ts[0], z[p + f"TS_tokens_{res}"], rtol=0, atol=1e-12)
        tok = make_tokens(pbmc_aligned.X[[r]], colmap, pre_normalized="F", tgthighres="t4")
        pos, val = tok.cell(0)
        np.testing.assert_array_equal(pos, z[p + "encoder_position_gene_ids"][0])
        np.testing.assert_allclose(val, z[p + "encoder_data"][0], rtol=0, atol=1e-12)
        vt = z[p + "value_tensor_t4"][0]
        np.testing.assert_array_equal(np.flatnonzero(vt > 0), pos)
        with torch.inference_mode():
            v = torch.from_numpy(val.astype(np.float32))[None]
            ps = torch.from_numpy(pos)[None]
            _close(net.value_emb(v), z[p + "token_emb_out"])
            _close(net.pos_emb(ps), z[p + "pos_emb_out"])
            _close(net.encode(v, ps), z[p + "encoder_out"])
    # the batch of two, padded: non-padded positions match the official batched encoder
    tok = make_tokens(pbmc_aligned.X[rows], colmap, pre_normalized="F", tgthighres="t4")
    h, lens = model._encode(net, tok, np.arange(2), "cpu")
    assert not z["batch2_padding"][0].any() and z["batch2_padding"][1].sum() == 2078 - lens[1]
    for j in range(2):
        _close(h[j, : lens[j]].numpy(), z["batch2_encoder_out"][j, : lens[j]])


def test_internals_gene_path(fx, model):
    z = np.load(fx / "ref" / "internals_gene_1cell.npz")
    g = ad.read_h5ad(fx / "input_gene2_19264.h5ad")
    gnet = model._gene_net()
    seen = {}
    h1 = gnet.decoder.register_forward_hook(lambda m, i, o: seen.update(dec_in=i[0].clone(), dec_out=o.clone()))
    h2 = gnet.encoder.register_forward_hook(lambda m, i, o: seen.update(enc_out=o.clone()))
    try:
        gene_states(g, model, cells=[int(z["cell_index_in_gene2"])])
    finally:
        h1.remove()
        h2.remove()
    _close(seen["enc_out"], z["encoder_out"])
    _close(seen["dec_in"], z["decoder_in"])
    _close(seen["dec_out"], z["decoder_out"])


# ---- alignment inside scfm -------------------------------------------------------------------------------------
def test_alignment_from_raw_symbols(fx, model, pbmc200):
    """The raw 16,727-gene PBMC file (symbols, dense float32) gives the pre-aligned file's embeddings."""
    a = pbmc200[SUB].copy()
    X = _emb(a, model, pre_normalized="F", tgthighres="t4", pool="all")
    _close(X, _ref(fx, "pbmc200_cell_t4_all", SUB))
    scfm.tl.embed(a, model=model)
    cov = a.uns["scfm"]["X_scfoundation"]["coverage"]
    assert cov["n_genes_matched"] == 13009 and cov["n_panel_genes_zero_filled"] == 6255
    assert cov["n_input_genes_not_in_panel"] == 3718


def test_alignment_shuffled_extra_columns(fx, model):
    """The 19,265-column file (extra total_count column) in T mode, columns shuffled: same as the aligned file."""
    a = ad.read_h5ad(fx / "input_pbmc200_19265_lognorm_total.h5ad")[SUB]
    perm = np.random.default_rng(0).permutation(a.n_vars)
    b = a[:, perm].copy()
    _close(_emb(b, model, pre_normalized="T", tgthighres="t4", pool="all"),
           _ref(fx, "pbmc200_cell_preT_t4_all", SUB))
    _close(_emb(b, model, pre_normalized="A", tgthighres="a5", pool="all"),
           _ref(fx, "pbmc200_cell_preA_a5_all", SUB))


def test_gene_symbols_column(fx, model, pbmc_aligned):
    a = pbmc_aligned[SUB[:3]].copy()
    a.var["symbol"] = a.var_names
    a.var_names = [f"ENSG{i:011d}" for i in range(a.n_vars)]
    with pytest.raises(ValueError, match="Ensembl"):
        scfm.tl.embed(a, model=model)
    _close(_emb(a, model, gene_symbols="symbol"), _ref(fx, "pbmc200_cell_t4_all", SUB[:3]))


def test_no_dense_panel_copy(model, pbmc_aligned, monkeypatch):
    """Blocks stay sparse: densifying a whole block is never called."""
    calls = []
    orig = sp.csr_matrix.toarray

    def spy(self, *a, **k):
        calls.append(self.shape)
        return orig(self, *a, **k)

    monkeypatch.setattr(sp.csr_matrix, "toarray", spy)
    _emb(pbmc_aligned[:3], model)
    assert all(s[1] < 1000 for s in calls), calls


# ---- batching, backed, precision --------------------------------------------------------------------------------
def test_batch_size_independence(fx, model, pbmc_aligned):
    a = pbmc_aligned[SUB]
    ref = _ref(fx, "pbmc200_cell_t4_max", SUB)
    x1 = _emb(a, model, pool="max", batch_size=1)
    x7 = _emb(a, model, pool="max", batch_size=7)
    x3 = _emb(a, model, pool="max", batch_size=3, max_tokens=5000)
    for x in (x1, x7, x3):
        _close(x, ref)
    assert np.abs(x1 - x7).max() < 5e-6


def test_backed_and_empty_cell(fx, model, pbmc_aligned, tmp_path):
    a = pbmc_aligned[SUB[:3]].copy()
    X = a.X.tolil()
    X[1, :] = 0
    a.X = X.tocsr()
    a.write_h5ad(tmp_path / "b.h5ad")
    b = ad.read_h5ad(tmp_path / "b.h5ad", backed="r")
    scfm.tl.embed(b, model=model)
    emb = b.obsm["X_scfoundation"]
    assert np.isnan(emb[1]).all()
    assert list(b.obs["X_scfoundation_valid"]) == [True, False, True]
    _close(emb[[0, 2]], _ref(fx, "pbmc200_cell_t4_all", SUB[[0, 2]]))


def test_bf16_runs(fx, model, pbmc_aligned):
    x = _emb(pbmc_aligned[SUB[:3]], model, precision="bfloat16")
    ref = _ref(fx, "pbmc200_cell_t4_all", SUB[:3])
    assert np.isfinite(x).all() and np.corrcoef(x.ravel(), ref.ravel())[0, 1] > 0.99


# ---- bad input ----------------------------------------------------------------------------------------------------
def _snapshot(a):
    return (a.X.copy(), dict(a.obsm), a.obs.copy(), a.var.copy(), set(a.uns))


def _unchanged(a, snap):
    X, obsm, obs, var, uns = snap
    assert (a.X != X).nnz == 0 and set(a.obsm) == set(obsm) and set(a.uns) == uns
    pd.testing.assert_frame_equal(a.obs, obs)
    pd.testing.assert_frame_equal(a.var, var)


def test_lognorm_as_counts_fails(fx, model):
    a = ad.read_h5ad(fx / "input_pbmc200_19264_lognorm.h5ad")[:4].copy()
    snap = _snapshot(a)
    with pytest.raises(ValueError, match="pre_normalized='T'"):
        scfm.tl.embed(a, model=model, pre_normalized="F")
    _unchanged(a, snap)


def test_counts_as_prenormalized_fails(model, pbmc_aligned):
    a = pbmc_aligned[:4].copy()
    snap = _snapshot(a)
    for mode in ("T", "A"):
        b = a.copy()
        if mode == "A":
            b.obs["tc"] = 1000.0
        with pytest.raises(ValueError, match="raw counts"):
            scfm.tl.embed(b, model=model, pre_normalized=mode, **({"total_counts": "tc"} if mode == "A" else {}))
    with pytest.raises(ValueError, match="raw counts"):
        scfm.tl.embed(a, model=model, pre_normalized="T")
    _unchanged(a, snap)


def test_low_coverage_nan_and_options_fail(model, pbmc_aligned, fx):
    a = pbmc_aligned[:4, :2000].copy()
    snap = _snapshot(a)
    with pytest.raises(ValueError, match=r"min_panel_fraction=0\.25"):
        scfm.tl.embed(a, model=model)
    _unchanged(a, snap)
    b = pbmc_aligned[:4].copy()
    b.X = b.X.astype(np.float64)
    b.X.data[0] = np.nan
    snap = _snapshot(b)
    with pytest.raises(ValueError, match="NaN"):
        scfm.tl.embed(b, model=model)
    assert "X_scfoundation" not in b.obsm
    c = ad.read_h5ad(fx / "input_pbmc200_19264_lognorm.h5ad")[:2].copy()
    with pytest.raises(ValueError, match="total_count"):
        scfm.tl.embed(c, model=model, pre_normalized="A")
    with pytest.raises(ValueError, match="tgthighres"):
        scfm.tl.embed(pbmc_aligned[:2].copy(), model=model, tgthighres="x4")
    with pytest.raises(ValueError, match="pool"):
        scfm.tl.embed(pbmc_aligned[:2].copy(), model=model, pool="mean")
    neg = c.copy()
    neg.X.data[:5] = -1.0
    with pytest.raises(ValueError, match="negative"):
        scfm.tl.embed(neg, model=model, pre_normalized="T")


# ---- variants (regressions from differential testing against the official get_embedding.py) --------------------
VARIANT_ROWS = np.array([0, 3, 42])


def _emb_prov(a, model, **kw):
    a = a.copy()
    scfm.tl.embed(a, model=model, **kw)
    return a.obsm["X_scfoundation"], a.uns["scfm"]["X_scfoundation"]


def test_symbols_from_var_gene_name(fx, model):
    """The official h5ad reader takes symbols from ``var.gene_name``: Ensembl var_names + that column work."""
    a = ad.read_h5ad(fx / "input_pbmc200_19264.h5ad")[VARIANT_ROWS].copy()
    ref = np.load(fx / "ref" / "pbmc200_cell_t4_all.npy")[VARIANT_ROWS]
    a.var["gene_name"] = a.var_names.astype(str)
    a.var_names = [f"ENSG{i:011d}" for i in range(a.n_vars)]
    X, prov = _emb_prov(a, model, pre_normalized="F", tgthighres="t4", pool="all")
    _close(X, ref)
    assert prov["coverage"]["n_genes_matched"] == 19264
    assert prov["coverage"]["gene_symbols_from"] == "var['gene_name']"


def test_var_gene_name_ignored_when_worse(fx, model):
    """A ``gene_name`` column that matches fewer panel genes than var_names does not replace them."""
    a = ad.read_h5ad(fx / "input_pbmc200_19264.h5ad")[VARIANT_ROWS].copy()
    ref = np.load(fx / "ref" / "pbmc200_cell_t4_max.npy")[VARIANT_ROWS]
    a.var["gene_name"] = [f"junk{i}" for i in range(a.n_vars)]
    X, prov = _emb_prov(a, model, pre_normalized="F", tgthighres="t4", pool="max")
    _close(X, ref)
    assert prov["coverage"]["gene_symbols_from"] == "var_names"


def test_var_gene_name_prenormalized_A(fx, model):
    """'A' layout with symbols in ``var.gene_name``: the total column is still found (by var_names here)."""
    a = ad.read_h5ad(fx / "input_pbmc200_19265_lognorm_total.h5ad")[VARIANT_ROWS].copy()
    ref = np.load(fx / "ref" / "pbmc200_cell_preA_a5_all.npy")[VARIANT_ROWS]
    names = list(a.var_names.astype(str))
    a.var["gene_name"] = names[:-1] + ["nan"]
    a.var_names = [f"ENSG{i:011d}" for i in range(a.n_vars - 1)] + ["total_count"]
    X, _ = _emb_prov(a, model, pre_normalized="A", tgthighres="a5", pool="all")
    _close(X, ref)


def test_check_counts_false_accepts_non_integer_counts(fx, model):
    """Non-integer counts are refused by default (they may be normalised data) and accepted on request."""
    a = ad.read_h5ad(fx / "input_pbmc200_19264.h5ad")[VARIANT_ROWS].copy()
    ref = np.load(fx / "ref" / "pbmc200_cell_t4_all.npy")[VARIANT_ROWS]
    X, _ = _emb_prov(a, model, pre_normalized="F", tgthighres="t4", pool="all", check_counts=False)
    _close(X, ref)  # integer counts: the same result either way
    a.X = a.X * 1.5
    with pytest.raises(ValueError, match="check_counts=False"):
        _emb_prov(a, model, pre_normalized="F", tgthighres="t4", pool="all")
    X15, prov = _emb_prov(a, model, pre_normalized="F", tgthighres="t4", pool="all", check_counts=False)
    assert np.isfinite(X15).all() and prov["params"]["check_counts"] is False
    a.X[0, 0] = -1.0
    with pytest.raises(ValueError, match="negative"):
        _emb_prov(a, model, pre_normalized="F", tgthighres="t4", pool="all", check_counts=False)


def test_prenormalized_A_total_by_position(fx, model):
    """Official N × 19,265 layout: the last variable is the total whatever its name; other layouts must name it."""
    a = ad.read_h5ad(fx / "input_pbmc200_19265_lognorm_total.h5ad")[VARIANT_ROWS].copy()
    ref = np.load(fx / "ref" / "pbmc200_cell_preA_a5_all.npy")[VARIANT_ROWS]
    a.var_names = list(a.var_names[:-1].astype(str)) + ["library_size"]
    X, _ = _emb_prov(a, model, pre_normalized="A", tgthighres="a5", pool="all")
    _close(X, ref)
    shuffled = a[:, np.r_[1, 0, 2 : a.n_vars]].copy()  # panel not in order: the last column is not taken blindly
    with pytest.raises(ValueError, match="total"):
        _emb_prov(shuffled, model, pre_normalized="A", tgthighres="a5", pool="all")
