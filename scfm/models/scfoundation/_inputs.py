"""Per-cell input of scFoundation: panel values, the T and S tokens, and the non-zero token lists.

What the official ``get_embedding.py`` (single-cell input) computes for each cell, vectorised over a CSR chunk:

* ``pre_normalized='F'`` (raw counts): values ``log1p(x / total * 1e4)`` in float64, ``total`` = the sum of
  the cell's counts over the **panel** genes (genes outside the panel do not count).
* ``'T'`` (already ``normalize_total(1e4)`` + ``log1p``): values as given; ``total`` = the sum of those values
  (the official rule; the read depth is lost in this mode).
* ``'A'``: values as given (log-normalised); ``total`` = the cell's raw total count, given separately.
* S = ``log10(total)``; T = ``v`` (``t<v>``), ``log10(total) + v`` (``a<v>``) or ``log10(total * v)``
  (``f<v>``). The model input is the 19,264 values followed by T (position 19,264) and S (19,265).
* Only strictly positive entries are tokens (also T and S), kept in ascending position order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._panel import PANEL_SIZE, to_panel_csr

__all__ = ["parse_tgthighres", "Tokens", "make_tokens", "check_prenormalized", "PRE_NORMALIZED"]

PRE_NORMALIZED = ("F", "T", "A")
_MAX_LOG_VALUE = 30.0  # log1p of any realistic normalised expression is far below this


def parse_tgthighres(tgthighres: str) -> tuple[str, float]:
    """``'t4'`` → ``('t', 4.0)``; the official three modes ``t``, ``a``, ``f``."""
    s = str(tgthighres).strip()
    try:
        mode, value = s[0], float(s[1:])
    except (IndexError, ValueError):
        mode, value = "", float("nan")
    if mode not in ("t", "a", "f") or not np.isfinite(value):
        raise ValueError(
            f"tgthighres={tgthighres!r}: use 't<value>' (T = value), 'a<value>' (T = S + value) or "
            "'f<value>' (T = log10(total * value)), e.g. 't4', 'a5', 'f1'."
        )
    return mode, value


@dataclass
class Tokens:
    """Token lists of a chunk of cells (CSR-like: cell ``i`` owns ``indptr[i]:indptr[i+1]``).

    ``pos`` are model positions (panel index, 19264 = T, 19265 = S), ``val`` the float64 values; ``ts`` holds
    each cell's T and S values (also when they are not positive and therefore not tokens); ``n_genes`` the
    number of gene tokens.
    """

    indptr: np.ndarray
    pos: np.ndarray
    val: np.ndarray
    ts: np.ndarray
    n_genes: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.indptr)

    def cell(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        s = slice(self.indptr[i], self.indptr[i + 1])
        return self.pos[s], self.val[s]


def check_prenormalized(values: np.ndarray, *, mode: str, where: str) -> None:
    """Raise if values given as pre-normalised (``'T'``/``'A'``) are not ``normalize_total`` + ``log1p`` data."""
    if values.size == 0:
        return
    finite = np.isfinite(values)
    if not finite.all():
        raise ValueError(
            f"{where} holds {int((~finite).sum())} NaN or infinite values; scFoundation cannot use them. Remove "
            "or fix those cells first."
        )
    if (values < 0).any():
        raise ValueError(
            f"{where} holds {int((values < 0).sum())} negative values (min {values.min():.4g}): it looks scaled "
            f"or centred. pre_normalized={mode!r} expects `sc.pp.normalize_total(target_sum=1e4)` + `sc.pp.log1p` "
            "output (the official code would silently drop negative values). Pass that, or raw counts with "
            "pre_normalized='F'."
        )
    nz = values[values != 0]
    if nz.size and np.all(nz == np.round(nz)):
        raise ValueError(
            f"{where} holds only integer values (max {nz.max():.4g}): these look like raw counts, but "
            f"pre_normalized={mode!r} expects log-normalised values. Use pre_normalized='F' for raw counts "
            "(scFoundation then normalises them itself), or pass the log-normalised layer."
        )
    if nz.size and nz.max() > _MAX_LOG_VALUE:
        raise ValueError(
            f"{where} has values up to {nz.max():.4g}: not log-transformed. pre_normalized={mode!r} expects "
            "`sc.pp.normalize_total(target_sum=1e4)` + `sc.pp.log1p`; for raw counts use pre_normalized='F'."
        )


def make_tokens(
    block: Any,
    colmap: np.ndarray,
    *,
    pre_normalized: str,
    tgthighres: str,
    totals: np.ndarray | None = None,
) -> Tokens:
    """Tokens of a CSR chunk (cells × user genes); ``totals`` (raw totals) is required for ``'A'``."""
    t_mode, t_value = parse_tgthighres(tgthighres)
    panel = to_panel_csr(block, colmap, PANEL_SIZE)
    n = panel.shape[0]
    row = np.repeat(np.arange(n), np.diff(panel.indptr))
    data = panel.data  # float64
    sums = np.bincount(row, weights=data, minlength=n) if data.size else np.zeros(n)
    with np.errstate(divide="ignore", invalid="ignore"):
        if pre_normalized == "F":
            total = sums
            values = np.log1p(data / total[row] * 1e4)
        elif pre_normalized == "T":
            total = sums
            values = data
        elif pre_normalized == "A":
            if totals is None:
                raise ValueError("pre_normalized='A' needs each cell's total count.")
            total = np.asarray(totals, dtype=np.float64)
            values = data
        else:
            raise ValueError(f"pre_normalized={pre_normalized!r}; use 'F', 'T' or 'A'.")
        s_tok = np.log10(total)
        if t_mode == "t":
            t_tok = np.full(n, t_value)
        elif t_mode == "a":
            t_tok = s_tok + t_value
        else:
            t_tok = np.log10(total * t_value)
    keep = values > 0  # strict, as the official `value_labels = x > 0` (NaN is dropped too)
    g_row, g_pos, g_val = row[keep], panel.indices[keep].astype(np.int64), values[keep]
    n_genes = np.bincount(g_row, minlength=n)
    t_keep, s_keep = t_tok > 0, s_tok > 0
    rows = np.concatenate([g_row, np.flatnonzero(t_keep), np.flatnonzero(s_keep)])
    pos = np.concatenate([g_pos, np.full(int(t_keep.sum()), PANEL_SIZE), np.full(int(s_keep.sum()), PANEL_SIZE + 1)])
    val = np.concatenate([g_val, t_tok[t_keep], s_tok[s_keep]])
    order = np.argsort(rows, kind="stable")  # per cell: genes (ascending), then T, then S
    counts = np.bincount(rows, minlength=n)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return Tokens(indptr=indptr, pos=pos[order], val=val[order], ts=np.stack([t_tok, s_tok], axis=1),
                  n_genes=n_genes)
