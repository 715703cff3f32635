"""scfm.datasets: every loader reads through the verified cache from the mirror (offline, as in CI)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import scfm
from scfm._io import download as dl
from scfm.datasets import _files


def _all_files():
    files = [_files.PBMC200, _files.PBMC_10X_CHR21_H5, _files.ORTHOLOGS_TSV, _files.ORTHOLOGS_RDA]
    files += [*_files.PBMC_10X_CHR21_MTX, *_files.VISIUM_MINI, *_files.VISIUM_MINI_PROCESSED]
    for section in _files.HER2ST_SECTIONS:
        files += list(_files.her2st_files(section))
    return files


def test_sources_are_pinned_and_match_the_mirror(shared: Path) -> None:
    checked = set()
    for f in _all_files():
        if f.url is not None:  # the ortholog TSV only exists as a conversion of the pinned .rda
            assert re.search(r"/[0-9a-f]{40}/", f.url), f"{f.url} is not pinned to a commit"
        local = shared / f.mirror_path
        if local.is_file():
            assert f.sha256 is not None and f.size == local.stat().st_size, f.mirror_path
            assert hashlib.sha256(local.read_bytes()).hexdigest() == f.sha256, f.mirror_path
            checked.add(f.mirror_path)
    # every data file of the mirror is covered, except the region labels (no loader reads them yet)
    in_mirror = {p.relative_to(shared).as_posix() for p in (shared / "data").rglob("*") if p.is_file()}
    assert checked == {p for p in in_mirror if not p.startswith("data/her2st/labels/")}


def test_pbmc200() -> None:
    a = scfm.datasets.pbmc200()
    assert a.shape == (200, 16727)
    X = a.X.toarray() if hasattr(a.X, "toarray") else a.X
    assert np.all(X >= 0) and np.all(X == np.round(X))
    assert a.obsm["protein_expression"].shape[0] == 200
    b = scfm.datasets.pbmc200()
    assert b is not a and b.obs_names.equals(a.obs_names)  # a fresh object per call


def test_pbmc_10x_chr21_h5_and_mtx_agree() -> None:
    h5 = scfm.datasets.pbmc_10x_chr21("h5")
    mtx = scfm.datasets.pbmc_10x_chr21(kind="mtx")
    assert h5.shape == mtx.shape == (1107, 507)
    assert h5.var_names.equals(mtx.var_names) and h5.obs_names.equals(mtx.obs_names)
    assert (h5.X != mtx.X).nnz == 0
    assert h5.var["gene_ids"].str.startswith("ENSG").all()
    with pytest.raises(ValueError, match="'h5' or 'mtx'"):
        scfm.datasets.pbmc_10x_chr21("loom")


def test_visium_mouse_brain_mini() -> None:
    a = scfm.datasets.visium_mouse_brain_mini()
    lib = a.uns["spatial"]["visium_mouse_brain_mini"]
    assert a.obsm["spatial"].shape == (a.n_obs, 2) and a.n_obs > 0
    assert {"hires", "lowres"} <= set(lib["images"]) and "tissue_hires_scalef" in lib["scalefactors"]
    p = scfm.datasets.visium_mouse_brain_mini(processed=True)
    assert p.n_obs == 49 and "spatial" in p.obsm
    assert Path(p.uns["image_path"]).is_file()


def test_her2st_section_c3(shared: Path) -> None:
    a = scfm.datasets.her2st("C3")
    spots = pd.read_csv(shared / "data/her2st/spots/C3_selection.tsv", sep="\t")
    counts = pd.read_csv(shared / "data/her2st/counts/C3.tsv.gz", sep="\t", index_col=0)
    assert a.shape == (180, counts.shape[1])
    # coordinates: obsm['spatial'] is (pixel_x, pixel_y) of the spot table, matched by array position
    row = spots.iloc[5]
    name = f"{int(row.x)}x{int(row.y)}"
    i = a.obs_names.get_loc(name)
    np.testing.assert_allclose(a.obsm["spatial"][i], [row.pixel_x, row.pixel_y])
    # counts unchanged
    gene = counts.columns[counts.loc[name].to_numpy().argmax()]
    assert a[name, gene].X.toarray().item() == counts.loc[name, gene]
    lib = a.uns["spatial"]["her2st_C3"]
    img = lib["images"]["hires"]
    assert img.dtype == np.uint8 and max(img.shape[:2]) == 2000 and img.shape[2] == 3
    full_h, full_w = lib["metadata"]["fullres_shape"]
    assert (full_h, full_w) == (9936, 9270)
    assert abs(lib["scalefactors"]["tissue_hires_scalef"] * full_w - img.shape[1]) <= 1
    assert 130 < lib["scalefactors"]["spot_diameter_fullres"] < 160  # 100 um spots, ~1.45 px/um
    assert Path(lib["metadata"]["source_image_path"]).is_file()
    # squidpy can use it as it is
    import squidpy as sq

    sq.gr.spatial_neighbors(a, coord_type="grid", n_neighs=6)
    assert a.obsp["spatial_connectivities"].sum(1).max() <= 6


def test_her2st_without_image_and_errors() -> None:
    a = scfm.datasets.her2st("C4", image=False)
    lib = a.uns["spatial"]["her2st_C4"]
    assert lib["images"] == {} and "source_image_path" not in lib["metadata"]
    with pytest.raises(ValueError, match="A1, A2"):
        scfm.datasets.her2st("Z9")
    # a section the mirror does not hold: offline, the error names the public URL to fetch it from
    url = r"raw\.githubusercontent\.com/almaan/her2st/[0-9a-f]{40}/data/ST-cnts/A1\.tsv\.gz"
    with pytest.raises(dl.OfflineError, match=url):
        scfm.datasets.her2st("A1")


def test_orthologs_human_mouse() -> None:
    df = scfm.datasets.orthologs_human_mouse()
    assert df.shape == (23942, 7)
    assert (df["mmusculus_homolog_orthology_type"] == "ortholog_one2one").sum() == 16668
    assert df["ensembl_gene_id"].str.startswith("ENSG").all()


def test_mirror_is_verified_not_trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "mirror" / _files.PBMC200.mirror_path
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not an h5ad")
    monkeypatch.setattr(scfm.settings, "mirror", tmp_path / "mirror")
    monkeypatch.setattr(scfm.settings, "cachedir", tmp_path / "cache")
    with pytest.raises(dl.OfflineError, match="has sha256"):
        scfm.datasets.pbmc200()
    assert not (tmp_path / "cache" / _files.PBMC200.mirror_path).exists()
