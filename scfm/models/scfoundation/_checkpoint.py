"""Reading the official ``models.ckpt`` safely.

The file is a ``torch.save`` of ``{'gene': V, 'cell': V, 'rde': V}`` with ``V = {'config': ..., 'state_dict':
{'model.<param>': tensor}}``. It is read with ``torch.load(weights_only=True)`` (:func:`scfm._io.safe.torch_load`),
which only rebuilds tensors and plain containers. Checkpoints written with numpy values in their config
pickle numpy scalars and dtypes, which ``weights_only`` refuses by default; those (and only those) value types
are allow-listed here — they are data, they cannot run code. Any other object in the file is refused.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from ._network import MaeAutobin, build_from_checkpoint

__all__ = ["CHECKPOINT_NAME", "VARIANTS", "resolve_checkpoint", "read_checkpoint", "read_variant"]

CHECKPOINT_NAME = "models.ckpt"
VARIANTS = ("cell", "rde", "gene")


def resolve_checkpoint(path: str | Path) -> Path:
    """``models.ckpt`` itself, or a folder holding it (directly or in ``models/``, the official layout)."""
    p = Path(path).expanduser()
    if p.is_dir():
        for cand in (p / CHECKPOINT_NAME, p / "models" / CHECKPOINT_NAME):
            if cand.is_file():
                return cand
        raise FileNotFoundError(f"No {CHECKPOINT_NAME} in {p} (nor in {p / 'models'}).")
    if not p.is_file():
        raise FileNotFoundError(f"scFoundation checkpoint {p} does not exist.")
    return p


def _numpy_value_types() -> list[Any]:
    import numpy as np

    types: list[Any] = [np.dtype]
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    types.append(scalar)
    for t in ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool_"):
        types.append(type(np.dtype(t)))
    return types


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The whole checkpoint (tensors and plain containers only)."""
    import torch

    from ..._io.safe import torch_load

    ctx = getattr(torch.serialization, "safe_globals", None)
    with ctx(_numpy_value_types()) if ctx is not None else contextlib.nullcontext():
        obj = torch_load(path, map_location="cpu")
    if not isinstance(obj, dict):
        raise ValueError(f"{path} is not a scFoundation checkpoint (a dict of variants); got {type(obj).__name__}.")
    return obj


def read_variant(path: str | Path, key: str) -> tuple[MaeAutobin, str]:
    """Network of one variant (``'cell'``, ``'rde'`` or ``'gene'``) and the key actually used.

    A file holding a single variant (``{'config', 'state_dict'}``, the official ``--version noversion``) is
    accepted whatever ``key`` is; the returned key is then ``'single'``.
    """
    obj = read_checkpoint(path)
    if "config" in obj and "state_dict" in obj:
        return build_from_checkpoint(obj), "single"
    if key not in obj:
        raise KeyError(
            f"checkpoint_key={key!r} is not in {Path(path).name} (it holds {sorted(map(str, obj))}). Use 'cell' "
            "for cell embeddings, 'rde' for the read-depth-enhancement variant, 'gene' for gene-level output."
        )
    return build_from_checkpoint(obj[key]), key
