"""The gene tables scfm.pp reads: Geneformer's symbol → Ensembl dictionaries and the BioMart ortholog table.

All are read offline: from the cache, from ``scfm.settings.mirror``, or downloaded once through
:func:`scfm._io.download.fetch` (which verifies them). Parsed tables are kept in memory for the session.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import pandas as pd

from scfm.models._registry import RemoteFile

__all__ = [
    "GENE_NAME_ID_DICT",
    "ENSEMBL_MAPPING_DICT",
    "BIOMART_COLUMNS",
    "human_symbol_to_ensembl",
    "human_aliases_to_ensembl",
    "ortholog_table",
    "read_table",
]

_GENEFORMER_HF = "ctheodoris/Geneformer"

# Geneformer V2's symbol → Ensembl dictionary (63,675 HGNC symbols, one ID each). Upstream now names the same
# content ``*_gc104M.pkl``.
GENE_NAME_ID_DICT = RemoteFile(
    filename="gene_name_id_dict_gc95M.pkl",
    hf_repo=_GENEFORMER_HF,
    hf_filename="geneformer/gene_name_id_dict_gc104M.pkl",
    mirror_path="resources/geneformer/v2/gene_name_id_dict_gc95M.pkl",
)
# Geneformer V2's Ensembl mapping dictionary: upper-case symbols, previous symbols and aliases, and retired
# Ensembl IDs → current Ensembl ID (what Geneformer's tokeniser uses to collapse gene names).
ENSEMBL_MAPPING_DICT = RemoteFile(
    filename="ensembl_mapping_dict_gc95M.pkl",
    hf_repo=_GENEFORMER_HF,
    hf_filename="geneformer/ensembl_mapping_dict_gc104M.pkl",
    mirror_path="resources/geneformer/v2/ensembl_mapping_dict_gc95M.pkl",
)
#: Column names of the BioMart human → mouse homolog table, by (species, id type).
BIOMART_COLUMNS: dict[tuple[str, str], str] = {
    ("human", "ensembl"): "ensembl_gene_id",
    ("human", "symbol"): "hgnc_symbol",
    ("mouse", "ensembl"): "mmusculus_homolog_ensembl_gene",
    ("mouse", "symbol"): "mmusculus_homolog_associated_gene_name",
}
BIOMART_TYPE = "mmusculus_homolog_orthology_type"
BIOMART_CONFIDENCE = "mmusculus_homolog_orthology_confidence"


def _fetch(remote: RemoteFile) -> Path:
    """Local path of a file (cache, mirror or verified download)."""
    from scfm._io.download import fetch

    return Path(fetch(remote))


def _key(path: Path) -> tuple[str, int, int]:
    st = os.stat(path)
    return str(path), st.st_mtime_ns, st.st_size


@functools.lru_cache(maxsize=8)
def _load_pickle_cached(key: tuple[str, int, int]) -> dict[str, Any]:
    from scfm._io.safe import load_pickle

    obj = load_pickle(key[0])
    if not isinstance(obj, dict):
        raise ValueError(f"{key[0]} does not hold a dictionary (found {type(obj).__name__}).")
    return obj


def human_symbol_to_ensembl() -> dict[str, str]:
    """Geneformer V2's HGNC symbol → Ensembl gene ID dictionary."""
    return _load_pickle_cached(_key(_fetch(GENE_NAME_ID_DICT)))


def human_aliases_to_ensembl() -> dict[str, str]:
    """Geneformer V2's upper-case symbol / alias / retired ID → current Ensembl gene ID dictionary."""
    return _load_pickle_cached(_key(_fetch(ENSEMBL_MAPPING_DICT)))


def read_table(table: pd.DataFrame | str | os.PathLike) -> pd.DataFrame:
    """Read a table given as a DataFrame or a path (TSV, CSV, or any delimiter pandas can sniff)."""
    if isinstance(table, pd.DataFrame):
        return table
    path = Path(table)
    if not path.is_file():
        raise FileNotFoundError(f"Gene table {str(path)!r} does not exist.")
    name = path.name.lower().removesuffix(".gz")
    if name.endswith((".tsv", ".txt", ".tab")):
        return pd.read_csv(path, sep="\t", dtype=str)
    if name.endswith(".csv"):
        return pd.read_csv(path, dtype=str)
    return pd.read_csv(path, sep=None, engine="python", dtype=str)


def ortholog_table(table: pd.DataFrame | str | os.PathLike | None = None) -> pd.DataFrame:
    """Return ``table`` (a DataFrame or a path) if given, else the BioMart human–mouse ortholog table.

    The default is :func:`scfm.datasets.orthologs_human_mouse` (cache, mirror, or a verified download).
    """
    if table is not None:
        return read_table(table)
    from scfm.datasets import orthologs_human_mouse

    return orthologs_human_mouse()
