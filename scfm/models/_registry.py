"""Model registry: one :class:`ModelEntry` per public release, one loader per model family.

A model family (``"geneformer"``, ``"scgpt"``, ...) registers a *loader* with :func:`register_family`; each
public release of it registers a :class:`ModelEntry` with :func:`register_model`. ``scfm.models.load`` resolves a
release name to its files (through the cache, :mod:`scfm._io.download`) and hands them to the family's loader.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._base import FoundationModel

__all__ = ["RemoteFile", "ModelEntry", "register_model", "register_family", "get_entry", "get_loader", "ENTRIES"]


@dataclass(frozen=True)
class RemoteFile:
    """One file of a public release.

    Parameters
    ----------
    filename
        Path of the file inside the local model folder (the layout the authors publish).
    hf_repo
        Hugging Face repository (``owner/name``), if the file is on the hub.
    hf_filename
        Path of the file in that repository (default: ``filename``).
    revision
        Pinned commit of the hub repository (``None``: the default branch, recorded at first download).
    url
        Direct download URL, for files not on the hub.
    sha256
        Full sha256 of the file, where it is known before download. Unknown: the hash seen at the first
        download is recorded in the cache and checked on every later use.
    size
        Size in bytes, where known.
    mirror_path
        Path of the same file relative to a local mirror (``scfm.settings.mirror``), e.g.
        ``"resources/geneformer/v2/token_dictionary_gc95M.pkl"``.
    """

    filename: str
    hf_repo: str | None = None
    hf_filename: str | None = None
    revision: str | None = None
    url: str | None = None
    sha256: str | None = None
    size: int | None = None
    mirror_path: str | None = None

    @property
    def source(self) -> str:
        """Human-readable source."""
        if self.hf_repo:
            rev = f"@{self.revision}" if self.revision else ""
            return f"hf://{self.hf_repo}{rev}/{self.hf_filename or self.filename}"
        return self.url or "(local only)"


@dataclass(frozen=True)
class ModelEntry:
    """A public model release: where its files come from and the input contract it expects."""

    name: str
    family: str
    version: str
    modality: str = "rna"
    n_parameters: int | None = None
    embedding_dim: int | None = None
    gene_id_scheme: str | None = None
    species: tuple[str, ...] = ("human",)
    input_length: int | None = None
    license: str = "unknown"
    citation: str = ""
    source: str = ""
    gated: bool = False
    checkpoint: tuple[RemoteFile, ...] = ()
    resources: tuple[RemoteFile, ...] = ()
    load_options: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    weights_free: bool = False

    def as_row(self) -> dict[str, Any]:
        """Row of :func:`scfm.models.list`."""
        return {
            "name": self.name,
            "family": self.family,
            "modality": self.modality,
            "version": self.version,
            "parameters": self.n_parameters,
            "embedding_dim": self.embedding_dim,
            "gene_id_scheme": self.gene_id_scheme,
            "species": ",".join(self.species),
            "input_length": self.input_length,
            "license": self.license,
            "source": self.source,
            "gated": self.gated,
        }


Loader = Callable[..., "FoundationModel"]

ENTRIES: dict[str, ModelEntry] = {}
_FAMILIES: dict[str, Loader] = {}


def register_model(entry: ModelEntry) -> ModelEntry:
    """Add a release to the registry (names are unique)."""
    if entry.name in ENTRIES and ENTRIES[entry.name] != entry:
        raise ValueError(f"A different model is already registered as {entry.name!r}.")
    ENTRIES[entry.name] = entry
    return entry


def register_family(family: str) -> Callable[[Loader], Loader]:
    """Decorator registering the loader of a model family.

    The loader is called as ``loader(checkpoint=Path | None, resources=Path | None, entry=ModelEntry | None,
    device=str | None, **options)`` and returns a :class:`~scfm.models.FoundationModel`.
    """

    def deco(fn: Loader) -> Loader:
        _FAMILIES[family] = fn
        return fn

    return deco


def families() -> list[str]:
    """Registered model families."""
    return sorted(_FAMILIES)


def get_entry(name: str) -> ModelEntry:
    """The registry entry of a release; a clear error listing close names otherwise."""
    try:
        return ENTRIES[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, list(dict.fromkeys([*ENTRIES, *_FAMILIES])), n=5)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise KeyError(
            f"No model named {name!r} in the scfm registry.{hint} See `scfm.models.list()`; a model family name "
            f"({', '.join(families())}) loads local files with `checkpoint=`."
        ) from None


def get_loader(family: str) -> Loader:
    """The loader of a model family."""
    try:
        return _FAMILIES[family]
    except KeyError:
        raise KeyError(f"No loader for model family {family!r}; known families: {', '.join(families())}.") from None


def as_path(p: str | Path | None) -> Path | None:
    """``Path`` or ``None``."""
    return None if p is None else Path(p).expanduser()
