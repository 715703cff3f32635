"""The adapter contract every model implements.

A model object turns a read-only view of the user's data into arrays. It never writes to the AnnData: the
``scfm.tl`` functions hand what it returns to the slot writer (:mod:`scfm._slots`). Each capability is one
method; a model implements those it supports and the ``tl`` function says clearly when one is missing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from anndata import AnnData

    from ._registry import ModelEntry

__all__ = ["FoundationModel", "CellData", "EmbeddingResult", "GeneEmbeddingResult", "PerturbationResult"]


class CellData:
    """Read-only access to the user's AnnData, in chunks of cells.

    Works the same for in-memory and backed (``backed='r'``) AnnData: only ``chunk_size`` cells are in memory
    at a time. Models read through this object and never see (or change) the AnnData itself.
    """

    def __init__(self, adata: AnnData, *, layer: str | None = None, use_raw: bool = False, chunk_size: int = 10_000):
        if layer is not None and use_raw:
            raise ValueError("Pass either `layer=` or `use_raw=True`, not both.")
        if layer is not None and layer not in adata.layers:
            raise KeyError(f"Layer {layer!r} not in adata.layers (available: {list(adata.layers)}).")
        if use_raw and adata.raw is None:
            raise ValueError("`use_raw=True` but adata.raw is None.")
        self._adata = adata
        self.layer = layer
        self.use_raw = use_raw
        self.chunk_size = int(chunk_size)

    @property
    def n_obs(self) -> int:
        return self._adata.n_obs

    @property
    def obs(self) -> pd.DataFrame:
        """Cell annotations (do not modify)."""
        return self._adata.obs

    @property
    def obs_names(self) -> pd.Index:
        return self._adata.obs_names

    @property
    def var(self) -> pd.DataFrame:
        """Gene annotations of the matrix that is read (``.raw.var`` when ``use_raw``)."""
        return self._adata.raw.var if self.use_raw else self._adata.var

    @property
    def var_names(self) -> pd.Index:
        return self.var.index

    @property
    def n_vars(self) -> int:
        return len(self.var)

    @property
    def is_backed(self) -> bool:
        return bool(self._adata.isbacked)

    @property
    def source(self) -> str:
        """Which matrix is read, for provenance."""
        if self.use_raw:
            return "raw.X"
        return f"layers[{self.layer!r}]" if self.layer else "X"

    @property
    def uns(self) -> Any:
        return self._adata.uns

    @property
    def obsm(self) -> Any:
        return self._adata.obsm

    def _matrix(self) -> Any:
        if self.use_raw:
            return self._adata.raw.X
        if self.layer is not None:
            return self._adata.layers[self.layer]
        return self._adata.X

    def rows(self, start: int, stop: int):
        """Rows ``start:stop`` as a CSR matrix (a fresh object: safe to modify)."""
        import scipy.sparse as sp

        mat = self._matrix()
        if sp.issparse(mat) and mat.format == "csr" and mat.indptr.dtype == mat.indices.dtype == np.int32:
            # in-memory CSR: copy the row range's arrays directly (scipy's row slicing rebuilds them entry by
            # entry and was then copied again); same values, order and dtypes
            start, stop, _ = slice(start, stop).indices(mat.shape[0])
            stop = max(start, stop)
            s0, s1 = int(mat.indptr[start]), int(mat.indptr[stop])
            indptr = mat.indptr[start : stop + 1] - mat.indptr[start]
            return sp.csr_matrix(
                (mat.data[s0:s1].copy(), mat.indices[s0:s1].copy(), indptr), shape=(stop - start, mat.shape[1])
            )
        block = mat[start:stop]
        if sp.issparse(block):
            return sp.csr_matrix(block, copy=True)
        return _dense_to_csr(block)

    def take(self, indices: np.ndarray):
        """Rows at ``indices`` (sorted positions) as CSR."""
        import scipy.sparse as sp

        idx = np.asarray(indices)
        order = np.argsort(idx, kind="stable")
        block = self._matrix()[np.sort(idx)]
        block = sp.csr_matrix(block) if sp.issparse(block) else _dense_to_csr(block)
        inv = np.empty_like(order)
        inv[order] = np.arange(len(order))
        return block[inv]

    def chunks(self, chunk_size: int | None = None) -> Iterator[tuple[slice, Any]]:
        """Yield ``(slice of cells, CSR block)`` covering all cells in order."""
        size = int(chunk_size or self.chunk_size)
        for start in range(0, self.n_obs, size):
            stop = min(start + size, self.n_obs)
            yield slice(start, stop), self.rows(start, stop)


def _dense_to_csr(block: Any):
    """CSR copy of a dense block; float16 (which scipy.sparse cannot hold) is widened to float32, exactly."""
    import scipy.sparse as sp

    arr = np.asarray(block)
    if arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    return sp.csr_matrix(arr)


@dataclass
class EmbeddingResult:
    """Cell embeddings of all cells, in the user's cell order; NaN rows where ``valid`` is False."""

    X: np.ndarray
    valid: np.ndarray
    coverage: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class GeneEmbeddingResult:
    """Gene embeddings aligned to ``var_names``; NaN rows for genes the model has no embedding for."""

    X: np.ndarray
    valid: np.ndarray
    coverage: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class PerturbationResult:
    """Per-cell effects (one column per perturbation, NaN where a cell was not perturbed) and a summary."""

    cells: pd.DataFrame
    summary: pd.DataFrame
    genes: dict[str, pd.DataFrame] | None = None
    coverage: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)


class FoundationModel:
    """Base class of every scfm model adapter.

    Subclasses set :attr:`family` (the default slot names derive from it), fill :attr:`files` (path → sha256,
    for provenance) and implement the capabilities they support: :meth:`embed`, :meth:`gene_embeddings`,
    :meth:`perturb`.
    """

    family: str = "model"
    modality: str = "rna"

    def __init__(
        self,
        *,
        name: str | None = None,
        version: str = "",
        entry: ModelEntry | None = None,
        files: dict[str, str] | None = None,
        device: str | None = None,
        random_weights: bool = False,
    ):
        self.name = name or (entry.name if entry is not None else self.family)
        self.version = version or (entry.version if entry is not None else "")
        self.entry = entry
        self.files = dict(files or {})
        self.device = device
        self.random_weights = random_weights

    # ---- capabilities -------------------------------------------------------------------------------------
    def embed(self, data: CellData, *, batch_size: int, device: str, **options: Any) -> EmbeddingResult:
        """Cell embeddings for all cells of ``data``."""
        raise NotImplementedError(f"{type(self).__name__} ({self.name}) does not compute cell embeddings.")

    def gene_embeddings(self, data: CellData, *, batch_size: int, device: str, **options: Any) -> GeneEmbeddingResult:
        """Gene embeddings aligned to ``data.var_names``."""
        raise NotImplementedError(f"{type(self).__name__} ({self.name}) does not compute gene embeddings.")

    def perturb(
        self, data: CellData, genes: Any, *, batch_size: int, device: str, **options: Any
    ) -> PerturbationResult:
        """In-silico perturbation of the given genes."""
        raise NotImplementedError(f"{type(self).__name__} ({self.name}) does not do in-silico perturbation.")

    # ---- provenance --------------------------------------------------------------------------------------
    def provenance(self) -> dict[str, Any]:
        """What produced a result: model name, family, version, file hashes, whether weights are random."""
        out: dict[str, Any] = {
            "model": self.name,
            "family": self.family,
            "version": self.version,
            "files": dict(self.files),
        }
        if self.entry is not None:
            out["source"] = self.entry.source
        if self.random_weights:
            out["random_weights"] = True
        return out

    def __repr__(self) -> str:
        extra = ", UNTRAINED TEST WEIGHTS" if self.random_weights else ""
        return f"{type(self).__name__}(name={self.name!r}, version={self.version!r}{extra})"
