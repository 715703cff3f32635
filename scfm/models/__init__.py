"""Model registry and loading: ``scfm.models.list()``, ``info``, ``download``, ``load``.

Adding a model family = one module (or folder) in this package that registers its releases with
:func:`register_model` and its loader with :func:`register_family`, and is imported in ``_FAMILY_MODULES``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pandas as pd

from ._base import (
    CellData,
    EmbeddingResult,
    FoundationModel,
    GeneEmbeddingResult,
    PerturbationResult,
)
from ._registry import ENTRIES, ModelEntry, RemoteFile, get_entry, get_loader, register_family, register_model

__all__ = [
    "list",
    "info",
    "download",
    "load",
    "resolve",
    "clear_cache",
    "FoundationModel",
    "CellData",
    "EmbeddingResult",
    "GeneEmbeddingResult",
    "PerturbationResult",
    "ModelEntry",
    "RemoteFile",
    "register_model",
    "register_family",
]

# Modules that register model families and releases. Import is cheap: heavy dependencies load lazily.
_FAMILY_MODULES = (
    "scfm.models.baselines",
    "scfm.models.geneformer",
    "scfm.models.scgpt",
    "scfm.models.scfoundation",
    "scfm.models.releases",
)
_loaded = False


def _ensure_registered() -> None:
    global _loaded
    if _loaded:
        return
    for mod in _FAMILY_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:  # a family module not written yet must not break the others
            if e.name != mod:
                raise
    _loaded = True


_builtin_list = list


def list(family: str | None = None, modality: str | None = None) -> pd.DataFrame:
    """All registered models, one row per release.

    Parameters
    ----------
    family
        Only this model family (e.g. ``"geneformer"``).
    modality
        Only this modality (``"rna"``, ``"image"``, ...).

    Returns
    -------
    DataFrame indexed by model name with columns family, modality, version, parameters, embedding_dim,
    gene_id_scheme, species, input_length, license, source, gated.
    """
    _ensure_registered()
    rows = [e.as_row() for e in ENTRIES.values()]
    df = pd.DataFrame(rows).set_index("name")
    if family is not None:
        df = df[df["family"] == family]
    if modality is not None:
        df = df[df["modality"] == modality]
    return df


def info(name: str) -> ModelEntry:
    """The registry entry of a release: sources, sha256s, licence, citation and input contract."""
    _ensure_registered()
    return get_entry(name)


def download(name: str, *, force: bool = False) -> dict[str, Path]:
    """Fetch all files of a release into the cache (e.g. before moving to an offline cluster).

    Returns
    -------
    Local path of each file, keyed by its name in the model folder.
    """
    from .._io.download import fetch_entry

    _ensure_registered()
    return fetch_entry(get_entry(name), force=force)


def load(
    name_or_family: str,
    checkpoint: str | Path | None = None,
    resources: str | Path | None = None,
    device: str | None = None,
    **options: Any,
) -> FoundationModel:
    """Load a model ready for the ``scfm.tl`` functions.

    Parameters
    ----------
    name_or_family
        A release name from :func:`list` (files come from the cache, a mirror or a download), or a model family
        (``"geneformer"``, ``"scgpt"``, ``"scfoundation"``, ...) together with ``checkpoint``.
    checkpoint
        Local files in the model's official layout: the folder (or file) the authors publish. Overrides the
        registry's files.
    resources
        Folder of auxiliary files (token dictionaries, vocabularies, gene panels), where the model has them.
    device
        Device for the network (``"auto"``, ``"cpu"``, ``"cuda"``, ...). Default: ``scfm.settings.device``.
    **options
        Passed to the family's loader (e.g. ``checkpoint_key`` for scFoundation).
    """
    _ensure_registered()
    entry = ENTRIES.get(name_or_family)
    if entry is None:
        try:
            loader = get_loader(name_or_family)
        except KeyError:
            get_entry(name_or_family)  # raises with close names
            raise
        family = name_or_family
    else:
        family = entry.family
        loader = get_loader(family)
        fetch_files = getattr(loader, "fetch_files", True)  # False: the loader fails before needing files
        wanted = (("checkpoint", checkpoint, entry.checkpoint), ("resources", resources, entry.resources))
        parts = tuple(kind for kind, given, files in wanted if given is None and files)
        if fetch_files and not entry.weights_free and parts:  # fetch only what the caller did not give
            from .._io.download import fetch_entry_folders

            ckpt_dir, res_dir = fetch_entry_folders(entry, parts=parts)
            checkpoint = checkpoint if checkpoint is not None else ckpt_dir
            resources = resources if resources is not None else res_dir
        options = {**entry.load_options, **options}
    del family
    return loader(
        checkpoint=None if checkpoint is None else Path(checkpoint).expanduser(),
        resources=None if resources is None else Path(resources).expanduser(),
        entry=entry,
        device=device,
        **options,
    )


# The model most recently loaded by name through :func:`resolve` (one at a time: models can be large).
_RESOLVED: dict[tuple, FoundationModel] = {}


def resolve(model: str | FoundationModel, **load_options: Any) -> FoundationModel:
    """A loaded model: pass-through for a model object, :func:`load` for a registry name.

    The model loaded for a name is kept, so that a second ``scfm.tl`` call with the same name, options,
    cache, mirror and default device reuses it instead of reading the weights again. Only the most recent one
    is kept; :func:`clear_cache` frees it.
    """
    if isinstance(model, FoundationModel):
        return model
    if isinstance(model, str):
        from .._settings import settings

        key = (model, tuple(sorted((k, repr(v)) for k, v in load_options.items())),
               str(settings.cachedir), str(settings.mirror), settings.offline, str(settings.device))
        cached = _RESOLVED.get(key)
        if cached is None:
            _RESOLVED.clear()  # free the previous model before loading the next
            cached = _RESOLVED[key] = load(model, **load_options)
        return cached
    raise TypeError(f"`model` must be a registry name or a model from scfm.models.load, got {type(model).__name__}.")


def clear_cache() -> None:
    """Forget the model kept by :func:`resolve` (a registry name passed to ``scfm.tl``), freeing its memory."""
    _RESOLVED.clear()
