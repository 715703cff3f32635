"""Weights-free baselines registered as models, so the whole flow works with no download.

* ``"pca"``: PCA of the highly variable genes of log-normalised counts, computed in two streaming passes so
  memory does not grow with the number of cells (backed AnnData works).
* ``"scvi"``: the latent space of an scVI model trained on the data (needs ``pip install 'scfm[scvi]'``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from .. import logging as logg
from ._base import CellData, EmbeddingResult, FoundationModel
from ._registry import ModelEntry, register_family, register_model

__all__ = ["PCABaseline", "SCVIBaseline"]


def _lognorm(block: sp.csr_matrix, target_sum: float) -> sp.csr_matrix:
    """``log1p`` of counts scaled to ``target_sum`` per cell (scanpy's normalize_total + log1p)."""
    X = block.astype(np.float64)
    totals = np.asarray(X.sum(axis=1)).ravel()
    scale = np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0)
    X = sp.csr_matrix(sp.diags(scale) @ X)
    X.data = np.log1p(X.data)
    return X


def _select_hvg(mean: np.ndarray, var: np.ndarray, n_top: int, n_bins: int = 20) -> np.ndarray:
    """Seurat-flavour highly variable genes: dispersion z-scored within bins of mean expression.

    ``mean`` and ``var`` are the moments of the normalised (not log) counts, as
    ``scanpy.pp.highly_variable_genes(flavor='seurat')`` computes them after ``expm1`` of log-normalised data.
    """
    mean_e = np.where(mean == 0, 1e-12, mean)
    var_e = var
    with np.errstate(divide="ignore", invalid="ignore"):
        disp = np.log(var_e / mean_e)
        mean_l = np.log1p(mean_e)
    disp[~np.isfinite(disp)] = np.nan
    edges = np.linspace(np.nanmin(mean_l), np.nanmax(mean_l), n_bins + 1)
    bins = np.clip(np.digitize(mean_l, edges[1:-1]), 0, n_bins - 1)
    z = np.full_like(disp, np.nan)
    for b in np.unique(bins):
        sel = bins == b
        d = disp[sel]
        mu, sd = np.nanmean(d) if np.isfinite(d).any() else np.nan, np.nanstd(d, ddof=1) if sel.sum() > 1 else np.nan
        if not np.isfinite(sd) or sd == 0:
            z[sel] = 1.0 if sel.sum() == 1 else 0.0  # scanpy sets single-gene bins to 1
        else:
            z[sel] = (d - mu) / sd
    z[~np.isfinite(z)] = -np.inf
    n_top = min(n_top, int(np.isfinite(z).sum()) if np.isfinite(z).any() else len(z))
    order = np.argsort(-z, kind="stable")
    return np.sort(order[:n_top])


class PCABaseline(FoundationModel):
    """PCA on highly variable genes of log-normalised counts (no weights).

    Pass 1 accumulates per-gene mean and variance of ``log1p(normalize_total(counts, target_sum))``; the
    ``n_top_genes`` most dispersed genes (Seurat flavour) are kept. Pass 2 accumulates their covariance, whose
    eigenvectors are the loadings; pass 3 projects each chunk. Exact PCA (centred, not scaled), with the sign of
    each component fixed so its largest loading is positive, so results are deterministic. Only one chunk of
    cells and an ``n_top_genes × n_top_genes`` matrix are ever in memory.
    """

    family = "pca"

    def embed(
        self,
        data: CellData,
        *,
        batch_size: int,
        device: str,
        n_comps: int = 50,
        n_top_genes: int = 2000,
        target_sum: float = 1e4,
        **options: Any,
    ) -> EmbeddingResult:
        if options:
            raise TypeError(f"Unknown option(s) for the pca baseline: {sorted(options)}.")
        from ..pp._counts import validate_counts_block

        n, g = data.n_obs, data.n_vars
        if n < 2 or g < 2:
            raise ValueError(f"PCA needs at least 2 cells and 2 genes, got {n} × {g}.")
        s1 = np.zeros(g)
        s2 = np.zeros(g)
        totals = np.zeros(n)
        for sl, block in data.chunks():
            validate_counts_block(block, where=data.source)
            totals[sl] = np.asarray(block.sum(axis=1)).ravel()
            X = _lognorm(block, target_sum)
            X.data = np.expm1(X.data)
            s1 += np.asarray(X.sum(axis=0)).ravel()
            s2 += np.asarray(X.multiply(X).sum(axis=0)).ravel()
        mean = s1 / n
        var = (s2 - n * mean**2) / (n - 1)
        hvg = _select_hvg(mean, np.maximum(var, 0), n_top_genes)
        valid = totals > 0
        if valid.sum() < 2:
            raise ValueError("Fewer than two cells have any counts; nothing to embed.")
        m = len(hvg)
        mu = np.zeros(m)
        cov = np.zeros((m, m))
        for sl, block in data.chunks():
            Xh = _lognorm(block, target_sum)[:, hvg][valid[sl]]
            mu += np.asarray(Xh.sum(axis=0)).ravel()
            cov += (Xh.T @ Xh).toarray()
        nv = int(valid.sum())
        mu /= nv
        cov = (cov - nv * np.outer(mu, mu)) / (nv - 1)
        k = min(n_comps, m, nv - 1)
        evals, evecs = np.linalg.eigh(cov)
        order = np.argsort(evals)[::-1][:k]
        load = evecs[:, order]
        signs = np.sign(load[np.argmax(np.abs(load), axis=0), np.arange(k)])
        load *= np.where(signs == 0, 1, signs)
        out = np.full((n, k), np.nan, dtype=np.float32)
        for sl, block in data.chunks():
            Xh = _lognorm(block, target_sum)[:, hvg]
            proj = np.asarray(Xh @ load) - mu @ load
            v = valid[sl]
            out[sl][v] = proj[v]
        explained = evals[order]
        return EmbeddingResult(
            X=out,
            valid=valid,
            coverage={"n_genes": g, "n_hvg": m},
            params={
                "n_comps": k,
                "n_top_genes": n_top_genes,
                "target_sum": target_sum,
                "variance_ratio": (explained / np.clip(np.trace(cov), 1e-300, None)).astype(np.float64),
            },
        )


class SCVIBaseline(FoundationModel):
    """scVI latent space (scvi-tools), trained on the data itself; no pretrained weights.

    The counts are copied into a new in-memory AnnData holding only what scVI needs, so the user's AnnData is
    not modified (scvi-tools' ``setup_anndata`` would otherwise write to it). Not streaming: scVI trains on the
    whole matrix in memory.
    """

    family = "scvi"

    def embed(
        self,
        data: CellData,
        *,
        batch_size: int,
        device: str,
        n_latent: int = 10,
        max_epochs: int | None = None,
        batch_key: str | None = None,
        seed: int = 0,
        **options: Any,
    ) -> EmbeddingResult:
        try:
            import scvi
        except ImportError as e:
            raise ImportError("The 'scvi' baseline needs scvi-tools: pip install 'scfm[scvi]'.") from e
        import anndata as ad
        import pandas as pd

        from ..pp._counts import validate_counts_block

        blocks = []
        for _, block in data.chunks():
            validate_counts_block(block, where=data.source)
            blocks.append(block)
        X = sp.vstack(blocks).tocsr().astype(np.float32)
        totals = np.asarray(X.sum(axis=1)).ravel()
        valid = totals > 0
        obs = pd.DataFrame(index=data.obs_names.astype(str))
        if batch_key is not None:
            obs[batch_key] = data.obs[batch_key].astype(str).values
        tmp = ad.AnnData(X[valid], obs=obs[valid], var=pd.DataFrame(index=data.var_names.astype(str)))
        scvi.settings.seed = seed
        scvi.model.SCVI.setup_anndata(tmp, batch_key=batch_key)
        vae = scvi.model.SCVI(tmp, n_latent=n_latent, **options)
        accel = "gpu" if device.startswith("cuda") else "cpu"
        logg.info(f"    training scVI on {tmp.n_obs} cells")
        vae.train(max_epochs=max_epochs, accelerator=accel, batch_size=max(batch_size, 128), enable_progress_bar=False)
        out = np.full((data.n_obs, n_latent), np.nan, dtype=np.float32)
        out[valid] = vae.get_latent_representation(tmp)
        return EmbeddingResult(
            X=out,
            valid=valid,
            coverage={"n_genes": data.n_vars},
            params={
                "n_latent": n_latent,
                "max_epochs": max_epochs or -1,
                "seed": seed,
                "scvi_version": scvi.__version__,
            },
        )


register_model(
    ModelEntry(
        name="pca",
        family="pca",
        version="1",
        modality="rna",
        gene_id_scheme="any",
        species=("any",),
        license="BSD-3-Clause",
        source="scfm (computed from the data, no weights)",
        weights_free=True,
        description="PCA of highly variable genes of log-normalised counts (baseline).",
    )
)
register_model(
    ModelEntry(
        name="scvi",
        family="scvi",
        version="1",
        modality="rna",
        gene_id_scheme="any",
        species=("any",),
        license="BSD-3-Clause",
        citation="Lopez et al. 2018, Nat Methods 15:1053",
        source="scvi-tools (trained on the data, no pretrained weights)",
        weights_free=True,
        description="scVI latent space trained on the data itself (baseline; needs scvi-tools).",
    )
)


@register_family("pca")
def _load_pca(*, checkpoint=None, resources=None, entry=None, device=None, **options: Any) -> PCABaseline:
    return PCABaseline(name="pca", version="1", entry=entry, device=device)


@register_family("scvi")
def _load_scvi(*, checkpoint=None, resources=None, entry=None, device=None, **options: Any) -> SCVIBaseline:
    return SCVIBaseline(name="scvi", version="1", entry=entry, device=device)
