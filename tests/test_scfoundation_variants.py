"""scFoundation: regression tests from differential testing against the official get_embedding.py on variants.

References are the shared fixture refs (../shared/fixtures/scfoundation, PROVENANCE.md); tolerance as stated
there (``np.allclose(mine, ref, rtol=1e-5, atol=1e-5)``).
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

import scfm

TOL = {"rtol": 1e-5, "atol": 1e-5}
ROWS = np.array([0, 3, 42])


@pytest.fixture(scope="module")
def fx(shared):
    return shared / "fixtures" / "scfoundation"


@pytest.fixture(scope="module")
def model(fx):
    return scfm.models.load("scfoundation", checkpoint=fx / "tiny" / "models.ckpt", checkpoint_key="cell")


def _emb(a, model, **kw):
    a = a.copy()
    scfm.tl.embed(a, model=model, **kw)
    return a.obsm["X_scfoundation"], a.uns["scfm"]["X_scfoundation"]


def _close(a, b):
    assert a.shape == b.shape
    assert np.allclose(a, b, **TOL), f"max abs diff {np.nanmax(np.abs(a - b)):.3g}"


def test_symbols_from_var_gene_name(fx, model):
    """The official h5ad reader takes symbols from ``var.gene_name``: Ensembl var_names + that column work."""
    a = ad.read_h5ad(fx / "input_pbmc200_19264.h5ad")[ROWS].copy()
    ref = np.load(fx / "ref" / "pbmc200_cell_t4_all.npy")[ROWS]
    a.var["gene_name"] = a.var_names.astype(str)
    a.var_names = [f"ENSG{i:011d}" for i in range(a.n_vars)]
    X, prov = _emb(a, model, pre_normalized="F", tgthighres="t4", pool="all")
    _close(X, ref)
    assert prov["coverage"]["n_genes_matched"] == 19264
    assert prov["coverage"]["gene_symbols_from"] == "var['gene_name']"


def test_var_gene_name_ignored_when_worse(fx, model):
    """A ``gene_name`` column that matches fewer panel genes than var_names does not replace them."""
    a = ad.read_h5ad(fx / "input_pbmc200_19264.h5ad")[ROWS].copy()
    ref = np.load(fx / "ref" / "pbmc200_cell_t4_max.npy")[ROWS]
    a.var["gene_name"] = [f"junk{i}" for i in range(a.n_vars)]
    X, prov = _emb(a, model, pre_normalized="F", tgthighres="t4", pool="max")
    _close(X, ref)
    assert prov["coverage"]["gene_symbols_from"] == "var_names"


def test_var_gene_name_prenormalized_A(fx, model):
    """'A' layout with symbols in ``var.gene_name``: the total column is still found (by var_names here)."""
    a = ad.read_h5ad(fx / "input_pbmc200_19265_lognorm_total.h5ad")[ROWS].copy()
    ref = np.load(fx / "ref" / "pbmc200_cell_preA_a5_all.npy")[ROWS]
    names = list(a.var_names.astype(str))
    a.var["gene_name"] = names[:-1] + ["nan"]
    a.var_names = [f"ENSG{i:011d}" for i in range(a.n_vars - 1)] + ["total_count"]
    X, _ = _emb(a, model, pre_normalized="A", tgthighres="a5", pool="all")
    _close(X, ref)


def test_check_counts_false_accepts_non_integer_counts(fx, model):
    """Non-integer counts are refused by default (they may be normalised data) and accepted on request."""
    a = ad.read_h5ad(fx / "input_pbmc200_19264.h5ad")[ROWS].copy()
    ref = np.load(fx / "ref" / "pbmc200_cell_t4_all.npy")[ROWS]
    X, _ = _emb(a, model, pre_normalized="F", tgthighres="t4", pool="all", check_counts=False)
    _close(X, ref)  # integer counts: the same result either way
    a.X = a.X * 1.5
    with pytest.raises(ValueError, match="check_counts=False"):
        _emb(a, model, pre_normalized="F", tgthighres="t4", pool="all")
    X15, prov = _emb(a, model, pre_normalized="F", tgthighres="t4", pool="all", check_counts=False)
    assert np.isfinite(X15).all() and prov["params"]["check_counts"] is False
    a.X[0, 0] = -1.0
    with pytest.raises(ValueError, match="negative"):
        _emb(a, model, pre_normalized="F", tgthighres="t4", pool="all", check_counts=False)


def test_prenormalized_A_total_by_position(fx, model):
    """Official N × 19,265 layout: the last variable is the total whatever its name; other layouts must name it."""
    a = ad.read_h5ad(fx / "input_pbmc200_19265_lognorm_total.h5ad")[ROWS].copy()
    ref = np.load(fx / "ref" / "pbmc200_cell_preA_a5_all.npy")[ROWS]
    a.var_names = list(a.var_names[:-1].astype(str)) + ["library_size"]
    X, _ = _emb(a, model, pre_normalized="A", tgthighres="a5", pool="all")
    _close(X, ref)
    shuffled = a[:, np.r_[1, 0, 2 : a.n_vars]].copy()  # panel not in order: the last column is not taken blindly
    with pytest.raises(ValueError, match="total"):
        _emb(shuffled, model, pre_normalized="A", tgthighres="a5", pool="all")
