"""Checks that a matrix holds raw integer counts, and finding where the counts of an AnnData are."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["validate_counts_block"]

_WHAT_TO_PASS = (
    "Foundation models need raw integer counts. Pass `layer='counts'` (or the layer that holds them) if you "
    "kept the counts in a layer, `use_raw=True` if `adata.raw` holds them, or give the raw count matrix "
    "(e.g. re-read the Cell Ranger output). `scfm.pp.check_counts(adata)` finds where the counts are."
)

_WHAT_TO_PASS_COUNT_LIKE = (
    "This model needs non-negative, count-like values (raw counts preferred): pass `layer=` or `use_raw=True` "
    "if they are kept elsewhere. `scfm.pp.check_counts(adata)` finds where the counts are."
)


def _values(X: Any) -> np.ndarray:
    """Return the stored values of a block (``.data`` of a sparse matrix, else the flattened array)."""
    import scipy.sparse as sp

    if sp.issparse(X):
        return np.asarray(X.data)
    return np.asarray(X).ravel()


def _describe(values: np.ndarray) -> str:
    """Summarise the values so a user recognises what the matrix holds."""
    if values.size == 0:
        return "no stored values"
    return f"min {values.min():.4g}, max {values.max():.4g}"


def validate_counts_block(X: Any, *, where: str = "adata.X", integers: bool = True) -> None:
    """Raise if a block of a matrix does not hold raw integer counts.

    Parameters
    ----------
    X
        A block of cells × genes: a scipy sparse matrix (usually CSR) or a dense array.
    where
        What the block is, for the message (e.g. ``"adata.X"``, ``"adata.layers['counts']"``).
    integers
        Also require integer values (default). ``False`` accepts any finite non-negative values (count-like
        data such as ambient-corrected counts, for models that normalise the values themselves).

    Raises
    ------
    ValueError
        If the block holds NaN or infinite values, negative values (scaled or centred data), or (with
        ``integers``) non-integer values (normalised or log-transformed data). The message says what was found
        and what to pass instead.
    """
    what_to_pass = _WHAT_TO_PASS if integers else _WHAT_TO_PASS_COUNT_LIKE
    values = _values(X)
    if values.size == 0:
        return
    if values.dtype.kind in "biu":
        if values.dtype.kind == "i" and values.min() < 0:
            n_neg = int((values < 0).sum())
            raise ValueError(
                f"{where} holds {n_neg} negative values ({_describe(values)}): these are not counts. " + what_to_pass
            )
        return
    if values.dtype.kind not in "f":
        raise ValueError(f"{where} has dtype {values.dtype}, not a numeric count type. " + what_to_pass)

    finite = np.isfinite(values)
    if not finite.all():
        n_bad = int((~finite).sum())
        raise ValueError(
            f"{where} holds {n_bad} NaN or infinite values: these are not counts (missing values cannot be "
            "zero-filled silently). " + what_to_pass
        )
    if (values < 0).any():
        n_neg = int((values < 0).sum())
        raise ValueError(
            f"{where} holds {n_neg} negative values ({_describe(values)}): it looks scaled or centred "
            "(e.g. `sc.pp.scale` or `sc.pp.regress_out`), not raw counts. " + what_to_pass
        )
    if not integers:
        return
    frac = values != np.round(values)
    if frac.any():
        n_frac = int(frac.sum())
        example = float(values[np.argmax(frac)])
        vmax = float(values.max())
        if vmax <= 20:
            kind = "log-normalised (e.g. `sc.pp.normalize_total` + `sc.pp.log1p`)"
        else:
            kind = "normalised (e.g. `sc.pp.normalize_total`, CPM/TPM) rather than raw counts"
        raise ValueError(
            f"{where} holds {n_frac} non-integer values (e.g. {example:.4g}; {_describe(values)}): it looks "
            f"{kind}. " + what_to_pass
        )


# ---- check_counts -----------------------------------------------------------------------------------------

def _location(layer: str | None, use_raw: bool) -> str:
    """Name of a matrix as returned by :func:`check_counts` (``"X"``, ``"layers['counts']"``, ``"raw"``)."""
    if use_raw:
        return "raw"
    return f"layers[{layer!r}]" if layer is not None else "X"


def _how_to_pass(layer: str | None, use_raw: bool) -> str:
    if use_raw:
        return "`use_raw=True`"
    if layer is not None:
        return f"`layer={layer!r}`"
    return "`layer=None, use_raw=False` (the default)"


def _windows(n_obs: int, max_cells: int | None, chunk_size: int) -> list[tuple[int, int]]:
    """Row ranges to check: all rows, or ``max_cells`` rows in evenly spaced contiguous windows."""
    if max_cells is None or n_obs <= max_cells:
        return [(s, min(s + chunk_size, n_obs)) for s in range(0, n_obs, chunk_size)]
    n_windows = min(16, max_cells)
    width = max(1, max_cells // n_windows)
    starts = np.linspace(0, n_obs - width, n_windows).round().astype(int)
    out: list[tuple[int, int]] = []
    for s in np.unique(starts):
        s = int(s)
        if out and s < out[-1][1]:
            s = out[-1][1]
        stop = min(s + width, n_obs)
        if s < stop:
            out.append((s, stop))
    return out


def _problem(adata: Any, layer: str | None, use_raw: bool, max_cells: int | None, chunk_size: int) -> str | None:
    """Why a matrix of ``adata`` is not raw counts (the checked rows only), or ``None`` if it is."""
    from scfm.models._base import CellData

    data = CellData(adata, layer=layer, use_raw=use_raw, chunk_size=chunk_size)
    where = "adata.raw.X" if use_raw else (f"adata.layers[{layer!r}]" if layer is not None else "adata.X")
    if data._matrix() is None:
        return f"{where} is None (no matrix)."
    for start, stop in _windows(data.n_obs, max_cells, chunk_size):
        try:
            validate_counts_block(data.rows(start, stop), where=where)
        except ValueError as err:
            # What is wrong, without the generic advice: the caller says what to pass instead.
            return str(err).replace(" " + _WHAT_TO_PASS, "")
    return None


def _candidates(adata: Any) -> list[tuple[str | None, bool]]:
    """Every matrix of ``adata`` that could hold counts, most likely first."""
    layers = list(adata.layers.keys())
    ranked = sorted(layers, key=lambda k: (k != "counts", "count" not in k.lower() and "raw" not in k.lower()))
    out: list[tuple[str | None, bool]] = [(None, False)] if adata.X is not None else []
    out += [(k, False) for k in ranked]
    if adata.raw is not None:
        out.append((None, True))
    return out


def check_counts(
    adata: Any,
    *,
    layer: str | None = None,
    use_raw: bool = False,
    max_cells: int | None = 10_000,
    chunk_size: int | None = None,
) -> str:
    """Find the raw integer counts of an AnnData.

    Foundation models tokenise raw counts; normalised, log-transformed or scaled values give wrong results
    without any error. This function checks that a matrix holds counts (finite, non-negative, integer values)
    and, if not, looks for them in ``adata.layers['counts']``, the other layers and ``adata.raw``.

    Backed AnnData (``backed='r'``) is streamed ``chunk_size`` cells at a time. On large data only ``max_cells``
    cells are checked, in evenly spaced windows across the matrix; the check is exact on those cells.

    Parameters
    ----------
    adata
        Annotated data matrix, cells × genes, in memory or opened with ``backed='r'``.
    layer
        Check ``adata.layers[layer]``.
    use_raw
        Check ``adata.raw.X``.
    max_cells
        Check at most this many cells (``None``: all cells).
    chunk_size
        Cells read at a time (default ``scfm.settings.chunk_size``).

    Returns
    -------
    Where the counts are: ``"X"``, ``"layers['<name>']"`` or ``"raw"``. Without ``layer`` / ``use_raw``, the first
    matrix that holds counts is returned (``X`` first; a warning says what to pass when it is not ``X``).

    Raises
    ------
    ValueError
        If no matrix holds raw counts, or if the matrix asked for with ``layer`` / ``use_raw`` does not (the
        message names where the counts are, if anywhere, and what to pass instead).
    """
    from scfm import logging as logg
    from scfm._settings import settings

    if layer is not None and use_raw:
        raise ValueError("Pass either `layer=` or `use_raw=True`, not both.")
    if layer is not None and layer not in adata.layers:
        raise KeyError(f"Layer {layer!r} is not in adata.layers (available: {list(adata.layers)}).")
    if use_raw and adata.raw is None:
        raise ValueError("`use_raw=True` but adata.raw is None.")
    size = int(chunk_size or settings.chunk_size)
    if max_cells is not None and max_cells < 1:
        raise ValueError(f"`max_cells` must be a positive number or None, not {max_cells!r}.")

    asked = (layer, use_raw)
    problem = _problem(adata, layer, use_raw, max_cells, size)
    if problem is None:
        return _location(layer, use_raw)

    explicit = layer is not None or use_raw
    found: tuple[str | None, bool] | None = None
    for cand in _candidates(adata):
        if cand == asked:
            continue
        if _problem(adata, cand[0], cand[1], max_cells, size) is None:
            found = cand
            break
    if found is None:
        raise ValueError(
            f"{problem} No layer or .raw of this AnnData holds raw counts either. " + _WHAT_TO_PASS
        )
    loc, hint = _location(*found), _how_to_pass(*found)
    if explicit:
        raise ValueError(f"{problem} The raw counts are in adata.{loc}: pass {hint} instead.")
    what = problem.split(":")[0].rstrip(".")
    logg.warning(f"{what}, but adata.{loc} holds raw counts: pass {hint} to scfm functions")
    return loc
