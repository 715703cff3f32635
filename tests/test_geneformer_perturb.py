"""Geneformer in-silico perturbation: parity with the official ``InSilicoPerturber`` and input handling."""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import scfm
from scfm.models.geneformer._perturb import TokenSpec, compute_isp, overflow, perturb_cell

ATOL = 1e-5
SYMBOL = {"ENSG00000075624": "ACTB", "ENSG00000019582": "CD74", "ENSG00000143546": "S100A8"}
KEY = "geneformer_perturbation"


# ---- fixtures ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def isp_cells(gf: Path) -> pd.DataFrame:
    return pd.read_csv(gf / "isp_cells.csv")


@pytest.fixture(scope="module")
def isp_genes(gf: Path):
    return np.load(gf / "isp_genes.npz")


@pytest.fixture(scope="module")
def cells20(gf: Path) -> list[str]:
    return json.loads((gf / "manifest.json").read_text())["isp"]["config"]["cells"]


@pytest.fixture(scope="module")
def adata20(gf: Path, cells20: list[str]) -> ad.AnnData:
    return ad.read_h5ad(gf / "input_pbmc200.h5ad")[cells20].copy()


@pytest.fixture(scope="module")
def short8(adata20: ad.AnnData) -> ad.AnnData:
    """The 8 cells with the fewest expressed genes (fast)."""
    return adata20[np.argsort(np.diff(adata20.X.indptr))[:8]].copy()


@pytest.fixture(scope="module")
def models(gf: Path, shared: Path) -> dict:
    res = shared / "resources" / "geneformer"
    return {v: scfm.models.load("geneformer", checkpoint=gf / f"tiny-{v}", resources=res / v, random_weights=True)
            for v in ("v1", "v2")}


def _tokens(gf: Path, version: str) -> dict[str, np.ndarray]:
    t = np.load(gf / f"tokens_{version}.npz")
    return {c: t["input_ids"][t["offsets"][i] : t["offsets"][i + 1]] for i, c in enumerate(t["cell_index"])}


def _spec(version: str) -> TokenSpec:
    return TokenSpec(2048) if version == "v1" else TokenSpec(4096, cls_id=2, eos_id=3)


def _check_cells(table: pd.DataFrame, col: str, rows: pd.DataFrame, cells20: list[str]) -> None:
    """Values per cell_id within ATOL; NaN exactly for the cells the official code did not perturb."""
    got = table.loc[rows["cell_id"], col].to_numpy(np.float64)
    np.testing.assert_allclose(got, rows["cos_sim"].to_numpy(), rtol=0, atol=ATOL)
    missing = sorted(set(cells20) - set(rows["cell_id"]))
    assert table.loc[missing, col].isna().all()
    assert table[col].notna().sum() == len(rows)


# ---- token-level rules (no model) ----------------------------------------------------------------------------
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_inputs_match_official_lengths(gf, isp_cells, version):
    """Original / perturbed inputs and perturbed indices of every (run, cell) row, incl. P5/P6 truncation."""
    cells = _tokens(gf, version)
    rows = isp_cells[isp_cells["model"] == version]
    for r in rows.itertuples():
        toks = [int(x) for x in str(r.tokens_to_perturb).split(";")]
        pc = perturb_cell(cells[r.cell_id], toks, r.perturb_type, _spec(version))
        assert pc is not None
        assert (len(pc.orig), len(pc.pert)) == (r.orig_input_length, r.perturbed_input_length), r
        idx = [int(x) for x in str(r.perturb_index).split(";")]
        assert list(pc.perturb_index) == ([] if idx == [-100] else idx)
    # delete: cells lacking a gene are not perturbed (P2)
    sel = rows[rows["run"] == "delete_g2"]
    toks = [int(sel["tokens_to_perturb"].iloc[0])]
    for c in set(rows["cell_id"]) - set(sel["cell_id"]):
        assert perturb_cell(cells[c], toks, "delete", _spec(version)) is None


def test_overflow_rules_synthetic():
    spec1, spec2 = TokenSpec(8), TokenSpec(8, cls_id=2, eos_id=3)
    # V1, full cell lacking the gene: perturbed = [g] + first 7, original = first 7 (P5/P6)
    pc = perturb_cell(np.arange(10, 18), [99], "overexpress", spec1)
    assert pc.pert.tolist() == [99, *range(10, 17)] and pc.orig.tolist() == list(range(10, 17))
    assert pc.affected.tolist() == list(range(10, 17))
    # official double counting: one token short of the limit still gives n_overflow = 1
    assert overflow(8, 8, 1, 0) == 1
    pc = perturb_cell(np.array([2, 10, 11, 12, 13, 14, 3]), [99], "overexpress", spec2)
    assert pc.pert.tolist() == [2, 99, 10, 11, 12, 13, 14, 3]
    assert pc.orig.tolist() == [2, 10, 11, 12, 13, 3]  # cut by n_overflow=1 although nothing was cut (P6)
    assert pc.n_compared == 4 and pc.affected.tolist() == [10, 11, 12, 13]  # genes both share
    # V2 delete keeps <cls>/<eos>; compared positions skip them
    pc = perturb_cell(np.array([2, 10, 11, 12, 3]), [11], "delete", spec2)
    assert pc.pert.tolist() == [2, 10, 12, 3] and pc.affected.tolist() == [10, 12]
    assert perturb_cell(np.array([11]), [11], "delete", spec1) is None  # nothing left to compare
    only = perturb_cell(np.array([2, 11, 3]), [11], "delete", spec2)  # V2: <cls> states still comparable
    assert only.pert.tolist() == [2, 3] and only.n_compared == 0


def test_inhibit_activate_rank_shift():
    spec = TokenSpec(64)
    ids = np.arange(100, 116)  # 16 genes: quartiles of 4
    up = perturb_cell(ids, [113], "activate", spec, rank_shift=1)  # 4th quartile -> middle of 3rd
    assert up.pert.tolist().index(113) == 10 and len(up.pert) == 16
    assert perturb_cell(ids, [105], "activate", spec, rank_shift=2).pert[0] == 105  # 2nd -> front
    down = perturb_cell(ids, [101], "inhibit", spec, rank_shift=2)  # 1st -> middle of 3rd
    assert down.pert.tolist().index(101) == 10
    assert perturb_cell(ids, [109], "inhibit", spec, rank_shift=2).pert[-1] == 109  # 3rd -> bottom
    for pc in (up, down):  # the other genes are compared with themselves
        assert np.array_equal(pc.orig[pc.orig_keep], pc.pert[pc.pert_keep])
    assert perturb_cell(ids, [999], "inhibit", spec) is None


def test_batch_size_does_not_change_values(gf, models, isp_cells):
    """P8: per-cell comparison, so a minibatch whose longest cell has the gene and another lacks it works."""
    cells = _tokens(gf, "v1")
    net = models["v1"].network
    ids = ["AAACGCTAGACATAGT-1", "AAACCCAGTATCGAAA-1"]  # 904 tokens with S100A8, 697 without (official crash)
    rows = isp_cells[(isp_cells["model"] == "v1") & (isp_cells["run"] == "overexpress_g3")
                     & (isp_cells["emb_mode"] == "cell")].set_index("cell_id")

    def fwd(tok, lens):
        return net.hidden_states(tok, lens, layer=1)

    res = compute_isp([cells[c] for c in ids], [[8385]], kind="overexpress", spec=_spec("v1"), forward=fwd,
                      batch_size=2)
    np.testing.assert_allclose(res.cos[:, 0], rows.loc[ids, "cos_sim"].to_numpy(), rtol=0, atol=ATOL)


# ---- parity through the public call ------------------------------------------------------------------------------
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_isp_parity(version, models, adata20, isp_cells, isp_genes, cells20):
    """All 16 official runs (cell / cell_and_gene resp. cls / cls_and_gene give the same cell values)."""
    m = models[version]
    pooling = "cls" if version == "v2" else "mean"
    rows = isp_cells[isp_cells["model"] == version]
    gene_mode = "cls_and_gene" if version == "v2" else "cell_and_gene"

    def runs(run):
        sel = rows[rows["run"] == run]
        assert set(sel["emb_mode"]) == {gene_mode, gene_mode.split("_")[0]}
        return [g for _, g in sel.groupby("emb_mode")]

    # delete g1 and g2 separately, symbols, combine=False -> two columns
    a = adata20.copy()
    scfm.tl.in_silico_perturb(a, genes=["ACTB", "CD74"], model=m, perturbation="delete", pooling=pooling)
    table = a.obsm[KEY]
    assert list(table.columns) == ["ACTB", "CD74"] and table.index.equals(a.obs_names)
    for run, col in [("delete_g1", "ACTB"), ("delete_g2", "CD74")]:
        for r in runs(run):
            _check_cells(table, col, r, cells20)
    summ = a.uns[f"{KEY}_summary"]
    assert summ.loc["CD74", "n_cells_expressing"] == 16 and summ.loc["ACTB", "n_cells_perturbed"] == 20

    # delete g1+g2 together (combine) and overexpress g3 given as an Ensembl ID, with gene-level shifts
    for run, genes, kind in [("delete_g1g2", ["ACTB", "CD74"], "delete"),
                             ("overexpress_g3", ["ENSG00000143546"], "overexpress")]:
        a = adata20.copy()
        scfm.tl.in_silico_perturb(a, genes=genes, model=m, perturbation=kind, pooling=pooling, combine=True,
                                  gene_shifts=True, batch_size=8)
        col = "+".join(SYMBOL.get(g, g) for g in genes)
        assert list(a.obsm[KEY].columns) == [col]
        for r in runs(run):
            _check_cells(a.obsm[KEY], col, r, cells20)
        gt = a.uns[f"{KEY}_genes"][col]
        name = f"{version}__{run}__{gene_mode}"
        off, cos = isp_genes[f"{name}__offsets"], isp_genes[f"{name}__cos_sim"]
        for k, c in enumerate(isp_genes[f"{name}__cell_index"]):
            got = gt.loc[gt["cell"] == c, "cos_sim"].to_numpy()
            assert len(got) == off[k + 1] - off[k]
            np.testing.assert_allclose(got, cos[off[k] : off[k + 1]], rtol=0, atol=ATOL)
        assert set(gt["cell"]) == set(isp_genes[f"{name}__cell_index"])


# ---- options and bad input ---------------------------------------------------------------------------------------
def test_goal_state_and_extensions(models, short8):
    a = short8.copy()
    a.obs["group"] = np.where(np.arange(a.n_obs) < 4, "A", "B")
    scfm.tl.in_silico_perturb(a, genes="S100A8", model=models["v1"], perturbation="overexpress",
                              goal_state=("group", "B"))
    t = a.obsm[KEY]
    assert list(t.columns) == ["S100A8", "S100A8_goal_shift"]
    assert t.notna().all().all() and np.abs(t["S100A8_goal_shift"]).max() < 2
    assert "mean_goal_shift" in a.uns[f"{KEY}_summary"]
    # V2 mean pooling (scfm extension) and inhibit run and give finite values for the cells with the gene
    a = short8.copy()
    scfm.tl.in_silico_perturb(a, genes="ACTB", model=models["v2"], perturbation="inhibit", pooling="mean",
                              rank_shift=2)
    v = a.obsm[KEY]["ACTB"]
    assert v.notna().all() and (v < 1).all()


def test_gene_not_expressed_gives_nan(models, short8):
    m = models["v1"]
    present = set(short8.var["ensembl_id"].astype(str))
    gid = next(g for g in m.dictionaries.token_dict if g.startswith("ENSG") and g not in present)
    a = short8.copy()
    scfm.tl.in_silico_perturb(a, genes=[gid, "ACTB"], model=m, perturbation="delete")
    t = a.obsm[KEY]
    assert t.iloc[:, 0].isna().all() and t["ACTB"].notna().all()
    assert a.uns[f"{KEY}_summary"].iloc[0]["n_cells_expressing"] == 0


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        ({"genes": ["NOT_A_GENE"]}, ValueError, "NOT_A_GENE"),
        ({"genes": ["ACTB"], "pooling": "cls"}, ValueError, "V1"),
        ({"genes": ["ACTB"], "perturbation": "knockdown"}, ValueError, "perturbation"),
        ({"genes": ["ACTB", "ENSG00000075624"]}, ValueError, "twice"),
        ({"genes": ["ACTB"], "goal_state": ("nope", 1)}, KeyError, "nope"),
    ],
)
def test_bad_input_leaves_adata_untouched(models, short8, kwargs, err, match):
    a = short8.copy()
    before = (set(a.obsm), set(a.uns), set(a.obs.columns))
    with pytest.raises(err, match=match):
        scfm.tl.in_silico_perturb(a, model=models["v1"], **kwargs)
    assert (set(a.obsm), set(a.uns), set(a.obs.columns)) == before


def test_chunked_equals_whole(models, short8, monkeypatch):
    """Cells are tokenised and perturbed chunk by chunk: the results do not depend on the chunk size."""
    from scfm.models.geneformer import _perturb

    calls = []
    real = _perturb.compute_isp

    def spy(cells, *args, **kwargs):
        calls.append(len(cells))
        return real(cells, *args, **kwargs)

    monkeypatch.setattr(_perturb, "compute_isp", spy)
    a = short8.copy()
    a.obs["group"] = np.where(np.arange(a.n_obs) % 2 == 0, "A", "B")
    a.X[2] = 0  # a cell without any gene between chunks: NaN row
    out = {}
    for chunk in (None, 3):
        b = a.copy()
        scfm.tl.in_silico_perturb(b, genes=["ACTB", "CD74"], model=models["v2"], perturbation="delete",
                                  gene_shifts=True, goal_state=("group", "B"), chunk_size=chunk, batch_size=2)
        out[chunk] = b
    assert calls == [7, 2, 3, 2]  # all 7 cells with genes at once, then chunks of 3 cells (cell 2 is empty)
    t0, t3 = out[None].obsm[KEY], out[3].obsm[KEY]
    assert t0.columns.equals(t3.columns) and t0.iloc[2].isna().all()
    np.testing.assert_allclose(t3.to_numpy(), t0.to_numpy(), rtol=0, atol=1e-6)
    for col in ("ACTB", "CD74"):
        g0, g3 = (o.uns[f"{KEY}_genes"][col] for o in (out[None], out[3]))
        key = ["cell", "gene_id"]
        g0 = g0.sort_values(key, kind="stable").reset_index(drop=True)
        g3 = g3.sort_values(key, kind="stable").reset_index(drop=True)
        assert len(g0) == len(g3) > 0 and (g0["cell"].astype(str) == g3["cell"].astype(str)).all()
        np.testing.assert_allclose(g3["cos_sim"], g0["cos_sim"], rtol=0, atol=1e-6)
    pd.testing.assert_frame_equal(out[3].uns[f"{KEY}_summary"], out[None].uns[f"{KEY}_summary"], atol=1e-6)
