"""Device selection and mixed precision, shared by all torch models."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from ._settings import settings

__all__ = ["resolve_device", "autocast", "check_precision", "cpu_has_native_bf16"]

_PRECISIONS = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}


def resolve_device(device: Any = None) -> Any:
    """``None`` → ``scfm.settings.device``; ``"auto"`` → CUDA, else MPS, else CPU. Returns a :class:`torch.device`."""
    import torch

    device = settings.device if device is None else device
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} was requested but CUDA is not available; use device='cpu' or 'auto'.")
    return dev


def check_precision(precision: str) -> str:
    """Normalise a precision name (``"float32"``, ``"bfloat16"``, ``"float16"``)."""
    try:
        return _PRECISIONS[str(precision).lower()]
    except KeyError:
        raise ValueError(f"precision={precision!r}; use one of 'float32', 'bfloat16', 'float16'.") from None


_BF16_WARNED = False


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 matmuls natively (AVX512-BF16 or AMX), as oneDNN reports it."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - torch built without oneDNN
        return False


def _warn_if_cpu_lacks_bf16() -> None:
    global _BF16_WARNED
    if _BF16_WARNED or cpu_has_native_bf16():
        return
    _BF16_WARNED = True
    from . import logging as logg

    logg.warning(
        "precision='bfloat16' on a CPU without native bf16 (no AVX512-BF16 / AMX): PyTorch emulates it, which is "
        "many times slower than float32 here. Use precision='float32' on this machine."
    )


@contextlib.contextmanager
def autocast(device: Any, precision: str = "float32") -> Iterator[None]:
    """Autocast to bf16/fp16 on CUDA and bf16 on CPU; a no-op for float32.

    Inference mode is always on inside this context.
    """
    import torch

    precision = check_precision(precision)
    dev = resolve_device(device)
    with torch.inference_mode():
        if precision == "float32":
            yield
            return
        dtype = getattr(torch, precision)
        if dev.type == "cpu" and dtype is torch.float16:
            raise ValueError("float16 autocast is not supported on CPU; use precision='bfloat16'.")
        if dev.type == "cpu" and dtype is torch.bfloat16:
            _warn_if_cpu_lacks_bf16()
        with torch.autocast(device_type=dev.type, dtype=dtype):
            yield
