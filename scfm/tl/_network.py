"""Gene–gene similarity networks from gene embeddings (GRN-style analysis, as in scGPT's GRN tutorial)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .. import logging as logg
from .._constants import Key
from .._slots import write_results

__all__ = ["gene_similarity"]


def gene_similarity(
    adata: AnnData,
    *,
    use_rep: str,
    key_added: str | None = None,
    top_k: int | None = 20,
    min_similarity: float | None = None,
    return_df: bool = False,
    copy: bool = False,
) -> AnnData | pd.DataFrame | None:
    """Cosine-similarity network between genes from a gene embedding in ``adata.varm``.

    Parameters
    ----------
    adata
        AnnData with a gene embedding in ``adata.varm[use_rep]`` (e.g. from :func:`scfm.tl.gene_embeddings`).
    use_rep
        Key of the gene embedding in ``adata.varm``. Genes with NaN rows (no embedding) get no edges.
    key_added
        Name of the network in ``adata.varp`` (default ``'<use_rep>_similarity'``).
    top_k
        Keep each gene's ``top_k`` most similar genes (the graph is then symmetrised by the maximum).
        ``None`` keeps all pairs (dense ``n_vars × n_vars``).
    min_similarity
        Drop edges below this cosine similarity.
    return_df
        Return an edge list DataFrame (``gene1``, ``gene2``, ``similarity``) instead of writing to ``varp``.
    copy
        Return a copy instead of writing in place.

    Returns
    -------
    ``adata.varp['<use_rep>_similarity' | key_added]`` : :class:`scipy.sparse.csr_matrix`
        Written unless ``return_df``; then the edge list is returned.
    """
    if use_rep not in adata.varm:
        raise KeyError(f"adata.varm[{use_rep!r}] not found; run scfm.tl.gene_embeddings first.")
    E = np.asarray(adata.varm[use_rep], dtype=np.float64)
    ok = np.isfinite(E).all(axis=1)
    if ok.sum() < 2:
        raise ValueError(f"adata.varm[{use_rep!r}] has fewer than two genes with an embedding.")
    En = np.zeros_like(E)
    norms = np.linalg.norm(E[ok], axis=1, keepdims=True)
    En[ok] = E[ok] / np.where(norms == 0, 1, norms)
    idx = np.flatnonzero(ok)
    S = En[idx] @ En[idx].T
    np.fill_diagonal(S, 0.0)
    if top_k is not None:
        k = min(int(top_k), len(idx) - 1)
        part = np.argpartition(-S, kth=k - 1, axis=1)[:, :k]
        mask = np.zeros_like(S, dtype=bool)
        np.put_along_axis(mask, part, True, axis=1)
        mask |= mask.T
        S = np.where(mask, S, 0.0)
    if min_similarity is not None:
        S = np.where(S >= min_similarity, S, 0.0)
    sub = sp.coo_matrix(S)
    full = sp.csr_matrix((sub.data, (idx[sub.row], idx[sub.col])), shape=(adata.n_vars, adata.n_vars))
    if return_df:
        coo = sp.triu(full, k=1).tocoo()
        names = adata.var_names
        return pd.DataFrame({"gene1": names[coo.row], "gene2": names[coo.col], "similarity": coo.data}).sort_values(
            "similarity", ascending=False, ignore_index=True
        )
    adata = adata.copy() if copy else adata
    key = key_added or Key.varp.gene_similarity(use_rep)
    start = logg.info(f"computing gene similarity network from varm[{use_rep!r}]")
    prov = {
        "function": "scfm.tl.gene_similarity",
        "params": {"use_rep": use_rep, "top_k": top_k, "min_similarity": min_similarity},
        "n_genes": int(ok.sum()),
        "n_edges": int(full.nnz // 2),
    }
    write_results(adata, key, provenance=prov, varp={key: full}, start=start, what="gene network")
    return adata if copy else None
