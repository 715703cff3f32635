"""scGPT input preparation, as ``scgpt.tasks.embed_data`` (``DataCollator`` with binning and sampling) does it.

Per cell: the non-zero in-vocabulary genes in column order, their values binned into 51 per-cell quantile bins
with random tie-breaking, ``<cls>`` prepended with the pad value, and — when the cell has more genes than
``max_length - 1`` — a random subset of them in random order. Two sources of randomness:

``"official"``
    One random stream over the cells in order, exactly the draws of the official run (``np.random.seed(seed)``,
    ``torch.manual_seed(seed)``, one int64 draw for the data loader's base seed, then per cell
    ``np.random.rand(n)`` and, if sampled, ``torch.randperm(n)``). Reproduces the reference bit for bit. The
    draws do not depend on batch size or chunking, but a cell's draws depend on the cells before it.
``"per_cell"``
    Each cell gets its own generator, seeded by ``(seed, hash of its obs name)``: a cell's tokens depend only on
    the seed, its name and its counts — not on batch size, chunking, cell order or the other cells in the
    AnnData (bowang-lab/scGPT#281).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp

__all__ = ["Tokens", "RandomSource", "tokenize_block", "bin_values", "N_BINS"]

N_BINS = 51
_QUANTILES = np.linspace(0, 1, N_BINS - 1)

RngMode = Literal["official", "per_cell"]


@dataclass
class Tokens:
    """Variable-length token sequences of a block of cells, packed: cell ``i`` is ``[offsets[i], offsets[i+1])``."""

    genes: np.ndarray  # int64, <cls> first
    values: np.ndarray  # float32, pad value at <cls>
    offsets: np.ndarray  # int64, n_cells + 1
    n_genes: np.ndarray  # non-zero in-vocabulary genes per cell (before sampling)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


class RandomSource:
    """The random draws of binning tie-breaks and gene sub-sampling (see the module docstring)."""

    def __init__(self, seed: int, mode: RngMode = "official"):
        if mode not in ("official", "per_cell"):
            raise ValueError(f"rng={mode!r}; use 'official' (reproduces the official seeded run) or 'per_cell' "
                             "(each cell's randomness depends only on the seed and its obs name).")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
        self.seed = int(seed)
        self.mode = mode
        if mode == "official":
            import torch

            self._np = np.random.RandomState(self.seed)
            self._torch = torch.Generator().manual_seed(self.seed)
            # the official DataLoader draws its base seed from the global torch generator before the first batch
            torch.empty((), dtype=torch.int64).random_(generator=self._torch)

    def _cell_rng(self, name: str) -> np.random.Generator:
        key = int.from_bytes(hashlib.blake2b(str(name).encode("utf-8"), digest_size=8).digest(), "little")
        return np.random.default_rng([self.seed, key])

    def draws(self, n_genes: np.ndarray, names: np.ndarray | None, max_length: int):
        """Yield ``(uniforms, subset or None)`` for each cell in order."""
        if self.mode == "official":
            import torch

            uniforms = self._np.random_sample(int(n_genes.sum()))
            start = 0
            for n in n_genes:
                n = int(n)
                u = uniforms[start : start + n]
                start += n
                subset = None
                if n + 1 > max_length:
                    subset = torch.randperm(n, generator=self._torch)[: max_length - 1].numpy()
                yield u, subset
        else:
            if names is None:
                raise ValueError("rng='per_cell' needs the obs names of the cells.")
            for n, name in zip(n_genes, names, strict=True):
                n = int(n)
                if n == 0:
                    yield np.empty(0), None
                    continue
                g = self._cell_rng(name)
                u = g.random(n)
                subset = g.permutation(n)[: max_length - 1] if n + 1 > max_length else None
                yield u, subset


def bin_values(values: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """51-bin per-cell quantile binning of one cell's non-zero values, with the official random tie-breaking.

    50 edges at the 0, 1/49, ..., 1 quantiles (numpy's linear method); a value equal to one or more edges gets
    a uniformly random bin among those edges (``ceil(u * (right - left) + left)``), otherwise its left bin.
    Returns float32 bins in 1..50.
    """
    edges = np.quantile(values, _QUANTILES)
    left = np.digitize(values, edges)
    right = np.digitize(values, edges, right=True)
    return np.ceil(uniforms * (right - left) + left).astype(np.int64).astype(np.float32)


def tokenize_block(
    X: sp.csr_matrix,
    gene_ids: np.ndarray,
    *,
    max_length: int,
    cls_id: int,
    pad_value: float,
    rng: RandomSource,
    names: np.ndarray | None = None,
) -> Tokens:
    """Token sequences of a block of cells.

    Parameters
    ----------
    X
        Cells × in-vocabulary genes (CSR, canonical: sorted indices, no duplicates, no explicit zeros), in the
        AnnData's column order.
    gene_ids
        Vocabulary id of each column of ``X``.
    max_length
        Maximum tokens per cell including ``<cls>``.
    cls_id, pad_value
        ``<cls>`` token id and the value put at its position.
    rng
        The random source; its stream advances over the cells in order.
    names
        Obs names of the cells (needed for ``rng='per_cell'``).
    """
    n_cells = X.shape[0]
    n_genes = np.diff(X.indptr).astype(np.int64)
    lengths = np.where(n_genes > 0, np.minimum(n_genes + 1, max_length), 0)
    offsets = np.zeros(n_cells + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    genes = np.empty(offsets[-1], dtype=np.int64)
    values = np.empty(offsets[-1], dtype=np.float32)
    data = X.data
    cols = X.indices
    for i, (u, subset) in enumerate(rng.draws(n_genes, names, max_length)):
        n = n_genes[i]
        if n == 0:
            continue
        s, e = X.indptr[i], X.indptr[i + 1]
        binned = bin_values(data[s:e].astype(np.float32, copy=False), u)
        g = gene_ids[cols[s:e]]
        o = offsets[i]
        genes[o] = cls_id
        values[o] = pad_value
        if subset is None:
            genes[o + 1 : o + 1 + n] = g
            values[o + 1 : o + 1 + n] = binned
        else:
            genes[o + 1 : offsets[i + 1]] = g[subset]
            values[o + 1 : offsets[i + 1]] = binned[subset]
    return Tokens(genes=genes, values=values, offsets=offsets, n_genes=n_genes)


def pad_batch(tokens: Tokens, cells: np.ndarray, pad_id: int, pad_value: float) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded ``(genes, values)`` arrays of the given cells (as the official ``DataCollator._pad``)."""
    lengths = tokens.lengths[cells]
    width = int(lengths.max())
    genes = np.full((len(cells), width), pad_id, dtype=np.int64)
    values = np.full((len(cells), width), pad_value, dtype=np.float32)
    for row, (c, n) in enumerate(zip(cells, lengths, strict=True)):
        o = tokens.offsets[c]
        genes[row, :n] = tokens.genes[o : o + n]
        values[row, :n] = tokens.values[o : o + n]
    return genes, values
