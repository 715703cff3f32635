"""scFoundation's fixed 19,264-gene input panel and the alignment of any AnnData to it.

The official scripts need a dense cells × 19,264 matrix in the panel's gene order (``main_gene_selection``).
Here the alignment is an index array: user column ``j`` goes to panel position ``colmap[j]`` (``-1``: not in the
panel). A CSR block of the user's cells is mapped to panel positions per chunk, so no dense 19,264-column copy
of the data is ever built; panel genes the data lacks are zeros, exactly as the official zero-filling.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._registry import RemoteFile

__all__ = ["PANEL_FILE", "PANEL_SIZE", "read_panel", "find_panel", "GeneAlignment", "align_genes", "to_panel_csr"]

PANEL_SIZE = 19_264
_PANEL_NAME = "OS_scRNA_gene_index.19264.tsv"
_OFFICIAL_COMMIT = "d09626a5c1bc30b9c6227378677b61e0b987fe8b"

PANEL_FILE = RemoteFile(
    filename=_PANEL_NAME,
    url=f"https://raw.githubusercontent.com/biomap-research/scFoundation/{_OFFICIAL_COMMIT}/model/{_PANEL_NAME}",
    sha256="bb337ea195d94e7b033543abc02a42e7060d6562eba97deb077f7dcecec62661",
    size=228_232,
    mirror_path=f"resources/scfoundation/{_PANEL_NAME}",
)
"""The panel as published in the official repository (``model/OS_scRNA_gene_index.19264.tsv``)."""


def read_panel(path: str | Path) -> pd.Index:
    """The panel's gene symbols in model order (the TSV's row order; its ``index`` column must be 0..n-1)."""
    df = pd.read_csv(path, sep="\t", header=0)
    if "gene_name" not in df.columns:
        raise ValueError(f"{path} is not the scFoundation gene panel: it has no 'gene_name' column.")
    if "index" in df.columns and not np.array_equal(df["index"].to_numpy(), np.arange(len(df))):
        raise ValueError(f"{path}: the 'index' column is not 0..{len(df) - 1} in row order.")
    genes = pd.Index(df["gene_name"].astype(str), name="gene_name")
    if genes.has_duplicates:
        raise ValueError(f"{path}: the gene panel has duplicate symbols.")
    return genes


def _download_panel() -> Path:
    """The panel through scfm's download module (cache, mirror or a verified download)."""
    from ..._io.download import fetch

    return Path(fetch(PANEL_FILE))


def find_panel(*candidates: Path | None) -> Path:
    """Locate the panel TSV: in the given folders (or files), then the mirror, then the cache / a download.

    Offline and nowhere to be found: :func:`scfm._io.download.fetch` raises an error naming the source
    (``PANEL_FILE.url``) and how to fetch it elsewhere.
    """
    from ..._settings import settings

    for c in candidates:
        if c is None:
            continue
        c = Path(c)
        if c.is_file() and c.name == _PANEL_NAME:
            return c
        if c.is_dir() and (c / _PANEL_NAME).is_file():
            return c / _PANEL_NAME
    if settings.mirror is not None and (settings.mirror / PANEL_FILE.mirror_path).is_file():
        return settings.mirror / PANEL_FILE.mirror_path
    return _download_panel()


@dataclass
class GeneAlignment:
    """How the user's genes map to the panel.

    Attributes
    ----------
    colmap
        For each user gene (column), its panel position, ``-1`` if it is not in the panel (or is a duplicate).
    total_col
        Column that holds each cell's total count (``pre_normalized='A'``), else ``None``.
    coverage
        Counts for provenance: panel genes found, user genes used / not in the panel, duplicates.
    """

    colmap: np.ndarray
    total_col: int | None = None
    coverage: dict[str, Any] = field(default_factory=dict)

    @property
    def n_matched(self) -> int:
        return int((self.colmap >= 0).sum())


def align_genes(
    symbols: pd.Index | np.ndarray | list[str],
    panel: pd.Index,
    *,
    total_col: int | None = None,
) -> GeneAlignment:
    """Map gene symbols to panel positions by exact symbol match (no alias mapping, as the official code).

    Duplicate symbols: the first column is used, the others are ignored and counted in the coverage.
    """
    symbols = pd.Index(np.asarray(symbols, dtype=object).astype(str))
    pos = panel.get_indexer(symbols)
    dup = symbols.duplicated(keep="first") & (pos >= 0)
    pos = np.where(dup, -1, pos).astype(np.int64)
    if total_col is not None:
        pos[total_col] = -1
    n_matched = int((pos >= 0).sum())
    n_user = len(symbols) - (1 if total_col is not None else 0)
    coverage = {
        "n_panel_genes": len(panel),
        "n_genes_matched": n_matched,
        "panel_fraction": n_matched / len(panel),
        "n_input_genes": n_user,
        "n_input_genes_not_in_panel": n_user - n_matched - int(dup.sum()),
        "n_duplicate_symbols_ignored": int(dup.sum()),
        "n_panel_genes_zero_filled": len(panel) - n_matched,
    }
    return GeneAlignment(colmap=pos, total_col=total_col, coverage=coverage)


def to_panel_csr(block: Any, colmap: np.ndarray, n_panel: int = PANEL_SIZE):
    """Re-index a CSR block (cells × user genes) to panel positions (cells × ``n_panel``), sparse throughout.

    Entries of genes outside the panel are dropped; explicit zeros are kept (they are filtered later, like
    the official strict ``> 0`` test). Column indices of each row come out sorted (panel order).
    """
    import scipy.sparse as sp

    block = sp.csr_matrix(block)
    new_col = colmap[block.indices]
    keep = new_col >= 0
    rows = np.repeat(np.arange(block.shape[0]), np.diff(block.indptr))
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows[keep], minlength=block.shape[0]))])
    out = sp.csr_matrix(
        (np.asarray(block.data[keep], dtype=np.float64), new_col[keep], indptr), shape=(block.shape[0], n_panel)
    )
    out.sort_indices()
    return out
