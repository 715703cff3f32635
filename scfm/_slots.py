"""The one module that writes model results into an AnnData, with provenance in ``adata.uns['scfm'][key]``.

Everything is validated first and written last, so a failing call leaves the AnnData exactly as it was.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from . import logging as logg
from ._constants import Key

__all__ = ["write_results", "get_provenance", "clean_for_h5ad"]


def _version() -> str:
    from . import __version__

    return __version__


def clean_for_h5ad(value: Any) -> Any:
    """Turn a provenance value into something ``AnnData.write_h5ad`` stores (drop ``None``, paths to str)."""
    if isinstance(value, Mapping):
        return {str(k): clean_for_h5ad(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        items = [clean_for_h5ad(v) for v in value if v is not None]
        if all(isinstance(v, str) for v in items):
            return np.asarray(items, dtype=object) if items else np.asarray([], dtype=str)
        if all(isinstance(v, (int, float, np.integer, np.floating, bool, np.bool_)) for v in items):
            return np.asarray(items)
        return {str(i): v for i, v in enumerate(items)}
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, (str, int, float, bool, np.ndarray)):
        return value
    return str(value)


def _check_axis(name: str, value: Any, n: int, index: pd.Index) -> Any:
    if len(value) != n:
        raise ValueError(f"Internal error: {name} has {len(value)} rows, the AnnData has {n}.")
    if isinstance(value, pd.DataFrame):
        if not value.index.equals(index):
            raise ValueError(f"Internal error: {name} is not aligned to the AnnData's names.")
    return value


def write_results(
    adata: AnnData,
    key: str,
    *,
    provenance: Mapping[str, Any],
    obsm: Mapping[str, Any] | None = None,
    obs: Mapping[str, Any] | None = None,
    varm: Mapping[str, Any] | None = None,
    varp: Mapping[str, Any] | None = None,
    layers: Mapping[str, Any] | None = None,
    uns: Mapping[str, Any] | None = None,
    start: datetime | None = None,
    what: str = "result",
) -> None:
    """Write model results and their provenance; nothing else in ``adata`` changes.

    Parameters
    ----------
    adata
        The user's AnnData (written in place).
    key
        The provenance key: ``adata.uns['scfm'][key]``.
    provenance
        Model, version, file hashes, parameters, gene coverage, cells used. The scfm version and time are added.
    obsm, obs, varm, varp, layers, uns
        Slot name → value. Arrays are checked against the AnnData's shape before anything is written.
    start
        Start time, for the timed log line.
    what
        Short description for the log line.
    """
    obsm, obs, varm, varp, layers, uns = (dict(x or {}) for x in (obsm, obs, varm, varp, layers, uns))
    # validate everything before the first write
    for k, v in obsm.items():
        _check_axis(f"obsm[{k!r}]", v, adata.n_obs, adata.obs_names)
    for k, v in obs.items():
        _check_axis(f"obs[{k!r}]", v, adata.n_obs, adata.obs_names)
    for k, v in layers.items():
        if tuple(v.shape) != tuple(adata.shape):
            raise ValueError(f"Internal error: layers[{k!r}] has shape {v.shape}, the AnnData {adata.shape}.")
    for k, v in varm.items():
        _check_axis(f"varm[{k!r}]", v, adata.n_vars, adata.var_names)
    for k, v in varp.items():
        if tuple(v.shape) != (adata.n_vars, adata.n_vars):
            raise ValueError(f"Internal error: varp[{k!r}] has shape {v.shape}.")
    if Key.uns.root in adata.uns and not isinstance(adata.uns[Key.uns.root], Mapping):
        raise TypeError(
            f"adata.uns[{Key.uns.root!r}] exists and is not a dict; rename it to let scfm record provenance."
        )

    slots: list[str] = [f"obsm[{k!r}]" for k in obsm] + [f"obs[{k!r}]" for k in obs]
    slots += [f"varm[{k!r}]" for k in varm] + [f"varp[{k!r}]" for k in varp]
    slots += [f"layers[{k!r}]" for k in layers] + [f"uns[{k!r}]" for k in uns]
    record = dict(provenance)
    record.update(
        {
            "scfm_version": _version(),
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "slots": slots,
        }
    )
    record = clean_for_h5ad(record)

    for k, v in obsm.items():
        adata.obsm[k] = v
    for k, v in obs.items():
        adata.obs[k] = np.asarray(v) if not isinstance(v, pd.Series) else v.values
    for k, v in varm.items():
        adata.varm[k] = v
    for k, v in varp.items():
        adata.varp[k] = v
    for k, v in layers.items():
        adata.layers[k] = v
    for k, v in uns.items():
        adata.uns[k] = v
    root = adata.uns.get(Key.uns.root)
    root = dict(root) if root is not None else {}
    root[key] = record
    adata.uns[Key.uns.root] = root
    deep = "added\n" + "\n".join(f"    {s}" for s in slots + [f"uns[{Key.uns.root!r}][{key!r}]"])
    if start is not None:
        logg.info("    finished", time=start, deep=deep)
    else:
        logg.info(f"wrote {what}", deep=deep)


def get_provenance(adata: AnnData, key: str) -> dict[str, Any]:
    """The provenance record scfm wrote for ``key``."""
    try:
        return dict(adata.uns[Key.uns.root][key])
    except KeyError:
        raise KeyError(
            f"No scfm result under key {key!r}; written keys: {list(adata.uns.get(Key.uns.root, {}))}"
        ) from None
