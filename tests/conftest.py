"""Shared fixtures. Real data and parity fixtures come from ``$SCFM_MIRROR`` (``../shared`` beside the checkout).

Outside CI, tests that need them skip with a reason when the mirror is absent; under ``CI=true`` that is a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "agg")

_REPO = Path(__file__).resolve().parents[1]


def _mirror() -> Path | None:
    env = os.environ.get("SCFM_MIRROR")
    candidates = [Path(env)] if env else [_REPO.parent / "shared"]
    for c in candidates:
        if (c / "fixtures").is_dir() or (c / "data").is_dir():
            return c.resolve()
    return None


def require_mirror() -> Path:
    """The shared mirror, or skip (fail under CI=true)."""
    m = _mirror()
    if m is None:
        msg = "the shared data mirror is absent: set SCFM_MIRROR to a folder laid out like ../shared"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return m


@pytest.fixture(scope="session")
def shared() -> Path:
    """Root of the shared mirror (``data/``, ``resources/``, ``fixtures/``)."""
    return require_mirror()


@pytest.fixture(scope="session", autouse=True)
def _scfm_env(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Point scfm at the mirror and an empty temporary cache; never touch the network."""
    import scfm

    m = _mirror()
    if m is not None:
        scfm.settings.mirror = m
    scfm.settings.cachedir = tmp_path_factory.mktemp("scfm_cache")
    scfm.settings.offline = True
    scfm.settings.device = "cpu"
    scfm.settings.verbosity = 1


@pytest.fixture(autouse=True)
def _fresh_model_cache():
    """Each test loads its models itself (a name resolved in an earlier test is not reused)."""
    import scfm

    scfm.models.clear_cache()
    yield
    scfm.models.clear_cache()


@pytest.fixture(scope="session")
def gf(shared: Path) -> Path:
    """The Geneformer parity fixtures (``fixtures/geneformer``)."""
    return shared / "fixtures" / "geneformer"


@pytest.fixture(scope="session")
def res(shared: Path) -> Path:
    """The real Geneformer dictionaries (``resources/geneformer/v1`` and ``v2``)."""
    return shared / "resources" / "geneformer"


@pytest.fixture
def pbmc200(shared: Path):
    """The 200 real PBMCs (raw counts)."""
    import anndata as ad

    return ad.read_h5ad(shared / "data" / "pbmc" / "pbmc_10k_protein_v3_200cells.h5ad")
