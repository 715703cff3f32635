"""scfm: single-cell and spatial foundation models in scverse notebooks.

``scfm.pp`` prepares an AnnData, ``scfm.tl`` runs a model, ``scfm.pl`` shows the result; ``scfm.models`` is the
registry of releases, ``scfm.datasets`` the example data, ``scfm.settings`` the global settings.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("scfm")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.1.0.dev0"

from . import datasets, models, pl, pp, tl
from . import logging as logging
from ._settings import settings

__all__ = ["pp", "tl", "pl", "models", "datasets", "settings", "logging", "__version__"]
