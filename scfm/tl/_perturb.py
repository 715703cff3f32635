"""Model-agnostic in-silico perturbation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from anndata import AnnData

from .. import logging as logg
from .._constants import Key
from .._docs import inject_docs
from .._settings import settings
from .._slots import write_results
from ..models import CellData, FoundationModel, resolve
from ._embed import _device_str, _start_copy

__all__ = ["in_silico_perturb"]


@inject_docs()
def in_silico_perturb(
    adata: AnnData,
    genes: str | Sequence[str],
    *,
    model: str | FoundationModel,
    perturbation: str = "delete",
    combine: bool = False,
    layer: str | None = None,
    use_raw: bool = False,
    key_added: str | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    copy: bool = False,
    **options: Any,
) -> AnnData | None:
    """In-silico perturbation of genes, one cell at a time, as the model's own code does it.

    For each perturbation the per-cell similarity between the original and the perturbed cell embedding is
    written (1 = no effect, lower = larger shift). Cells in which a perturbation cannot be applied (e.g. a
    deleted gene that the cell does not express) get NaN in that column.

    Parameters
    ----------
    {adata}
    genes
        Genes to perturb, as gene symbols (``var_names``) or the model's gene IDs. Each gene is perturbed on its
        own unless ``combine=True``, in which case all are perturbed together (column ``'A+B'``).
    {model}
    perturbation
        ``'delete'``, ``'overexpress'``, ``'inhibit'`` or ``'activate'`` (support depends on the model).
    combine
        Perturb all ``genes`` together in one perturbation.
    {layer}
    {key_added}
    {batch_size}
    {device}
    {copy}
    {options}

    Returns
    -------
    ``None``, or the copy when ``copy=True``. Writes

    ``adata.obsm['<family>_perturbation' | key_added]`` : :class:`pandas.DataFrame`
        Cells × perturbations (columns named by gene symbol, ``'A+B'`` for a combination).
    ``adata.uns['<key>_summary']`` : :class:`pandas.DataFrame`
        Per perturbation: mean shift (1 - mean cosine similarity), cells perturbed, cells expressing the genes.
    ``adata.uns['scfm'][key]`` : dict
        Provenance.
    """
    m = resolve(model, device=device)
    gene_list = [genes] if isinstance(genes, str) else list(genes)
    if not gene_list:
        raise ValueError("`genes` is empty: name at least one gene to perturb.")
    adata = _start_copy(adata, copy)
    key = key_added or Key.obsm.perturbation(m.family)
    data = CellData(adata, layer=layer, use_raw=use_raw, chunk_size=settings.chunk_size)
    bs = int(batch_size or settings.batch_size)
    dev = _device_str(device if device is not None else m.device)
    start = logg.info(f"in-silico {perturbation} of {gene_list} with {m.name}")
    res = m.perturb(data, gene_list, perturbation=perturbation, combine=combine, batch_size=bs, device=dev, **options)
    cells = res.cells
    if not cells.index.equals(adata.obs_names):
        raise RuntimeError(f"{m.name} returned a perturbation table not aligned to obs_names (adapter bug).")
    uns = {Key.uns.summary(key): res.summary}
    if res.genes:
        uns[f"{key}_genes"] = res.genes
    prov = {
        **m.provenance(),
        "function": "scfm.tl.in_silico_perturb",
        "input": data.source,
        "params": {
            "genes": gene_list,
            "perturbation": perturbation,
            "combine": combine,
            "batch_size": bs,
            "device": dev,
            **res.params,
        },
        "coverage": res.coverage,
        "n_cells": adata.n_obs,
    }
    write_results(adata, key, provenance=prov, obsm={key: cells}, uns=uns, start=start, what="perturbation")
    return adata if copy else None
