"""Global settings of scfm (cache directory, offline switch, device, batch size, verbosity, seed)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["settings", "ScfmSettings"]


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


class ScfmSettings:
    """Settings of scfm, available as ``scfm.settings``.

    Every attribute reads its default from the environment when scfm is imported, and can be changed at run time.

    Attributes
    ----------
    cachedir
        Where downloaded weights, dictionaries and data sets are stored.
        Default: ``$SCFM_HOME`` or ``~/.cache/scfm``.
    mirror
        A directory laid out like the public sources (``data/...``, ``resources/...``) that is read instead of
        downloading. Default: ``$SCFM_MIRROR`` (unset: no mirror).
    offline
        Never touch the network; a file that is not in the cache or the mirror raises an error that names it.
        Default: ``$SCFM_OFFLINE``.
    device
        ``"auto"`` (CUDA if available, else Apple MPS, else CPU), or any :class:`torch.device` string.
    batch_size
        Default number of cells per forward pass.
    chunk_size
        Number of cells read from the AnnData at a time (memory does not grow with the number of cells).
    verbosity
        0 errors, 1 warnings, 2 info, 3 hints, 4 debug.
    seed
        Default random seed for models with a stochastic input step.
    """

    def __init__(self) -> None:
        self._cachedir = Path(os.environ.get("SCFM_HOME", Path.home() / ".cache" / "scfm")).expanduser()
        mirror = os.environ.get("SCFM_MIRROR")
        self._mirror = Path(mirror).expanduser().resolve() if mirror else None
        self.offline: bool = _env_flag("SCFM_OFFLINE")
        self.device: str = os.environ.get("SCFM_DEVICE", "auto")
        self.batch_size: int = 16
        self.chunk_size: int = 10_000
        self.verbosity: int = 2
        self.seed: int = 0

    @property
    def cachedir(self) -> Path:
        """Cache directory (created on first use)."""
        return self._cachedir

    @cachedir.setter
    def cachedir(self, value: str | os.PathLike) -> None:
        self._cachedir = Path(value).expanduser()

    @property
    def mirror(self) -> Path | None:
        """Local mirror of the public sources, or ``None``."""
        return self._mirror

    @mirror.setter
    def mirror(self, value: str | os.PathLike | None) -> None:
        self._mirror = Path(value).expanduser().resolve() if value else None

    def __repr__(self) -> str:
        fields = ["cachedir", "mirror", "offline", "device", "batch_size", "chunk_size", "verbosity", "seed"]
        body = ", ".join(f"{f}={getattr(self, f)!r}" for f in fields)
        return f"ScfmSettings({body})"


settings = ScfmSettings()
