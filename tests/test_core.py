"""The model-agnostic core: slot writer, tl.embed with the PCA baseline, copy semantics, streaming, plots."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import scfm
from scfm._slots import write_results
from scfm.models import CellData


def _snapshot(adata: ad.AnnData) -> dict:
    """Everything a user could see change."""
    X = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)
    return {
        "X": X.copy(),
        "obs": adata.obs.copy(),
        "var": adata.var.copy(),
        "obsm": {k: np.asarray(v).copy() for k, v in adata.obsm.items()},
        "varm": sorted(adata.varm.keys()),
        "layers": sorted(adata.layers.keys()),
        "uns": sorted(adata.uns.keys()),
        "shape": adata.shape,
    }


def _assert_same(a: dict, b: dict) -> None:
    np.testing.assert_array_equal(a["X"], b["X"])
    pd.testing.assert_frame_equal(a["obs"], b["obs"])
    pd.testing.assert_frame_equal(a["var"], b["var"])
    assert a["obsm"].keys() == b["obsm"].keys()
    for k in a["obsm"]:
        np.testing.assert_array_equal(a["obsm"][k], b["obsm"][k])
    assert (a["varm"], a["layers"], a["uns"], a["shape"]) == (b["varm"], b["layers"], b["uns"], b["shape"])


@pytest.fixture
def small_counts() -> ad.AnnData:
    rng = np.random.default_rng(0)
    X = rng.negative_binomial(2, 0.3, size=(60, 300)).astype(np.float32)
    X[:, :20] *= rng.integers(0, 8, size=(60, 1))  # some structure
    return ad.AnnData(
        sp.csr_matrix(X),
        obs=pd.DataFrame(index=[f"c{i}" for i in range(60)]),
        var=pd.DataFrame(index=[f"G{i}" for i in range(300)]),
    )


def test_pca_writes_embedding_and_provenance_only(pbmc200):
    before = _snapshot(pbmc200)
    scfm.tl.embed(pbmc200, "pca")
    after = _snapshot(pbmc200)
    assert set(after["obsm"]) - set(before["obsm"]) == {"X_pca"}
    assert set(after["uns"]) - set(before["uns"]) == {"scfm"}
    np.testing.assert_array_equal(before["X"], after["X"])
    pd.testing.assert_frame_equal(before["obs"], after["obs"])
    pd.testing.assert_frame_equal(before["var"], after["var"])
    emb = pbmc200.obsm["X_pca"]
    assert emb.shape == (200, 50) and np.isfinite(emb).all()
    prov = pbmc200.uns["scfm"]["X_pca"]
    assert prov["model"] == "pca" and prov["function"] == "scfm.tl.embed"
    assert prov["n_cells"] == 200 and prov["n_cells_used"] == 200
    assert prov["params"]["n_top_genes"] == 2000
    assert prov["scfm_version"] == scfm.__version__
    assert "obsm['X_pca']" in list(prov["slots"])


def test_pca_matches_scanpy(pbmc200):
    import scanpy as sc

    scfm.tl.embed(pbmc200, "pca", n_comps=10)
    ref = pbmc200.copy()
    sc.pp.normalize_total(ref, target_sum=1e4)
    sc.pp.log1p(ref)
    sc.pp.highly_variable_genes(ref, n_top_genes=2000, flavor="seurat")
    ref = ref[:, ref.var["highly_variable"]].copy()
    sc.pp.pca(ref, n_comps=10, svd_solver="full")
    ours, theirs = pbmc200.obsm["X_pca"], ref.obsm["X_pca"]
    for i in range(10):  # same components up to sign
        assert abs(np.corrcoef(ours[:, i], theirs[:, i])[0, 1]) > 0.9999


def test_copy_semantics(small_counts):
    before = _snapshot(small_counts)
    out = scfm.tl.embed(small_counts, "pca", n_comps=5, copy=True)
    assert out is not small_counts and "X_pca" in out.obsm
    _assert_same(before, _snapshot(small_counts))
    assert scfm.tl.embed(small_counts, "pca", n_comps=5) is None
    assert "X_pca" in small_counts.obsm


def test_untouched_on_error(small_counts):
    bad = small_counts.copy()
    bad.X = bad.X.astype(np.float32)
    bad.X.data = np.log1p(bad.X.data)  # log-normalised: not counts
    before = _snapshot(bad)
    with pytest.raises(ValueError, match="counts"):
        scfm.tl.embed(bad, "pca")
    _assert_same(before, _snapshot(bad))


def test_empty_cells_get_nan_and_mask(small_counts):
    X = small_counts.X.tolil()
    X[3, :] = 0
    small_counts.X = X.tocsr()
    scfm.tl.embed(small_counts, "pca", n_comps=5)
    emb = small_counts.obsm["X_pca"]
    assert np.isnan(emb[3]).all() and np.isfinite(np.delete(emb, 3, axis=0)).all()
    mask = small_counts.obs["X_pca_valid"].to_numpy()
    assert mask.dtype == bool and not mask[3] and mask.sum() == 59
    assert small_counts.uns["scfm"]["X_pca"]["n_cells_used"] == 59


def test_backed_equals_in_memory(small_counts, tmp_path, monkeypatch):
    path = tmp_path / "small.h5ad"
    small_counts.write_h5ad(path)
    mem = scfm.tl.embed(small_counts, "pca", n_comps=5, copy=True)
    monkeypatch.setattr(scfm.settings, "chunk_size", 7)  # many chunks
    backed = ad.read_h5ad(path, backed="r")
    scfm.tl.embed(backed, "pca", n_comps=5)
    np.testing.assert_allclose(backed.obsm["X_pca"], mem.obsm["X_pca"], atol=1e-5)
    backed.file.close()


def test_layer_and_raw(small_counts):
    a = small_counts.copy()
    a.layers["counts"] = a.X.copy()
    a.raw = a.copy()
    a.X = a.X.astype(np.float32) / 3.3  # not counts any more
    ref = scfm.tl.embed(small_counts, "pca", n_comps=5, copy=True).obsm["X_pca"]
    scfm.tl.embed(a, "pca", n_comps=5, layer="counts", key_added="from_layer")
    scfm.tl.embed(a, "pca", n_comps=5, use_raw=True, key_added="from_raw")
    np.testing.assert_allclose(a.obsm["from_layer"], ref, atol=1e-5)
    np.testing.assert_allclose(a.obsm["from_raw"], ref, atol=1e-5)
    assert a.uns["scfm"]["from_layer"]["input"] == "layers['counts']"
    with pytest.raises(KeyError, match="not in adata.layers"):
        scfm.tl.embed(a, "pca", layer="nope")


def test_provenance_survives_h5ad(small_counts, tmp_path):
    scfm.tl.embed(small_counts, "pca", n_comps=5)
    small_counts.write_h5ad(tmp_path / "o.h5ad")
    back = ad.read_h5ad(tmp_path / "o.h5ad")
    assert back.uns["scfm"]["X_pca"]["model"] == "pca"
    np.testing.assert_array_equal(back.obsm["X_pca"], small_counts.obsm["X_pca"])


def test_slot_writer_validates_before_writing(small_counts):
    before = _snapshot(small_counts)
    with pytest.raises(ValueError, match="rows"):
        write_results(small_counts, "k", provenance={}, obsm={"good": np.zeros((60, 2)), "bad": np.zeros((5, 2))})
    _assert_same(before, _snapshot(small_counts))


def test_unknown_option_and_model(small_counts):
    with pytest.raises(TypeError, match="Unknown option"):
        scfm.tl.embed(small_counts, "pca", pooling="cls")
    with pytest.raises(KeyError, match="Did you mean"):
        scfm.tl.embed(small_counts, "pcaa")


def test_celldata_chunks_and_take(small_counts):
    data = CellData(small_counts, chunk_size=16)
    blocks = list(data.chunks())
    assert [b.shape[0] for _, b in blocks] == [16, 16, 16, 12]
    np.testing.assert_array_equal(sp.vstack([b for _, b in blocks]).toarray(), small_counts.X.toarray())
    idx = np.array([5, 1, 40])
    np.testing.assert_array_equal(data.take(idx).toarray(), small_counts.X[idx].toarray())
    half = ad.AnnData(small_counts.X.toarray().astype(np.float16))  # dense float16: scipy.sparse has no float16
    hdata = CellData(half, chunk_size=16)
    block = hdata.rows(0, 16)
    assert block.dtype == np.float32
    np.testing.assert_array_equal(block.toarray(), small_counts.X[:16].toarray())
    np.testing.assert_array_equal(hdata.take(idx).toarray(), small_counts.X[idx].toarray())


def test_gene_similarity(small_counts):
    rng = np.random.default_rng(1)
    E = rng.normal(size=(300, 8))
    E[1] = E[0] * 2  # same direction as gene 0
    E[7] = np.nan  # no embedding
    small_counts.varm["emb"] = E
    scfm.tl.gene_similarity(small_counts, use_rep="emb", top_k=3)
    S = small_counts.varp["emb_similarity"]
    assert S[0, 1] == pytest.approx(1.0) and S[1, 0] == pytest.approx(1.0)
    assert S[7].nnz == 0 and S[:, 7].nnz == 0
    edges = scfm.tl.gene_similarity(small_counts, use_rep="emb", top_k=3, return_df=True)
    assert tuple(edges.iloc[0][["gene1", "gene2"]]) == ("G0", "G1")


def test_plots_do_not_modify(small_counts, tmp_path):
    import matplotlib

    matplotlib.use("agg")
    scfm.tl.embed(small_counts, "pca", n_comps=5)
    small_counts.obs["group"] = pd.Categorical(np.repeat(["a", "b"], 30))
    before = _snapshot(small_counts)
    fig = scfm.pl.embeddings(small_counts, keys=["X_pca"], color="group", show=False)
    assert len(fig.axes[0].collections) >= 1 and "pca" in fig.axes[0].get_title()
    _assert_same(before, _snapshot(small_counts))
    table = pd.DataFrame({"A": np.linspace(0.9, 1, 60), "B": np.nan}, index=small_counts.obs_names)
    small_counts.obsm["fake_perturbation"] = table
    fig = scfm.pl.perturbation(small_counts, "fake_perturbation", save=str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").stat().st_size > 0


def test_settings_and_device():
    from scfm._torch import check_precision, resolve_device

    assert str(resolve_device("auto")) in {"cpu", "cuda", "mps"}
    assert str(resolve_device("cpu")) == "cpu"
    assert check_precision("bf16") == "bfloat16"
    with pytest.raises(ValueError, match="precision"):
        check_precision("int3")
    assert "cachedir" in repr(scfm.settings)


def test_scvi_baseline(small_counts):
    pytest.importorskip("scvi", reason="the scvi baseline needs scvi-tools: pip install 'scfm[scvi]'")
    before = _snapshot(small_counts)
    out = scfm.tl.embed(small_counts, "scvi", max_epochs=2, n_latent=4, copy=True)
    _assert_same(before, _snapshot(small_counts))  # scvi's setup_anndata never sees the user's object
    assert out.obsm["X_scvi"].shape == (60, 4) and np.isfinite(out.obsm["X_scvi"]).all()
    assert set(out.uns) == {"scfm"} and list(out.obs.columns) == []


def test_model_name_is_loaded_once(small_counts, monkeypatch):
    calls = []
    real_load = scfm.models.load

    def counting_load(name, **kw):
        calls.append(name)
        return real_load(name, **kw)

    monkeypatch.setattr(scfm.models, "load", counting_load)
    scfm.tl.embed(small_counts, "pca", n_comps=5)
    scfm.tl.embed(small_counts, "pca", n_comps=5, key_added="X_pca2")
    assert calls == ["pca"]
    assert np.allclose(small_counts.obsm["X_pca"], small_counts.obsm["X_pca2"])
    scfm.tl.embed(small_counts, "pca", device="cpu", n_comps=5, key_added="X_pca3")  # other load options
    assert calls == ["pca", "pca"]
    scfm.models.clear_cache()
    scfm.tl.embed(small_counts, "pca", device="cpu", n_comps=5, key_added="X_pca3")
    assert calls == ["pca", "pca", "pca"]


def test_cell_spans_only_for_right_padding():
    import torch

    from scfm.models._attention import attention, cell_spans

    pad = torch.tensor([[False, False, True], [False, False, False]])
    assert cell_spans(None) is None and cell_spans(torch.zeros(2, 3, dtype=torch.bool)) is None
    assert cell_spans(pad) == [2, 3]
    assert cell_spans(pad.flip(1)) is None  # left padding: the mask is needed
    q, k, v = (torch.randn(2, 2, 3, 4) for _ in range(3))
    split = attention(q, k, v, spans=[2, 3])
    masked = attention(q, k, v, mask=(~pad)[:, None, None, :])
    torch.testing.assert_close(split[0, :, :2], masked[0, :, :2])
    torch.testing.assert_close(split[1], masked[1])
