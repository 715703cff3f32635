"""Loading that can never execute code from a file.

* Pickled dictionaries (Geneformer's token / median / mapping dictionaries) go through a restricted unpickler
  that allows plain containers, strings, numbers and numpy scalars and rejects every other global.
* PyTorch checkpoints are read with ``torch.load(weights_only=True)``.
* safetensors files are read with :mod:`safetensors`.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
from pathlib import Path
from typing import Any

__all__ = ["UnsafePickleError", "load_pickle", "torch_load", "load_state_dict", "sha256sum"]


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for a global that scfm does not allow (it could execute code)."""


# (module, name) pairs a dictionary pickle may reference. Everything else is refused.
_ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        ("builtins", "dict"),
        ("builtins", "list"),
        ("builtins", "tuple"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "str"),
        ("builtins", "int"),
        ("builtins", "float"),
        ("builtins", "bool"),
        ("builtins", "complex"),
        ("collections", "OrderedDict"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }
)


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            if module.startswith("numpy"):
                import numpy as np

                if name == "dtype":
                    return np.dtype
                from numpy._core import multiarray  # numpy >= 2

                return multiarray.scalar
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"Refusing to load {module}.{name} from a pickle: scfm only loads pickles made of plain containers, "
            "strings, numbers and numpy scalars, because any other object can run code when it is unpickled."
        )


def load_pickle(path: str | os.PathLike) -> Any:
    """Load a pickled dictionary with the restricted unpickler.

    Raises
    ------
    UnsafePickleError
        If the pickle references anything besides plain containers, str, numbers and numpy scalars/dtypes.
    """
    with open(path, "rb") as f:
        return _RestrictedUnpickler(f).load()


def loads_pickle(data: bytes) -> Any:
    """:func:`load_pickle` for bytes."""
    return _RestrictedUnpickler(io.BytesIO(data)).load()


def torch_load(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load(..., weights_only=True)``: tensors and plain containers only."""
    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafePickleError(
            f"{path} holds objects other than tensors and plain containers; scfm does not load it because "
            f"unpickling them could run code. ({e})"
        ) from e


def load_state_dict(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """A state dict from ``*.safetensors`` (preferred) or a ``weights_only`` torch file."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device=str(map_location))
    obj = torch_load(path, map_location=map_location)
    if not isinstance(obj, dict):
        raise TypeError(f"{path} does not hold a state dict (got {type(obj).__name__}).")
    return obj


def sha256sum(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Full sha256 of a file (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
