"""Loaders of the example data sets.

Every file is resolved by :func:`scfm._io.download.fetch`: the verified cache, then ``scfm.settings.mirror``
(``$SCFM_MIRROR``), then the public URL (pinned to a commit, sha256-checked). Each call returns a new object.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from scfm import logging as logg
from scfm._io.download import default_folder, fetch

from . import _files

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["pbmc200", "pbmc_10x_chr21", "visium_mouse_brain_mini", "her2st", "orthologs_human_mouse"]

#: Longest side (pixels) of the H&E image stored in ``uns['spatial'][...]['images']['hires']``.
HIRES_MAX_SIDE = 2000


def pbmc200() -> AnnData:
    """200 PBMCs from 10x Genomics' ``pbmc_10k_protein_v3`` (the scvi-tools test subset).

    Returns
    -------
    AnnData with raw integer counts in ``X`` (16,727 genes, symbols as ``var_names``) and the CITE-seq protein
    counts in ``obsm['protein_expression']``. No cell-type labels.
    """
    import anndata as ad

    return ad.read_h5ad(fetch(_files.PBMC200))


def pbmc_10x_chr21(kind: Literal["h5", "mtx"] = "h5") -> AnnData:
    """Cell Ranger v3 output for 1,107 PBMCs restricted to the 507 genes of chromosome 21 (scanpy's test data).

    Parameters
    ----------
    kind
        ``"h5"``: ``filtered_feature_bc_matrix.h5``; ``"mtx"``: the ``filtered_feature_bc_matrix/`` folder
        (``matrix.mtx.gz``, ``features.tsv.gz``, ``barcodes.tsv.gz``). Both hold the same counts.

    Returns
    -------
    AnnData with raw counts, gene symbols as ``var_names`` (made unique) and Ensembl IDs in ``var['gene_ids']``.
    """
    import scanpy as sc

    if kind == "h5":
        adata = sc.read_10x_h5(fetch(_files.PBMC_10X_CHR21_H5))
    elif kind == "mtx":
        paths = [fetch(f) for f in _files.PBMC_10X_CHR21_MTX]
        adata = sc.read_10x_mtx(paths[0].parent, var_names="gene_symbols", make_unique=True)
    else:
        raise ValueError(f"`kind` must be 'h5' or 'mtx', got {kind!r}.")
    adata.var_names_make_unique()
    return adata


def visium_mouse_brain_mini(*, processed: bool = False) -> AnnData:
    """A tiny Visium mouse-brain section (squidpy's test data).

    Parameters
    ----------
    processed
        ``False``: read the Space Ranger layout (``filtered_feature_bc_matrix.h5`` + ``spatial/``) with
        :func:`squidpy.read.visium`, raw counts. ``True``: squidpy's processed 49-spot AnnData (``test_data.h5ad``);
        the path of its H&E crop (``test_img.jpg``) is stored in ``uns['image_path']``.

    Returns
    -------
    AnnData with ``obsm['spatial']`` (full-resolution pixels) and squidpy's ``uns['spatial'][library_id]``
    (images and scale factors).
    """
    if processed:
        import anndata as ad

        h5ad, img = (fetch(f) for f in _files.VISIUM_MINI_PROCESSED)
        adata = ad.read_h5ad(h5ad)
        adata.uns["image_path"] = str(img)
        return adata
    import squidpy as sq

    paths = [fetch(f) for f in _files.VISIUM_MINI]
    root = paths[0].parent
    adata = sq.read.visium(root, counts_file="filtered_feature_bc_matrix.h5", library_id="visium_mouse_brain_mini")
    adata.var_names_make_unique()
    return adata


def _her2st_counts(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path, sep="\t", index_col=0)
    df.index = df.index.astype(str)
    return df


def her2st(section: str = "C3", *, image: bool = True) -> AnnData:
    """One section of the HER2+ breast cancer spatial transcriptomics data (Andersson et al., Nat. Commun. 2021).

    Counts, spot table and (optionally) the full-resolution H&E image of a section, in the layout squidpy and
    scanpy's spatial plots read.

    Parameters
    ----------
    section
        Section name (``"A1"`` … ``"H3"``; 36 sections). The shared mirror holds B4 and C2–C6 with their images;
        the others are downloaded from github.com/almaan/her2st.
    image
        Fetch the H&E image and put a downscaled copy (longest side :data:`HIRES_MAX_SIDE` px) into
        ``uns['spatial'][library_id]['images']['hires']``; the full-resolution file's path is in
        ``uns['spatial'][library_id]['metadata']['source_image_path']``.

    Returns
    -------
    AnnData, spots × genes (raw integer counts, float32 CSR; gene symbols, made unique), with

    - ``obs``: ``array_x``, ``array_y`` (array coordinates), ``new_x``, ``new_y`` (aligned array coordinates),
      ``pixel_x``, ``pixel_y`` and ``selected`` (under tissue) from the spot table;
    - ``obsm['spatial']``: ``(pixel_x, pixel_y)`` in full-resolution image pixels;
    - ``uns['spatial'][f'her2st_{section}']``: ``scalefactors`` (``tissue_hires_scalef``,
      ``spot_diameter_fullres``: half the spot pitch, as ST spots are 100 µm wide at 200 µm centre distance),
      ``images`` and ``metadata``.

    Spots with counts but no row in the spot table are dropped (with a log message).
    """
    import anndata as ad

    counts_file, spots_file, image_file = _files.her2st_files(section)
    counts = _her2st_counts(fetch(counts_file))
    spots = pd.read_csv(fetch(spots_file), sep="\t")
    key = spots["x"].astype(int).astype(str) + "x" + spots["y"].astype(int).astype(str)
    spots.index = pd.Index(key, name=None)
    if spots.index.has_duplicates:
        raise ValueError(f"{spots_file.filename}: duplicate array positions in the spot table.")
    keep = counts.index.isin(spots.index)
    if not keep.all():
        logg.info(f"her2st {section}: dropped {int((~keep).sum())} spots that are not in the spot table")
        counts = counts.loc[keep]
    obs = spots.loc[counts.index].rename(columns={"x": "array_x", "y": "array_y"})
    obs["selected"] = obs["selected"].astype(bool)
    X = sp.csr_matrix(counts.to_numpy(dtype=np.float32))
    adata = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=counts.columns.astype(str)))
    adata.var_names_make_unique()
    adata.obsm["spatial"] = obs[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64)

    # Spot pitch in pixels from a least-squares fit of pixel coordinates on aligned array coordinates.
    A = np.c_[spots["new_x"].to_numpy(float), spots["new_y"].to_numpy(float), np.ones(len(spots))]
    coef, *_ = np.linalg.lstsq(A, spots[["pixel_x", "pixel_y"]].to_numpy(float), rcond=None)
    pitch = float(np.mean([np.hypot(*coef[0]), np.hypot(*coef[1])]))
    library_id = f"her2st_{section}"
    lib: dict = {
        "images": {},
        "scalefactors": {"spot_diameter_fullres": pitch / 2.0, "tissue_hires_scalef": 1.0},
        "metadata": {"source": "Andersson et al. 2021, github.com/almaan/her2st", "section": section},
    }
    if image:
        from PIL import Image

        img_path = fetch(image_file)
        old_limit = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None  # the H&E scans are ~10k x 10k pixels: larger than PIL's default guard
        try:
            with Image.open(img_path) as im:
                w, h = im.size
                scale = min(1.0, HIRES_MAX_SIDE / max(w, h))
                size = (max(1, round(w * scale)), max(1, round(h * scale)))
                im.draft("RGB", size)  # JPEG: decode at a reduced scale that is still >= the target size
                small = im.convert("RGB").resize(size, Image.Resampling.LANCZOS)
        finally:
            Image.MAX_IMAGE_PIXELS = old_limit
        lib["images"]["hires"] = np.asarray(small)
        lib["scalefactors"]["tissue_hires_scalef"] = scale
        lib["metadata"]["source_image_path"] = str(img_path)
        lib["metadata"]["fullres_shape"] = [h, w]
    adata.uns["spatial"] = {library_id: lib}
    return adata


def orthologs_human_mouse() -> pd.DataFrame:
    """Ensembl BioMart human → mouse homologs (from RHReynolds/MarkerGenes).

    Columns ``ensembl_gene_id``, ``hgnc_symbol``, ``entrezgene``, ``mmusculus_homolog_ensembl_gene``,
    ``mmusculus_homolog_associated_gene_name``, ``mmusculus_homolog_orthology_type`` (``ortholog_one2one``,
    ``ortholog_one2many``, ``ortholog_many2many``) and ``mmusculus_homolog_orthology_confidence``; one row per pair.

    The TSV is read from the cache or the mirror. Without either, the upstream R data file is downloaded (pinned,
    sha256-checked), converted with the ``rdata`` package (``pip install rdata``) and cached as the same TSV.

    Returns
    -------
    DataFrame with 23,942 rows.
    """
    from scfm._io.download import ManualDownloadError

    tsv = _files.ORTHOLOGS_TSV
    try:
        path = fetch(tsv)
    except ManualDownloadError:  # not in the cache or the mirror, and no direct TSV source: build it from the .rda
        path = _orthologs_from_rda(default_folder(tsv) / tsv.filename)
    return pd.read_csv(path, sep="\t")


def _orthologs_from_rda(dest: Path) -> Path:
    """Download the upstream ``.rda``, convert it to the TSV layout, verify and store it at ``dest``."""
    import hashlib
    import os
    import tempfile

    from scfm._io.download import ChecksumError

    rda = fetch(_files.ORTHOLOGS_RDA)
    try:
        import rdata
    except ImportError as e:
        raise ImportError(
            "The ortholog table is not in the cache or the mirror, and converting the upstream R file needs the "
            "`rdata` package: `pip install rdata` (or set SCFM_MIRROR to a folder holding "
            f"{_files.ORTHOLOGS_TSV.mirror_path})."
        ) from e
    objs = rdata.read_rda(str(rda))
    df = next(iter(objs.values())).reset_index(drop=True)
    buf = io.StringIO()
    df.to_csv(buf, sep="\t", index=False, na_rep="")
    data = buf.getvalue().encode()
    got = hashlib.sha256(data).hexdigest()
    if got != _files.ORTHOLOGS_TSV.sha256:
        raise ChecksumError(
            f"converting {rda.name} gave a table with sha256 {got}, expected {_files.ORTHOLOGS_TSV.sha256}; the "
            "upstream file or the `rdata` package changed. Use a mirror copy of the TSV (SCFM_MIRROR) instead."
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".scfm-part")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, dest)
    return dest
