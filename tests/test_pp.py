"""scfm.pp: count checks, gene ID mapping, ortholog conversion (real PBMC data and the real BioMart table)."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp

import scfm
from scfm.pp import check_counts, convert_orthologs, detect_species, map_gene_ids, map_ids, validate_counts_block
from scfm.pp._counts import _windows


def _snapshot(adata: ad.AnnData) -> dict:
    x = adata.X
    return {
        "X": x.toarray() if sp.issparse(x) else np.array(x),
        "obs": adata.obs.copy(),
        "var": adata.var.copy(),
        "layers": {k: (v.toarray() if sp.issparse(v) else np.array(v)) for k, v in adata.layers.items()},
        "uns": sorted(adata.uns.keys()),
        "raw": adata.raw is not None,
        "shape": adata.shape,
    }


def _assert_unchanged(adata: ad.AnnData, snap: dict) -> None:
    now = _snapshot(adata)
    assert now["shape"] == snap["shape"]
    np.testing.assert_array_equal(now["X"], snap["X"])
    pd.testing.assert_frame_equal(now["obs"], snap["obs"])
    pd.testing.assert_frame_equal(now["var"], snap["var"])
    assert now["layers"].keys() == snap["layers"].keys()
    for k in snap["layers"]:
        np.testing.assert_array_equal(now["layers"][k], snap["layers"][k])
    assert now["uns"] == snap["uns"]
    assert now["raw"] == snap["raw"]


@pytest.fixture
def lognorm(pbmc200: ad.AnnData) -> ad.AnnData:
    """PBMCs after the usual scanpy normalisation, counts gone."""
    a = pbmc200.copy()
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    return a


@pytest.fixture(scope="module")
def biomart(shared: Path) -> pd.DataFrame:
    return pd.read_csv(shared / "data" / "orthologs" / "human_mouse_ensembl_biomart.tsv", sep="\t", dtype=str)


# ---- validate_counts_block ----------------------------------------------------------------------------------


@pytest.mark.parametrize("to_block", [np.asarray, sp.csr_matrix])
def test_validate_counts_block_accepts_counts(to_block):
    validate_counts_block(to_block(np.array([[0, 3, 1], [7, 0, 0]], dtype=np.float32)))
    validate_counts_block(to_block(np.array([[0, 3, 1]], dtype=np.int64)))
    validate_counts_block(sp.csr_matrix((0, 5), dtype=np.float32))


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([[0.0, 0.693, 1.2]], "log-normalised"),
        ([[0.0, 153.4, 2.0]], "normalised"),
        ([[-0.3, 1.0, 2.0]], "scaled"),
        ([[np.nan, 1.0, 2.0]], "NaN"),
        ([[np.inf, 1.0, 2.0]], "infinite"),
    ],
)
@pytest.mark.parametrize("to_block", [np.asarray, sp.csr_matrix])
def test_validate_counts_block_rejects(values, expected, to_block):
    with pytest.raises(ValueError, match=expected) as err:
        validate_counts_block(to_block(np.array(values, dtype=np.float64)), where="adata.layers['x']")
    msg = str(err.value)
    assert "adata.layers['x']" in msg
    assert "layer='counts'" in msg and "use_raw=True" in msg


# ---- detect_species ----------------------------------------------------------------------------------------------


def test_detect_species(pbmc200):
    assert detect_species(pbmc200.var_names) == "human"
    assert detect_species(["Actb", "Gapdh", "Cd4", "mt-Co1", "Gm12345", "0610005C13Rik"]) == "mouse"
    assert detect_species(["ACTB", "GAPDH", "MT-CO1", "C1orf112", "HLA-A"]) == "human"
    assert detect_species(["ENSG00000075624", "ENSG00000111640.15"]) == "human"
    assert detect_species(["ENSMUSG00000029580", "ENSMUSG00000057666"]) == "mouse"
    assert detect_species([]) == "unknown"
    assert detect_species(["1", "2", "3"]) == "unknown"
    assert detect_species(["ACTB", "GAPDH", "Actb", "Gapdh"]) == "unknown"  # barnyard mix


# ---- check_counts ------------------------------------------------------------------------------------------------


def test_check_counts_accepts_pbmc(pbmc200):
    snap = _snapshot(pbmc200)
    assert check_counts(pbmc200) == "X"
    assert check_counts(pbmc200, max_cells=20) == "X"
    _assert_unchanged(pbmc200, snap)


def test_check_counts_rejects_lognormalised(lognorm):
    snap = _snapshot(lognorm)
    with pytest.raises(ValueError, match="log-normalised") as err:
        check_counts(lognorm)
    msg = str(err.value)
    assert "adata.X" in msg and "layer='counts'" in msg and "use_raw=True" in msg
    _assert_unchanged(lognorm, snap)


def test_check_counts_rejects_scaled(lognorm):
    sc.pp.scale(lognorm, max_value=10)
    with pytest.raises(ValueError, match="negative"):
        check_counts(lognorm)


def test_check_counts_finds_layer_and_raw(pbmc200, lognorm, capsys):
    a = lognorm.copy()
    a.layers["lognorm"] = a.X.copy()
    a.layers["counts"] = pbmc200.X.copy()
    snap = _snapshot(a)
    assert check_counts(a) == "layers['counts']"
    assert "pass `layer='counts'`" in capsys.readouterr().err
    assert check_counts(a, layer="counts") == "layers['counts']"
    with pytest.raises(ValueError, match=r"adata\.layers\['counts'\]: pass `layer='counts'`"):
        check_counts(a, layer="lognorm")
    _assert_unchanged(a, snap)

    b = lognorm.copy()
    b.raw = pbmc200
    assert check_counts(b) == "raw"
    assert check_counts(b, use_raw=True) == "raw"
    b.layers["lognorm"] = b.X.copy()
    with pytest.raises(ValueError, match="pass `use_raw=True`"):
        check_counts(b, layer="lognorm")
    with pytest.raises(KeyError, match="not in adata.layers"):
        check_counts(b, layer="missing")


def test_check_counts_backed(pbmc200, lognorm, tmp_path):
    counts = pbmc200.copy()
    counts.X = sp.csr_matrix(counts.X)
    counts.write_h5ad(tmp_path / "counts.h5ad")
    logged = lognorm.copy()
    logged.X = sp.csr_matrix(logged.X)
    logged.write_h5ad(tmp_path / "log.h5ad")

    backed = ad.read_h5ad(tmp_path / "counts.h5ad", backed="r")
    assert check_counts(backed, chunk_size=32) == "X"
    assert check_counts(backed, chunk_size=16, max_cells=50) == "X"

    mapped = map_gene_ids(backed, copy=True)  # only .var is touched; the copy is in memory
    assert not mapped.isbacked and (mapped.var["ensembl_id"] != "").mean() >= 0.8
    assert "ensembl_id" not in backed.var
    backed.file.close()

    backed = ad.read_h5ad(tmp_path / "log.h5ad", backed="r")
    with pytest.raises(ValueError, match="log-normalised"):
        check_counts(backed, chunk_size=32, max_cells=40)
    backed.file.close()


def test_check_counts_exact_on_checked_rows(pbmc200):
    """One bad value anywhere is found when all cells are checked; the sample always covers both ends."""
    a = pbmc200.copy()
    a.X = sp.csr_matrix(a.X)
    row = 137
    a.X.data[a.X.indptr[row]] = 0.5
    with pytest.raises(ValueError, match="non-integer"):
        check_counts(a, max_cells=None, chunk_size=64)
    for n_obs, max_cells, chunk in [(1_000_000, 10_000, 10_000), (1000, 100, 7), (100, 1000, 30), (50, 3, 10)]:
        win = _windows(n_obs, max_cells, chunk)
        assert win[0][0] == 0 and win[-1][1] == n_obs  # first and last cell are always checked
        assert all(stop0 <= start1 for (_, stop0), (start1, _) in zip(win[:-1], win[1:], strict=True))
        covered = sum(stop - start for start, stop in win)
        if n_obs <= max_cells:
            assert covered == n_obs
        else:
            assert 0 < covered <= max_cells


# ---- map_ids / map_gene_ids -----------------------------------------------------------------------------------


def test_map_ids_rules_and_duplicates():
    mapping = {"ACTB": "E1", "GAPDH": ["E2", "E9"], "Foo": "E3", "FOO": "E4", "ENSG00000000001": "S1", "CD4": "E5"}
    aliases = {"OLDNAME": "E6", "OLDCD4": "E5"}
    names = ["ACTB", "actb", "Gapdh", "foo", "ENSG00000000001.7", "oldname", "OLDCD4", "CD4", "NOPE"]
    ids, rep = map_ids(names, mapping, aliases=aliases)
    assert ids.tolist() == ["E1", "", "E2", "", "S1", "E6", "", "E5", ""]
    assert rep["n_genes"] == 9 and rep["n_mapped"] == 5 and rep["n_unmapped"] == 4
    assert rep["n_exact"] == 2 and rep["n_case_insensitive"] == 1 and rep["n_version_stripped"] == 1
    assert rep["n_alias"] == 1
    assert rep["n_duplicated"] == 2  # actb (case-insensitive) loses to ACTB; OLDCD4 (alias) loses to CD4
    assert any("actb→E1 (kept for ACTB)" in e for e in rep["duplicated_examples"])
    assert rep["n_multiple"] == 1 and rep["multiple_examples"] == ["Gapdh→E2|E9"]
    assert rep["n_ambiguous"] == 1 and rep["ambiguous_examples"] == ["foo"]  # Foo / FOO disagree
    assert rep["unmapped_examples"] == ["actb", "foo", "OLDCD4", "NOPE"]

    kept, rep2 = map_ids(names, mapping, aliases=aliases, duplicates="keep")
    assert kept[1] == "E1" and kept[6] == "E5" and rep2["n_duplicated"] == 2 and rep2["n_mapped"] == 7
    strict, _ = map_ids(["actb"], mapping, case_insensitive=False)
    assert strict.tolist() == [""]
    again, _ = map_ids(names, mapping, aliases=aliases)
    np.testing.assert_array_equal(ids, again)


def test_map_gene_ids_pbmc(pbmc200):
    obs_before, x_before = pbmc200.obs.copy(), pbmc200.X.copy()
    rep = map_gene_ids(pbmc200)
    assert rep["species"] == "human" and rep["to"] == "ensembl" and rep["key_added"] == "ensembl_id"
    assert rep["fraction_mapped"] >= 0.8
    assert rep["n_mapped"] + rep["n_unmapped"] == pbmc200.n_vars
    ens = pbmc200.var["ensembl_id"]
    assert ens["ACTB"] == "ENSG00000075624" and ens["CD3E"] == "ENSG00000198851" and ens["MS4A1"] == "ENSG00000156738"
    assert (ens != "").sum() == rep["n_mapped"]
    assert ens[ens != ""].is_unique  # duplicates='first' resolves several genes → one ID
    assert rep["n_duplicated"] > 0 and rep["duplicated_examples"]
    assert rep["n_case_insensitive"] > 0  # e.g. C1ORF159 → C1orf159
    pd.testing.assert_frame_equal(pbmc200.obs, obs_before)
    np.testing.assert_array_equal(pbmc200.X, x_before)

    # back to symbols: every mapped gene comes back, mostly to the same name
    back = ad.AnnData(var=pd.DataFrame(index=ens[ens != ""].to_numpy()))
    rep_back = map_gene_ids(back, to="symbol", species="human")
    assert rep_back["fraction_mapped"] == 1.0
    same = back.var["gene_symbol"].to_numpy() == ens[ens != ""].index.to_numpy()
    assert same.mean() > 0.9


def test_map_gene_ids_agrees_with_cellranger(shared):
    """On 10x Cell Ranger output the mapped Ensembl IDs agree with the IDs Cell Ranger wrote."""
    a = sc.read_10x_h5(shared / "data" / "pbmc" / "10x_v3_chr21" / "filtered_feature_bc_matrix.h5")
    rep = map_gene_ids(a, key_added="ens")
    m = a.var["ens"] != ""
    assert rep["n_mapped"] > 250
    assert (a.var.loc[m, "ens"] == a.var.loc[m, "gene_ids"]).mean() >= 0.99
    b = a.copy()
    b.var_names = b.var["gene_ids"].to_numpy()
    b.var_names = [v + ".3" if i % 2 else v for i, v in enumerate(b.var_names)]  # versioned IDs
    rep = map_gene_ids(b, to="symbol")
    assert rep["fraction_mapped"] > 0.9 and rep["n_version_stripped"] > 200


def test_map_gene_ids_copy_and_errors(pbmc200):
    snap = _snapshot(pbmc200)
    out = map_gene_ids(pbmc200, copy=True, key_added="ens")
    assert isinstance(out, ad.AnnData) and "ens" in out.var
    _assert_unchanged(pbmc200, snap)

    with pytest.raises(ValueError, match="`to` must be"):
        map_gene_ids(pbmc200, to="entrez")
    with pytest.raises(ValueError, match="`species` must be"):
        map_gene_ids(pbmc200, species="rat")
    _assert_unchanged(pbmc200, snap)

    odd = ad.AnnData(np.zeros((2, 3)), var=pd.DataFrame(index=["1", "2", "3"]))
    odd_snap = _snapshot(odd)
    with pytest.raises(ValueError, match="species="):
        map_gene_ids(odd)
    with pytest.raises(KeyError, match="source_column"):
        map_gene_ids(odd, source_column="nope")
    _assert_unchanged(odd, odd_snap)


def test_map_gene_ids_user_table(tmp_path):
    a = ad.AnnData(np.zeros((2, 4)), var=pd.DataFrame(index=["g1", "G2", "g3", "g4"]))
    table = pd.DataFrame({"name": ["g1", "g2", "g3", "g3", "g4"], "id": ["X1", "X2", "X3", "X3b", "X1"]})
    rep = map_gene_ids(a, table=table)
    assert a.var["ensembl_id"].tolist() == ["X1", "X2", "X3", ""]
    assert rep["n_multiple"] == 1 and rep["n_duplicated"] == 1 and rep["source"] == "user table"
    path = tmp_path / "table.tsv"
    table.to_csv(path, sep="\t", index=False)
    b = a.copy()
    map_gene_ids(b, table=path, key_added="custom")
    assert b.var["custom"].tolist() == a.var["ensembl_id"].tolist()
    map_gene_ids(b, table={"g4": "Y4"}, key_added="d")
    assert b.var["d"].tolist() == ["", "", "", "Y4"]


def test_map_gene_ids_mouse(biomart):
    genes = ["Actb", "Gapdh", "Cd4", "Ptprc", "mt-Co1"]
    truth = biomart.drop_duplicates("mmusculus_homolog_associated_gene_name").set_index(
        "mmusculus_homolog_associated_gene_name"
    )["mmusculus_homolog_ensembl_gene"]
    a = ad.AnnData(np.zeros((3, len(genes) + 1)), var=pd.DataFrame(index=[*genes, "NotAGene1"]))
    rep = map_gene_ids(a)
    assert rep["species"] == "mouse"
    assert a.var["ensembl_id"].tolist() == [truth[g] for g in genes] + [""]
    assert rep["n_unmapped"] == 1 and rep["unmapped_examples"] == ["NotAGene1"]
    b = ad.AnnData(np.zeros((3, len(genes))), var=pd.DataFrame(index=[truth[g] for g in genes]))
    map_gene_ids(b, to="symbol")
    assert b.var["gene_symbol"].tolist() == genes


# ---- convert_orthologs ----------------------------------------------------------------------------------------


def _mouse_from_table(biomart: pd.DataFrame, n_one2one: int = 40, seed: int = 0):
    """A small synthetic mouse AnnData: one-to-one genes, a human gene with two mouse orthologs, a fake gene."""
    t = biomart.dropna(subset=["hgnc_symbol", "mmusculus_homolog_associated_gene_name"])
    one = t[t["mmusculus_homolog_orthology_type"] == "ortholog_one2one"]
    one = one[~one["hgnc_symbol"].duplicated(keep=False)]
    one = one[~one["mmusculus_homolog_associated_gene_name"].duplicated(keep=False)].head(n_one2one)
    # a human gene with several mouse orthologs, each of which has only this human ortholog
    o2m = t[t["mmusculus_homolog_orthology_type"] == "ortholog_one2many"]
    n_targets = t.groupby("mmusculus_homolog_associated_gene_name")["hgnc_symbol"].nunique()
    o2m = o2m[o2m["mmusculus_homolog_associated_gene_name"].map(n_targets) == 1]
    sizes = o2m.groupby("hgnc_symbol")["mmusculus_homolog_associated_gene_name"].nunique()
    human_multi = sorted(sizes[sizes >= 2].index)[0]
    multi = sorted(o2m.loc[o2m["hgnc_symbol"] == human_multi, "mmusculus_homolog_associated_gene_name"].unique())[:2]

    genes = [*one["mmusculus_homolog_associated_gene_name"], *multi, "Fakegene1"]
    rng = np.random.default_rng(seed)
    counts = rng.poisson(2.0, size=(25, len(genes))).astype(np.float32)
    a = ad.AnnData(
        sp.csr_matrix(counts),
        obs=pd.DataFrame({"cell_type": rng.choice(["a", "b"], 25)}, index=[f"c{i}" for i in range(25)]),
        var=pd.DataFrame(index=genes),
    )
    a.layers["counts"] = a.X.copy()
    a.obsm["X_pca"] = rng.normal(size=(25, 3))
    a.uns["note"] = "synthetic"
    return a, list(one["hgnc_symbol"]), human_multi, multi, counts


def test_convert_orthologs_one2one(biomart):
    a, human, human_multi, multi, counts = _mouse_from_table(biomart)
    snap = _snapshot(a)
    out = convert_orthologs(a, source="mouse", target="human")
    _assert_unchanged(a, snap)
    assert list(out.var_names) == human  # one-to-one only: the multi-copy gene and the fake gene are dropped
    assert sp.issparse(out.X) and out.X.format == "csr"
    np.testing.assert_array_equal(out.X.toarray(), counts[:, : len(human)])
    np.testing.assert_array_equal(out.layers["counts"].toarray(), counts[:, : len(human)])
    assert out.var["mouse_gene"].tolist() == list(a.var_names[: len(human)])
    assert (out.var["n_mouse_genes"] == 1).all()
    pd.testing.assert_frame_equal(out.obs, a.obs)
    np.testing.assert_array_equal(out.obsm["X_pca"], a.obsm["X_pca"])
    assert out.uns["note"] == "synthetic"


def test_convert_orthologs_many_to_one(biomart):
    a, human, human_multi, multi, counts = _mouse_from_table(biomart)
    out = convert_orthologs(a, one2one_only=False)
    assert list(out.var_names) == [*human, human_multi]
    np.testing.assert_array_equal(out[:, human_multi].X.toarray().ravel(), counts[:, -3] + counts[:, -2])
    assert out.var.loc[human_multi, "mouse_gene"] == ",".join(multi)
    assert out.var.loc[human_multi, "n_mouse_genes"] == 2
    mean = convert_orthologs(a, one2one_only=False, aggregate="mean")
    np.testing.assert_allclose(mean[:, human_multi].X.toarray().ravel(), (counts[:, -3] + counts[:, -2]) / 2)
    np.testing.assert_array_equal(mean[:, human].X.toarray(), counts[:, : len(human)])


def test_convert_orthologs_ensembl_backed_and_back(biomart, tmp_path):
    a, human, *_ = _mouse_from_table(biomart, n_one2one=30)
    sym2ens = biomart.drop_duplicates("mmusculus_homolog_associated_gene_name").set_index(
        "mmusculus_homolog_associated_gene_name"
    )
    b = a[:, : len(human)].copy()
    b.var_names = sym2ens.loc[list(b.var_names), "mmusculus_homolog_ensembl_gene"].to_numpy()
    b.write_h5ad(tmp_path / "mouse.h5ad")
    backed = ad.read_h5ad(tmp_path / "mouse.h5ad", backed="r")
    out = convert_orthologs(backed)
    backed.file.close()
    assert all(v.startswith("ENSG") for v in out.var_names) and out.n_vars == len(human)
    np.testing.assert_array_equal(out.X.toarray(), b.X.toarray())
    # and back: human → mouse gives the original genes
    back = convert_orthologs(out, source="human", target="mouse")
    assert list(back.var_names) == list(b.var_names)
    np.testing.assert_array_equal(back.X.toarray(), b.X.toarray())


def test_convert_orthologs_user_table_and_copy_false():
    a = ad.AnnData(
        sp.csr_matrix(np.array([[1, 2, 3, 4], [5, 6, 7, 8]], dtype=np.int32)),
        var=pd.DataFrame(index=["z1", "z2", "z3", "z4"]),
    )
    table = pd.DataFrame({"zebrafish": ["z1", "z2", "z3", "z4"], "human": ["H1", "H2", "H2", ""]})
    out = convert_orthologs(a, source="zebrafish", target="human", table=table)
    assert list(out.var_names) == ["H1"]  # H2 has two sources: not one-to-one
    out = convert_orthologs(a, source="zebrafish", target="human", table=table, one2one_only=False)
    assert list(out.var_names) == ["H1", "H2"]
    np.testing.assert_array_equal(out.X.toarray(), [[1, 5], [5, 13]])
    assert out.X.dtype == np.int32  # integer counts stay integer
    mean = convert_orthologs(a, source="zebrafish", target="human", table=table, one2one_only=False, aggregate="mean")
    np.testing.assert_allclose(mean.X.toarray(), [[1, 2.5], [5, 6.5]])
    assert out.var["zebrafish_gene"].tolist() == ["z1", "z2,z3"]
    res = convert_orthologs(a, source="zebrafish", target="human", table=table, one2one_only=False, copy=False)
    assert res is None and list(a.var_names) == ["H1", "H2"]
    np.testing.assert_array_equal(a.X.toarray(), [[1, 5], [5, 13]])


def test_convert_orthologs_untouched_on_error(biomart, pbmc200):
    a, *_ = _mouse_from_table(biomart, n_one2one=10)
    snap = _snapshot(a)
    with pytest.raises(ValueError, match="aggregate"):
        convert_orthologs(a, aggregate="median")
    with pytest.raises(ValueError, match="nothing to convert"):
        convert_orthologs(a, source="mouse", target="mouse")
    with pytest.raises(ValueError, match="not 'zebrafish'"):
        convert_orthologs(a, source="zebrafish")
    with pytest.raises(ValueError, match="look like mouse genes"):
        convert_orthologs(a, source="human", target="mouse", copy=False)
    with pytest.raises(ValueError, match="is a mouse symbol in the ortholog table"):
        convert_orthologs(a[:, -1:].copy(), copy=False)  # only the fake gene
    _assert_unchanged(a, snap)
    p = pbmc200[:, :50].copy()
    psnap = _snapshot(p)
    with pytest.raises(ValueError, match=r"look like human genes .* Pass `source='human'`, `target='mouse'`"):
        convert_orthologs(p, copy=False)
    _assert_unchanged(p, psnap)


def test_default_tables_come_from_fetch(shared):
    """The built-in tables are fetched into the cache from the mirror (offline), then read from there."""
    from scfm.pp import _tables

    path = _tables._fetch(_tables.GENE_NAME_ID_DICT)
    assert path.is_file() and Path(scfm.settings.cachedir) in path.parents
    assert len(_tables.human_symbol_to_ensembl()) > 60_000
    assert len(_tables.ortholog_table()) == 23_942
