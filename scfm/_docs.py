"""Shared parameter text, written once and injected into docstrings with :func:`inject_docs`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)

_DOCS = {
    "adata": """adata
        Annotated data matrix, cells × genes, in memory or opened with ``backed='r'``.""",
    "model": """model
        A registry name (see :func:`scfm.models.list`) or a model returned by :func:`scfm.models.load`. A name
        is loaded once and reused by later calls with the same name (:func:`scfm.models.clear_cache` frees it).""",
    "layer": """layer
        Read the counts from ``adata.layers[layer]`` instead of ``adata.X``.
    use_raw
        Read the counts from ``adata.raw``.""",
    "key_added": """key_added
        Name of the slots written (default: derived from the model family, e.g. ``'X_geneformer'``); the
        provenance goes to ``adata.uns['scfm'][key_added]``.""",
    "batch_size": """batch_size
        Cells per forward pass (default ``scfm.settings.batch_size``).""",
    "device": """device
        ``'auto'``, ``'cpu'``, ``'cuda'``, ``'cuda:1'``, ... (default ``scfm.settings.device``).""",
    "copy": """copy
        Return a modified copy instead of writing to ``adata``.""",
    "options": """**options
        Model-specific options, documented in the model's adapter (e.g. ``pooling`` for Geneformer,
        ``max_length``/``seed`` for scGPT, ``pre_normalized``/``tgthighres``/``pool`` for scFoundation,
        ``precision='bfloat16'`` for all torch models).""",
}


def inject_docs(**extra: str) -> Callable[[F], F]:
    """Replace ``{adata}``, ``{model}``, ... in the docstring by the shared text."""

    def deco(fn: F) -> F:
        if fn.__doc__:
            fn.__doc__ = fn.__doc__.format(**{**_DOCS, **extra})
        return fn

    return deco
