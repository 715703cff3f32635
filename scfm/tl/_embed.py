"""Model-agnostic cell and gene embedding."""

from __future__ import annotations

from typing import Any

import numpy as np
from anndata import AnnData

from .. import logging as logg
from .._constants import Key
from .._docs import inject_docs
from .._settings import settings
from .._slots import write_results
from .._torch import resolve_device
from ..models import CellData, FoundationModel, resolve

__all__ = ["embed", "gene_embeddings"]


def _start_copy(adata: AnnData, copy: bool) -> AnnData:
    if copy:
        if adata.isbacked:
            raise ValueError("copy=True is not possible for a backed AnnData; pass copy=False or load it to memory.")
        return adata.copy()
    return adata


def _device_str(device: Any) -> str:
    return str(resolve_device(device))


@inject_docs()
def embed(
    adata: AnnData,
    model: str | FoundationModel,
    *,
    layer: str | None = None,
    use_raw: bool = False,
    key_added: str | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    copy: bool = False,
    **options: Any,
) -> AnnData | None:
    """Cell embeddings from a foundation model (or a weights-free baseline).

    Cells are read in chunks of ``scfm.settings.chunk_size``, so a backed AnnData is never loaded whole.
    Cells the model cannot process (e.g. no gene of its vocabulary is expressed) get a NaN row, and then a
    boolean column ``obs['<key_added>_valid']`` marks the cells that have an embedding. Nothing else in
    ``adata`` changes, also when an error is raised.

    Parameters
    ----------
    {adata}
    {model}
    {layer}
    {key_added}
    {batch_size}
    {device}
    {copy}
    {options}

    Returns
    -------
    ``None``, or the copy when ``copy=True``. Writes

    ``adata.obsm['X_<family>' | key_added]`` : :class:`numpy.ndarray` (n_obs × embedding size)
        The cell embedding, aligned to ``adata.obs_names``.
    ``adata.obs['<key>_valid']`` : bool
        Only if some cells could not be embedded.
    ``adata.uns['scfm'][key]`` : dict
        Provenance: model, version, file sha256s, parameters, gene coverage, cells used, scfm version, time.
    """
    m = resolve(model, device=device)
    adata = _start_copy(adata, copy)
    key = key_added or Key.obsm.embedding(m.family)
    data = CellData(adata, layer=layer, use_raw=use_raw, chunk_size=settings.chunk_size)
    bs = int(batch_size or settings.batch_size)
    dev = _device_str(device if device is not None else m.device)
    start = logg.info(f"computing {m.family} embedding ({m.name}) of {adata.n_obs} cells")
    res = m.embed(data, batch_size=bs, device=dev, **options)
    X = np.asarray(res.X)
    valid = np.asarray(res.valid, dtype=bool)
    if X.shape[0] != adata.n_obs or valid.shape != (adata.n_obs,):
        raise RuntimeError(f"{m.name} returned {X.shape[0]} rows for {adata.n_obs} cells (a bug in its adapter).")
    obs: dict[str, Any] = {}
    if not valid.all():
        obs[Key.obs.mask(key)] = valid
        logg.warning(
            f"{(~valid).sum()} of {adata.n_obs} cells could not be embedded by {m.name}: NaN rows, "
            f"see adata.obs[{Key.obs.mask(key)!r}]."
        )
    prov = {
        **m.provenance(),
        "function": "scfm.tl.embed",
        "input": data.source,
        "params": {"batch_size": bs, "device": dev, **res.params},
        "coverage": res.coverage,
        "n_cells": adata.n_obs,
        "n_cells_used": int(valid.sum()),
    }
    write_results(adata, key, provenance=prov, obsm={key: X}, obs=obs, start=start, what="cell embedding")
    return adata if copy else None


@inject_docs()
def gene_embeddings(
    adata: AnnData,
    model: str | FoundationModel,
    *,
    layer: str | None = None,
    use_raw: bool = False,
    key_added: str | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    copy: bool = False,
    **options: Any,
) -> AnnData | None:
    """Gene embeddings from a foundation model, one row per gene of ``adata``.

    What a gene embedding is depends on the model and is documented by its adapter: Geneformer averages a
    gene's contextual (per-cell) embedding over the cells that express it; scGPT returns the gene-token
    embedding its GRN tutorial uses. Genes the model has no embedding for get NaN rows.

    Parameters
    ----------
    {adata}
    {model}
    {layer}
    {key_added}
    {batch_size}
    {device}
    {copy}
    {options}

    Returns
    -------
    ``None``, or the copy when ``copy=True``. Writes

    ``adata.varm['<family>_gene' | key_added]`` : :class:`numpy.ndarray` (n_vars × embedding size)
    ``adata.uns['scfm'][key]`` : dict
        Provenance, including the number of genes embedded.
    """
    m = resolve(model, device=device)
    adata = _start_copy(adata, copy)
    key = key_added or Key.varm.gene_embedding(m.family)
    if use_raw:
        raise ValueError(
            "Gene embeddings are written to adata.varm, which is aligned to adata.var; use_raw=True "
            "would not align. Pass a layer or X with the same genes."
        )
    data = CellData(adata, layer=layer, use_raw=use_raw, chunk_size=settings.chunk_size)
    bs = int(batch_size or settings.batch_size)
    dev = _device_str(device if device is not None else m.device)
    start = logg.info(f"computing {m.family} gene embeddings ({m.name})")
    res = m.gene_embeddings(data, batch_size=bs, device=dev, **options)
    X = np.asarray(res.X)
    if X.shape[0] != adata.n_vars:
        raise RuntimeError(f"{m.name} returned {X.shape[0]} gene rows for {adata.n_vars} genes (adapter bug).")
    valid = np.asarray(res.valid, dtype=bool)
    prov = {
        **m.provenance(),
        "function": "scfm.tl.gene_embeddings",
        "input": data.source,
        "params": {"batch_size": bs, "device": dev, **res.params},
        "coverage": res.coverage,
        "n_genes": adata.n_vars,
        "n_genes_embedded": int(valid.sum()),
    }
    write_results(adata, key, provenance=prov, varm={key: X}, start=start, what="gene embedding")
    return adata if copy else None
