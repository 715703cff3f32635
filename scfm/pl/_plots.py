"""Plots of scfm results. Plotting never writes to the AnnData: UMAPs are computed on a scratch object."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .._constants import Key

__all__ = ["embeddings", "perturbation"]


def _umap_of(adata: AnnData, rep: str, *, n_neighbors: int, seed: int) -> np.ndarray:
    import scanpy as sc

    X = np.asarray(adata.obsm[rep], dtype=np.float32)
    ok = np.isfinite(X).all(axis=1)
    scratch = AnnData(np.zeros((int(ok.sum()), 0), dtype=np.float32))
    scratch.obsm["rep"] = X[ok]
    sc.pp.neighbors(scratch, use_rep="rep", n_neighbors=min(n_neighbors, max(2, int(ok.sum()) - 1)), random_state=seed)
    sc.tl.umap(scratch, random_state=seed)
    out = np.full((adata.n_obs, 2), np.nan, dtype=np.float32)
    out[ok] = scratch.obsm["X_umap"]
    return out


def embeddings(
    adata: AnnData,
    keys: str | Sequence[str] | None = None,
    *,
    color: str | None = None,
    n_neighbors: int = 15,
    seed: int = 0,
    ncols: int = 4,
    panel_size: float = 3.5,
    show: bool | None = None,
    save: str | None = None,
) -> Any:
    """UMAPs of several cell embeddings side by side, e.g. a foundation model next to the PCA baseline.

    Each embedding gets its own neighbour graph and UMAP, computed on a scratch object (``adata`` is not
    modified). The panel title names the model that produced the embedding, from the provenance, and flags
    untrained test weights.

    Parameters
    ----------
    adata
        AnnData with embeddings in ``obsm``.
    keys
        ``obsm`` keys to show (default: every embedding scfm wrote).
    color
        An ``obs`` column (categorical or numeric) to colour cells by.
    n_neighbors, seed
        Passed to :func:`scanpy.pp.neighbors` and :func:`scanpy.tl.umap`.
    ncols, panel_size
        Layout.
    show
        Show the figure (default: when not saving).
    save
        Save the figure to this path.

    Returns
    -------
    The :class:`matplotlib.figure.Figure`, unless ``show``.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    prov_all = dict(adata.uns.get(Key.uns.root, {}))
    if keys is None:
        keys = [k for k in prov_all if k in adata.obsm]
    keys = [keys] if isinstance(keys, str) else list(keys)
    if not keys:
        raise ValueError("No embeddings to plot: run scfm.tl.embed first or pass `keys`.")
    missing = [k for k in keys if k not in adata.obsm]
    if missing:
        raise KeyError(f"Not in adata.obsm: {missing}.")
    if color is not None and color not in adata.obs:
        raise KeyError(f"color={color!r} is not a column of adata.obs.")
    ncols = min(ncols, len(keys))
    nrows = int(np.ceil(len(keys) / ncols))
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(panel_size * ncols + (1.5 if color else 0), panel_size * nrows), squeeze=False
    )
    hue = None if color is None else adata.obs[color]
    for ax, key in zip(axes.flat, keys, strict=False):
        xy = _umap_of(adata, key, n_neighbors=n_neighbors, seed=seed)
        df = pd.DataFrame({"UMAP1": xy[:, 0], "UMAP2": xy[:, 1]}, index=adata.obs_names)
        if hue is not None:
            df[color] = hue.values
        sns.scatterplot(
            data=df, x="UMAP1", y="UMAP2", hue=color, s=8, linewidth=0, ax=ax, legend=ax is axes.flat[len(keys) - 1]
        )
        prov = prov_all.get(key, {})
        title = f"{key}\n{prov.get('model', '')}"
        if prov.get("random_weights"):
            title += " (UNTRAINED TEST WEIGHTS)"
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(keys) :]:
        ax.set_visible(False)
    if color is not None and axes.flat[len(keys) - 1].get_legend() is not None:
        sns.move_legend(axes.flat[len(keys) - 1], "center left", bbox_to_anchor=(1, 0.5), fontsize=7, title=color)
    fig.tight_layout()
    if save:
        fig.savefig(save, dpi=120, bbox_inches="tight")
    if show or (show is None and not save):
        plt.show()
        return None
    return fig


def perturbation(
    adata: AnnData,
    key: str = "geneformer_perturbation",
    *,
    groupby: str | None = None,
    kind: str = "violin",
    show: bool | None = None,
    save: str | None = None,
) -> Any:
    """Distribution of per-cell embedding shifts (``1 - cosine similarity``) for each perturbation.

    Parameters
    ----------
    adata
        AnnData with a table from :func:`scfm.tl.in_silico_perturb` in ``adata.obsm[key]``.
    key
        The ``obsm`` key of the perturbation table.
    groupby
        An ``obs`` column to split cells by (e.g. cell type).
    kind
        ``'violin'``, ``'box'`` or ``'strip'``.
    show, save
        As in :func:`embeddings`.

    Returns
    -------
    The :class:`matplotlib.figure.Figure`, unless ``show``.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    if key not in adata.obsm:
        raise KeyError(f"adata.obsm[{key!r}] not found; run scfm.tl.in_silico_perturb first.")
    table = adata.obsm[key]
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"adata.obsm[{key!r}] is not a perturbation table (DataFrame).")
    long = (
        (1 - table)
        .rename_axis("cell")
        .reset_index()
        .melt(id_vars="cell", var_name="perturbation", value_name="shift")
        .dropna()
    )
    if long.empty:
        raise ValueError(f"adata.obsm[{key!r}] has no perturbed cells.")
    hue = None
    if groupby is not None:
        long[groupby] = adata.obs.loc[long["cell"], groupby].values
        hue = groupby
    plotter = {"violin": sns.violinplot, "box": sns.boxplot, "strip": sns.stripplot}.get(kind)
    if plotter is None:
        raise ValueError(f"kind={kind!r}; use 'violin', 'box' or 'strip'.")
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * table.shape[1] * (1 if hue is None else 2), 3.5))
    kw = {"cut": 0, "inner": "quartile"} if kind == "violin" else {}
    plotter(data=long, x="perturbation", y="shift", hue=hue, ax=ax, **kw)
    ax.set_ylabel("embedding shift (1 − cosine similarity)")
    if hue is not None and ax.get_legend() is not None:
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1), title=groupby, frameon=False)
    title = key
    prov = adata.uns.get(Key.uns.root, {}).get(key, {})
    if prov.get("random_weights"):
        title += " — UNTRAINED TEST WEIGHTS"
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    if save:
        fig.savefig(save, dpi=120, bbox_inches="tight")
    if show or (show is None and not save):
        plt.show()
        return None
    return fig
