"""Geneformer rank-value encoding: dictionaries, gene mapping and a vectorised tokenizer.

What the official ``TranscriptomeTokenizer`` (``geneformer/tokenizer.py``, V2 era) computes, and what this module
reproduces token for token (quirk numbers refer to ``shared/fixtures/geneformer/PROVENANCE.md``):

* **T1** ``obs['n_counts']`` is taken as given when present; when it is absent, the row sum of the matrix over
  *all* genes is used (the official code requires the column).
* **T2** the model's ``ensembl_mapping_dict`` is restricted to entries whose value is a token; gene IDs are
  upper-cased and mapped through it; unmapped genes (also ``""``/NaN) are dropped.
* **T3** if several input genes map to one ID, the counts of each duplicated ID are summed and the summed
  columns are placed *after* all non-duplicated genes, in order of first appearance.
* **T5** value = ``count * (1 / n_counts) * 10000 * (1 / median)`` evaluated with numpy type promotion, exactly the
  operation scipy performs for the official ``X / n_counts * target_sum / norm_factor_vector`` on a sparse matrix
  (scipy divides by multiplying with the reciprocal). ``float32`` counts with ``int64`` ``n_counts`` give float64.
* **T6/T8** genes with a non-zero value, sorted by value, highest first; truncated to the input size (V2: minus
  two, then ``<cls>`` … ``<eos>`` added).

Differences from the official code (defects fixed, documented):

* **Ties (T7).** The official ``np.argsort`` is not stable, so exactly tied values come out in an order that
  depends on the numpy build and CPU. Here ties are broken deterministically by the gene's column position
  (the order after T3), i.e. the order a stable sort gives. Untied values (every cell of the shared fixtures)
  give identical tokens.
* **Duplicate IDs.** The official code decides whether to collapse by comparing the number of unique *raw*
  IDs found in the mapping with the number of unique mapped IDs. The same ID listed twice (or an ID that only
  matches after upper-casing) therefore does not trigger the collapse, and its token then appears twice in a
  cell. Here any two input genes that map to one ID are collapsed (summed), as the official code intends.
* **Versioned Ensembl IDs** (``ENSG00000141510.17``, as in GENCODE-based annotations) are not in the mapping
  dictionary, so the official code silently drops those genes; here an ID that is not found is looked up again
  without its version suffix (reported as ``n_versioned_ids_matched_without_version``). Unversioned IDs (every
  official dictionary key) are unaffected.
* **Explicit zeros** stored in a sparse matrix are not genes: the official code ranks them last as tokens of
  value 0; here they are dropped.
* **Empty cells** (no gene of the vocabulary): the official V1 tokenizer keeps them with length 0 (their mean
  embedding is NaN) and the V2 tokenizer fails (``ArrowInvalid`` when building the dataset); here they keep
  their place, get length 0 and are reported as invalid (NaN).
* ``obs['filter_pass']`` is not used to drop cells (select cells on the AnnData instead).
"""

from __future__ import annotations

import os
import re
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..._io.safe import load_pickle

if TYPE_CHECKING:
    from anndata import AnnData

    from .._base import CellData

__all__ = [
    "GeneformerDictionaries",
    "GenePlan",
    "TokenizedCells",
    "load_dictionaries",
    "build_gene_plan",
    "tokenize",
    "iter_tokenized",
    "tokenize_block",
]

TARGET_SUM = 10_000
_INPUT_SIZE = {"V1": 2048, "V2": 4096}
# Dictionary file stems and the suffix of each generation. Upstream renamed gc95M -> gc104M (same content).
_SUFFIXES = {"V1": ("gc30M",), "V2": ("gc104M", "gc95M")}
_KINDS = {
    "token": "token_dictionary_{s}.pkl",
    "median": "gene_median_dictionary_{s}.pkl",
    "mapping": "ensembl_mapping_dict_{s}.pkl",
    "name_id": "gene_name_id_dict_{s}.pkl",
}
_ENSEMBL_LIKE = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?$", re.IGNORECASE)


# ----------------------------------------------------------------------------------------------------------------
# dictionaries
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class GeneformerDictionaries:
    """The four pickled dictionaries of one Geneformer generation.

    Attributes
    ----------
    version
        ``"V1"`` (gc30M dictionaries, 2,048 genes, no special tokens) or ``"V2"`` (gc95M/gc104M, 4,096, ``<cls>``,
        ``<eos>``).
    token_dict
        Ensembl ID (and special token) → token id.
    median_dict
        Ensembl ID → non-zero median of the gene in the pretraining corpus.
    mapping_dict
        Upper-case gene ID (and, V2, symbol) → Ensembl ID, restricted to values in ``token_dict`` (T2).
    name_id_dict
        Gene symbol → Ensembl ID (used when the data has no Ensembl IDs).
    files
        Path of each file that was read.
    """

    version: str
    token_dict: dict[str, int]
    median_dict: dict[str, float]
    mapping_dict: dict[str, str]
    name_id_dict: dict[str, str] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def special_token(self) -> bool:
        """Whether cells are framed by ``<cls>`` … ``<eos>`` (V2)."""
        return "<cls>" in self.token_dict and "<eos>" in self.token_dict

    @property
    def model_input_size(self) -> int:
        """Maximum number of tokens per cell, special tokens included."""
        return _INPUT_SIZE[self.version]

    @property
    def vocab_size(self) -> int:
        return len(self.token_dict)

    @property
    def pad_id(self) -> int:
        return int(self.token_dict.get("<pad>", 0))

    @property
    def cls_id(self) -> int | None:
        v = self.token_dict.get("<cls>")
        return None if v is None else int(v)

    @property
    def eos_id(self) -> int | None:
        v = self.token_dict.get("<eos>")
        return None if v is None else int(v)

    def id_of_token(self) -> np.ndarray:
        """Array mapping token id → key of the token dictionary (Ensembl ID or special token)."""
        out = np.empty(max(int(v) for v in self.token_dict.values()) + 1, dtype=object)
        for k, v in self.token_dict.items():
            out[int(v)] = k
        return out

    def token_of(self, gene_id: str) -> int | None:
        """Token of an Ensembl ID (mapped through the mapping dictionary, as the tokenizer does)."""
        key = self.mapping_dict.get(str(gene_id).upper())
        return None if key is None else int(self.token_dict[key])


def _find_dictionary_sets(resources: Path, *, recursive: bool = True) -> dict[str, dict[str, Path]]:
    """Complete dictionary sets in ``resources`` (and its sub-folders, two levels deep), per version."""
    folders = [resources]
    if recursive:
        subs = sorted(p for p in resources.iterdir() if p.is_dir())
        folders += subs + sorted(q for p in subs for q in p.iterdir() if q.is_dir())
    found: dict[str, dict[str, Path]] = {}
    for version, suffixes in _SUFFIXES.items():
        for folder in folders:
            for s in suffixes:
                paths = {k: folder / pat.format(s=s) for k, pat in _KINDS.items()}
                if all(paths[k].is_file() for k in ("token", "median", "mapping")):
                    found.setdefault(version, paths)
    return found


def load_dictionaries(
    resources: str | Path, *, version: str | None = None, vocab_size: int | None = None
) -> GeneformerDictionaries:
    """Load the Geneformer dictionaries from a folder.

    Parameters
    ----------
    resources
        Folder holding ``token_dictionary_gc30M.pkl``, ``gene_median_dictionary_gc30M.pkl``,
        ``ensembl_mapping_dict_gc30M.pkl`` (+ ``gene_name_id_dict_gc30M.pkl``) for V1, or the ``gc95M`` / ``gc104M``
        files for V2; sub-folders are searched too (the Hugging Face layout keeps V1 files in
        ``gene_dictionaries_30m/``).
    version
        ``"V1"`` or ``"V2"``; default: the only set found, or the one whose vocabulary has ``vocab_size`` tokens.
    vocab_size
        Vocabulary size of the checkpoint, to pick the matching set when both are present.
    """
    resources = Path(resources).expanduser()
    if not resources.is_dir():
        raise FileNotFoundError(f"Geneformer resources folder {resources} does not exist.")
    sets = _find_dictionary_sets(resources)
    if not sets:
        raise FileNotFoundError(
            f"No Geneformer dictionaries in {resources}: expected token_dictionary_gc30M.pkl, "
            "gene_median_dictionary_gc30M.pkl and ensembl_mapping_dict_gc30M.pkl (V1) or the *_gc95M.pkl / "
            "*_gc104M.pkl files (V2), as published in the Hugging Face repository ctheodoris/Geneformer."
        )
    if version is not None:
        version = version.upper()
        if version not in sets:
            raise FileNotFoundError(f"No {version} dictionaries in {resources} (found: {', '.join(sets)}).")
        candidates = [version]
    else:
        candidates = list(sets)
    loaded: list[GeneformerDictionaries] = []
    for v in candidates:
        paths = sets[v]
        token = load_pickle(paths["token"])
        if vocab_size is not None and len(token) != vocab_size and len(candidates) > 1:
            continue
        loaded.append(_assemble(v, paths, token))
    if not loaded:
        raise ValueError(
            f"No dictionary set in {resources} has {vocab_size} tokens (the checkpoint's vocab_size); "
            f"found {', '.join(sets)}."
        )
    if len(loaded) > 1:
        raise ValueError(
            f"{resources} holds both V1 and V2 dictionaries; pass version='V1' or 'V2' (or load with a checkpoint)."
        )
    return loaded[0]


def _assemble(version: str, paths: dict[str, Path], token: dict) -> GeneformerDictionaries:
    token_dict = {str(k): int(v) for k, v in token.items()}
    median = {str(k): float(v) for k, v in load_pickle(paths["median"]).items()}
    mapping_raw = load_pickle(paths["mapping"])
    mapping = {str(k): str(v) for k, v in mapping_raw.items() if v in token_dict}
    name_id: dict[str, str] = {}
    files = {k: p for k, p in paths.items() if p.is_file()}
    if paths["name_id"].is_file():
        name_id = {str(k): str(v) for k, v in load_pickle(paths["name_id"]).items()}
    return GeneformerDictionaries(version, token_dict, median, mapping, name_id, files)


# ----------------------------------------------------------------------------------------------------------------
# gene plan: which columns of the user's matrix become which token
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class GenePlan:
    """How the columns of a matrix become the ranked genes of the tokenizer.

    ``slot`` = one column of the (collapsed) gene matrix the official code ranks. ``var_slot[j]`` is the slot of
    input gene ``j`` (``-1``: not in the vocabulary); several genes share a slot when they were collapsed (T3).
    """

    n_vars: int
    var_slot: np.ndarray
    slot_token: np.ndarray
    slot_recip_median: np.ndarray
    collapsed: bool
    gene_ids: np.ndarray
    coverage: dict[str, Any]

    @property
    def n_slots(self) -> int:
        return len(self.slot_token)

    @property
    def var_token(self) -> np.ndarray:
        """Token of each input gene (``-1`` if not in the vocabulary)."""
        out = np.full(self.n_vars, -1, dtype=np.int64)
        ok = self.var_slot >= 0
        out[ok] = self.slot_token[self.var_slot[ok]]
        return out

    def selector(self, dtype: Any) -> sp.csr_matrix | np.ndarray:
        """Column selection (no collapse: an index array) or summing matrix ``[n_vars, n_slots]`` (collapse)."""
        ok = np.flatnonzero(self.var_slot >= 0)
        if not self.collapsed:
            return ok[np.argsort(self.var_slot[ok], kind="stable")]
        return sp.csr_matrix(
            (np.ones(len(ok), dtype=dtype), (ok, self.var_slot[ok])), shape=(self.n_vars, self.n_slots)
        )


def _clean_str(values: Any) -> list[str]:
    s = pd.Series(values, dtype=object)
    return ["" if (v is None or (isinstance(v, float) and np.isnan(v))) else str(v) for v in s]


def map_symbols(symbols: Any, dicts: GeneformerDictionaries) -> tuple[list[str], int]:
    """Map gene symbols to Ensembl IDs with the model's ``gene_name_id_dict``.

    An exact match is used first, then a case-insensitive match when it is unique. Returns the IDs (``""`` where
    none) and the number mapped.
    """
    name_id = dicts.name_id_dict
    if not name_id:
        raise FileNotFoundError(
            "The data has gene symbols but no var['ensembl_id'] column, and the resources folder lacks the "
            "gene_name_id_dict_*.pkl needed to map symbols; add that file or an 'ensembl_id' column."
        )
    from ...pp._genes import map_ids

    # exact match, then a case-insensitive match when unambiguous; several symbols may share an ID (collapsed later)
    ids, report = map_ids(_clean_str(symbols), name_id, duplicates="keep")
    return [str(i) for i in ids], int(report["n_mapped"])


def build_gene_plan(
    var: pd.DataFrame,
    dicts: GeneformerDictionaries,
    *,
    gene_id_key: str | None = "ensembl_id",
    species_check: bool = True,
) -> GenePlan:
    """Map the genes of ``var`` to tokens as the official tokenizer does (T2–T4).

    Parameters
    ----------
    var
        Gene annotations (index = ``var_names``).
    dicts
        The model's dictionaries.
    gene_id_key
        Column of ``var`` with Ensembl IDs. When absent (or ``None``), ``var_names`` are used if they are Ensembl
        IDs, else they are treated as symbols and mapped with the model's ``gene_name_id_dict``.
    species_check
        Raise a clear error when the genes look like mouse genes (the models are human).
    """
    from ...pp._genes import _strip_version, detect_id_type, detect_species

    names = _clean_str(var.index)
    if gene_id_key is not None and gene_id_key in var.columns:
        ids = _clean_str(var[gene_id_key])
        source = f"var[{gene_id_key!r}]"
        n_symbols_mapped = None
    elif detect_id_type(names) == "ensembl":
        ids = names
        source = "var_names (Ensembl IDs)"
        n_symbols_mapped = None
    else:
        if species_check and detect_species(names) == "mouse":
            _raise_mouse()
        ids, n_symbols_mapped = map_symbols(names, dicts)
        source = f"var_names (symbols, mapped with gene_name_id_dict_{dicts.version})"
    if species_check and detect_species([i for i in ids if i] or names) == "mouse":
        _raise_mouse()

    mapping = dicts.mapping_dict
    mapped = [mapping.get(g.upper()) for g in ids]  # T2: upper-cased lookup
    n_version_stripped = 0
    for j, (g, m) in enumerate(zip(ids, mapped, strict=True)):
        if m is None and (stripped := _strip_version(g)) is not None:  # 'ENSG….7': the official code drops it
            mapped[j] = mapping.get(stripped.upper())
            n_version_stripped += mapped[j] is not None
    mapped_ids = [m for m in mapped if m is not None]
    needs_collapse = len(set(mapped_ids)) != len(mapped_ids)  # T3 (see the module docstring)
    n_vars = len(ids)
    var_slot = np.full(n_vars, -1, dtype=np.int64)
    slot_ids: list[str] = []
    if not needs_collapse:
        for j, m in enumerate(mapped):
            if m is not None:
                var_slot[j] = len(slot_ids)
                slot_ids.append(m)
    else:
        counts = Counter(m for m in mapped if m is not None)
        dups = [g for g, c in counts.items() if c > 1]  # first-appearance order
        for j, m in enumerate(mapped):
            if m is not None and counts[m] == 1:
                var_slot[j] = len(slot_ids)
                slot_ids.append(m)
        dup_slot = {}
        for g in dups:
            dup_slot[g] = len(slot_ids)
            slot_ids.append(g)
        for j, m in enumerate(mapped):
            if m is not None and counts[m] > 1:
                var_slot[j] = dup_slot[m]
    missing_median = [g for g in slot_ids if g not in dicts.median_dict]
    if missing_median:
        raise ValueError(f"{len(missing_median)} tokens have no median in the median dictionary "
                         f"(e.g. {missing_median[0]}); the dictionaries do not belong together.")
    slot_token = np.array([dicts.token_dict[g] for g in slot_ids], dtype=np.int64)
    med = np.array([dicts.median_dict[g] for g in slot_ids], dtype=np.float64)
    recip = np.divide(1, med) if len(med) else med
    n_in_vocab = int((var_slot >= 0).sum())
    coverage: dict[str, Any] = {
        "gene_ids_from": source,
        "n_genes": n_vars,
        "n_genes_in_vocabulary": n_in_vocab,
        "fraction_genes_in_vocabulary": float(n_in_vocab / n_vars) if n_vars else 0.0,
        "n_tokens": len(set(slot_ids)),
        "vocabulary_size": dicts.vocab_size,
        "duplicate_ids_collapsed": int(n_in_vocab - len(slot_ids)) if needs_collapse else 0,
        "n_versioned_ids_matched_without_version": int(n_version_stripped),
    }
    if n_symbols_mapped is not None:
        coverage["n_symbols_mapped_to_ensembl"] = int(n_symbols_mapped)
    return GenePlan(n_vars, var_slot, slot_token, recip, needs_collapse, np.asarray(ids, dtype=object), coverage)


def _raise_mouse() -> None:
    raise ValueError(
        "The genes look like mouse genes (Ensembl ENSMUSG… IDs or Title-case symbols such as 'Actb'), but "
        "Geneformer is a human model. Convert them to their human orthologs first with "
        "`scfm.pp.convert_orthologs(adata, ...)`."
    )


# ----------------------------------------------------------------------------------------------------------------
# tokenization
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class TokenizedCells:
    """Token sequences of many cells, concatenated.

    Cell ``i`` is ``input_ids[offsets[i]:offsets[i + 1]]``; ``lengths = diff(offsets)`` counts special tokens.
    ``n_ranked`` is the number of genes ranked before truncation. A cell of length 0 had no gene of the
    vocabulary.
    """

    input_ids: np.ndarray
    offsets: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def n_cells(self) -> int:
        return len(self.offsets) - 1

    def __len__(self) -> int:
        return self.n_cells

    def cell(self, i: int) -> np.ndarray:
        return self.input_ids[self.offsets[i] : self.offsets[i + 1]]

    def to_list(self) -> list[np.ndarray]:
        return [self.cell(i) for i in range(self.n_cells)]

    @staticmethod
    def concat(parts: list[TokenizedCells]) -> TokenizedCells:
        if not parts:
            return TokenizedCells(np.zeros(0, np.int32), np.zeros(1, np.int64))
        ids = np.concatenate([p.input_ids for p in parts])
        lens = np.concatenate([p.lengths for p in parts])
        return TokenizedCells(ids, np.r_[0, np.cumsum(lens)].astype(np.int64))


# Segmented sort with one 64-bit key per (cell, gene), sorted in blocks of 64 cells:
#   [cell within block: 6 bits][NOT of the value's float64 bits 62..21: 42 bits][gene position in the row: 16 bits]
# For positive floats the bit pattern is monotone, so ascending keys = cells in order, values descending, equal
# values in column order (stable). Zero values (unmapped genes, explicit zeros) have all-ones value fields and
# sort last in their cell. Genes whose values agree in the kept 42 bits (relative difference < 5e-10) are then
# re-ordered on their full values, so the result is exactly a stable descending sort by value.
_ROW_BITS, _VAL_BITS, _POS_BITS = 6, 42, 16
_BLOCK = 1 << _ROW_BITS
_POS_MASK = np.uint64((1 << _POS_BITS) - 1)
_VAL_ONES = np.uint64((1 << _VAL_BITS) - 1)


def _rank_block(
    data: np.ndarray,
    indices: np.ndarray,
    nnz: np.ndarray,
    recip_n: np.ndarray,
    col_slot: np.ndarray,
    recip_median: np.ndarray,
    max_genes: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Rank the rows of one block of CSR entries (at most 64 rows) and keep the top ``max_genes`` of each.

    Returns the slots of the kept genes (rows concatenated, highest value first) and the number of valid
    (non-zero, in-vocabulary) genes per row. Works on arrays small enough to stay in the CPU cache.
    """
    m = len(data)
    starts = np.r_[0, np.cumsum(nnz)[:-1]]
    slot = col_slot[indices]
    # T5, the exact operations of the official code (scipy multiplies by the reciprocals)
    v = data * np.repeat(recip_n, nnz)
    v = v * TARGET_SUM
    v = np.ascontiguousarray(v * recip_median[slot], dtype=np.float64)
    nonempty = nnz > 0
    n_valid = np.zeros(len(nnz), dtype=np.int64)
    n_valid[nonempty] = np.add.reduceat(v > 0, starts[nonempty], dtype=np.int64)
    # row and position fields in one pass: (row << 58) + (j - row start), modulo 2**64
    row_field = np.arange(len(nnz), dtype=np.uint64) << np.uint64(_VAL_BITS + _POS_BITS)
    rowpos = np.arange(m, dtype=np.uint64)
    rowpos += np.repeat(row_field - starts.astype(np.uint64), nnz)
    key = ~v.view(np.uint64)
    key <<= np.uint64(1)  # drop the (inverted) sign bit
    key >>= np.uint64(64 - _VAL_BITS)
    key <<= np.uint64(_POS_BITS)
    key |= rowpos
    key.sort()
    order = (key & _POS_MASK).view(np.int64)
    key >>= np.uint64(_POS_BITS)
    eq = key[1:] == key[:-1]
    eq &= (key[1:] & _VAL_ONES) != _VAL_ONES
    start = None
    if eq.any():
        start = np.repeat(starts, nnz)
        _repair_near_ties(eq, order, start, v)
    # the first n_keep sorted entries of each row
    n_keep = np.minimum(n_valid, max_genes)
    k = int(n_keep.sum())
    first = np.repeat(starts - np.r_[0, np.cumsum(n_keep)[:-1]], n_keep)
    first += np.arange(k)
    src = order[first]
    src += np.repeat(starts, n_keep)
    return slot[src], n_valid


def _repair_near_ties(eq: np.ndarray, order: np.ndarray, start: np.ndarray, v: np.ndarray) -> None:
    """Within runs of entries with equal keys, order by full value (desc), then position (asc); in place."""
    mark = np.zeros(len(order), dtype=bool)
    mark[1:] |= eq
    mark[:-1] |= eq
    idx = np.flatnonzero(mark)
    p = order[idx]
    vals = v[start[idx] + p]
    new_run = np.r_[True, ~eq[idx[1:] - 1]]
    run = np.cumsum(new_run)
    perm = np.lexsort((p, -vals, run))
    order[idx] = p[perm]


def tokenize_block(
    X: Any,
    n_counts: np.ndarray,
    plan: GenePlan,
    *,
    model_input_size: int,
    cls_id: int | None = None,
    eos_id: int | None = None,
    engine: str = "auto",
) -> tuple[TokenizedCells, np.ndarray]:
    """Tokenize a block of cells (CSR, all genes of ``plan``).

    Returns the tokens and the number of ranked (non-zero, in-vocabulary) genes per cell before truncation.
    ``engine``: ``"numba"`` (compiled kernels, threads over cells), ``"numpy"`` (vectorised fallback) or
    ``"auto"`` (numba when it is installed); both give identical tokens.
    """
    X = X if sp.isspmatrix_csr(X) else sp.csr_matrix(X)
    if plan.collapsed:  # T3: sum the duplicated IDs' columns (placed after the others)
        Y = sp.csr_matrix(X @ plan.selector(X.dtype if X.dtype.kind == "f" else np.float64))
        col_slot = np.arange(Y.shape[1], dtype=np.intp)
    else:
        Y = X
        col_slot = np.where(plan.var_slot >= 0, plan.var_slot, plan.n_slots).astype(np.intp)
    Y.sum_duplicates()  # canonical: sorted column indices, no duplicates
    n = Y.shape[0]
    special = cls_id is not None and eos_id is not None
    max_genes = model_input_size - 2 if special else model_input_size
    if max_genes < 1:
        raise ValueError(f"model_input_size={model_input_size} leaves no room for genes.")
    indptr = Y.indptr.astype(np.int64, copy=False)
    nnz = np.diff(indptr)
    if nnz.max(initial=0) > int(_POS_MASK):
        raise ValueError("A cell has more than 65,535 stored genes; this is not supported.")
    # slot n (genes outside the vocabulary) has median reciprocal 0: value 0, dropped
    recip_median = np.r_[plan.slot_recip_median, 0.0]
    slot_token = np.r_[plan.slot_token, 0].astype(np.int32)
    recip_n = np.divide(1, np.asarray(n_counts))
    if engine not in ("auto", "numba", "numpy"):
        raise ValueError(f"engine must be 'auto', 'numba' or 'numpy', not {engine!r}.")
    if engine != "numpy":
        res = _tokenize_numba(Y, indptr, recip_n, col_slot, recip_median, slot_token, max_genes, cls_id, eos_id)
        if res is not None:
            return res
        if engine == "numba":
            raise RuntimeError("engine='numba' needs numba (and float32/float64 values); it is not available.")
    parts: list[np.ndarray] = []
    n_ranked = np.zeros(n, dtype=np.int64)
    for b in range(0, n, _BLOCK):
        e = min(b + _BLOCK, n)
        s0, s1 = indptr[b], indptr[e]
        if s1 == s0:
            continue
        kept, n_ranked[b:e] = _rank_block(
            Y.data[s0:s1], Y.indices[s0:s1], nnz[b:e], recip_n[b:e], col_slot, recip_median, max_genes
        )
        parts.append(kept)
    tokens = slot_token[np.concatenate(parts)] if parts else np.zeros(0, np.int32)
    n_keep = np.minimum(n_ranked, max_genes)
    if not special:
        return TokenizedCells(tokens, np.r_[0, np.cumsum(n_keep)].astype(np.int64)), n_ranked
    has = n_keep > 0
    offsets = np.r_[0, np.cumsum(n_keep + 2 * has)].astype(np.int64)
    out = np.empty(int(offsets[-1]), dtype=np.int32)
    is_gene = np.ones(len(out), dtype=bool)
    is_gene[offsets[:-1][has]] = False
    is_gene[offsets[1:][has] - 1] = False
    out[is_gene] = tokens
    out[offsets[:-1][has]] = cls_id
    out[offsets[1:][has] - 1] = eos_id
    return TokenizedCells(out, offsets), n_ranked


# ----------------------------------------------------------------------------------------------------------------
# compiled kernels (numba, optional): the same ranking, compiled on first use and cached on disk
# ----------------------------------------------------------------------------------------------------------------
_NUMBA: dict[str, Any] = {}
_NUMBA_LOCK = threading.Lock()
_PARALLEL_MIN_NNZ = 200_000  # smaller blocks run in the calling thread


def _numba_kernels() -> tuple[Any, Any] | None:
    """The compiled kernels, or ``None`` when numba is not installed (numba is imported on first use only)."""
    if "kernels" not in _NUMBA:
        with _NUMBA_LOCK:
            if "kernels" not in _NUMBA:
                try:
                    _NUMBA["kernels"] = _build_numba_kernels()
                except ImportError:
                    _NUMBA["kernels"] = None
    return _NUMBA["kernels"]


def _n_threads() -> int:
    """Threads for the kernels: the usable CPUs, at most ``NUMBA_NUM_THREADS`` when that is set."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    limit = os.environ.get("NUMBA_NUM_THREADS", "")
    return max(1, min(n, int(limit))) if limit.isdigit() else max(1, n)


def _tokenize_numba(
    Y: sp.csr_matrix,
    indptr: np.ndarray,
    recip_n: np.ndarray,
    col_slot: np.ndarray,
    recip_median: np.ndarray,
    slot_token: np.ndarray,
    max_genes: int,
    cls_id: int | None,
    eos_id: int | None,
) -> tuple[TokenizedCells, np.ndarray] | None:
    """Rank with the numba kernels; ``None`` when numba or the value types are not supported (use numpy)."""
    # T5: ``data * recip_n`` is computed in numpy's result type of the two, then ``* 10000`` in that type
    work = np.result_type(Y.data.dtype, recip_n.dtype)
    if work not in (np.float32, np.float64):
        return None
    kernels = _numba_kernels()
    if kernels is None:
        return None
    count_valid, rank_cells = kernels
    # float32 * float64 (numba, as numpy) is the float64 product; other value types are converted first
    data = Y.data if Y.data.dtype in (np.float32, np.float64) else Y.data.astype(work)
    indices = Y.indices if Y.indices.dtype in (np.int32, np.int64) else Y.indices.astype(np.int64)
    indptr = np.ascontiguousarray(indptr, dtype=np.int64)
    rn = np.ascontiguousarray(recip_n, dtype=work).reshape(-1)
    target = np.full(1, TARGET_SUM, dtype=work)
    col_rm = np.ascontiguousarray(recip_median[col_slot], dtype=np.float64)
    col_tok = np.ascontiguousarray(slot_token[col_slot], dtype=np.int32)
    special = cls_id is not None and eos_id is not None
    n = len(indptr) - 1
    n_threads = _n_threads() if indptr[-1] >= _PARALLEL_MIN_NNZ else 1
    # cells split into tasks of about equal numbers of stored values
    cuts = np.unique(np.searchsorted(indptr, np.linspace(0, indptr[-1], 4 * n_threads + 1), side="left"))
    cuts[0], cuts[-1] = 0, n
    ranges = [(int(r0), int(r1)) for r0, r1 in zip(cuts[:-1], cuts[1:], strict=True) if r1 > r0]

    def run(fn: Any) -> None:
        if n_threads == 1:
            for r in ranges:
                fn(*r)
        else:  # the kernels release the GIL
            with ThreadPoolExecutor(n_threads) as ex:
                list(ex.map(lambda r: fn(*r), ranges))

    n_valid = np.zeros(n, dtype=np.int64)
    run(lambda r0, r1: count_valid(data, indices, indptr, rn, target, col_rm, r0, r1, n_valid))
    if n and n_valid.min() < 0:  # column indices out of range: let numpy raise (or wrap) as it always did
        return None
    n_keep = np.minimum(n_valid, max_genes)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(n_keep + 2 * (n_keep > 0) if special else n_keep, out=offsets[1:])
    out = np.empty(int(offsets[-1]), dtype=np.int32)
    cls_eos = (int(cls_id), int(eos_id)) if special else (0, 0)
    run(lambda r0, r1: rank_cells(data, indices, indptr, rn, target, col_rm, col_tok, n_valid, offsets, max_genes,
                                  special, *cls_eos, r0, r1, out))
    return TokenizedCells(out, offsets), n_valid


def _build_numba_kernels() -> tuple[Any, Any]:
    """Compile (or load from numba's on-disk cache) the two tokenizer kernels.

    ``count_valid`` counts the valid genes of each cell; ``rank_cells`` writes each cell's tokens. Per cell: the
    values of the valid genes (T5: the same operations in the same types as numpy), then a stable descending
    sort. For positive floats the bit pattern is monotone in the value, so a (stable) counting sort on the top
    bits of ``max_bits - bits`` (about two buckets per gene) followed by an insertion sort on the full value
    (stable: ties keep column order; genes only move within their bucket) is exactly a stable descending sort by
    value. A cell whose values crowd into few buckets is merge-sorted instead.
    """
    import numba

    @numba.njit(cache=True, nogil=True)
    def count_valid(data, indices, indptr, recip_n, target, col_rm, r0, r1, n_valid):  # pragma: no cover
        ts = target[0]
        n_cols = len(col_rm)
        for i in range(r0, r1):
            rn = recip_n[i]
            c = 0
            for j in range(indptr[i], indptr[i + 1]):
                col = indices[j]
                if col < 0 or col >= n_cols:  # malformed matrix: -1, the caller falls back to numpy
                    c = -1
                    break
                t1 = data[j] * rn  # separate names: each product keeps its own type (float32 stays float32)
                t2 = t1 * ts
                v = t2 * col_rm[col]
                if v > 0:
                    c += 1
            n_valid[i] = c

    @numba.njit(cache=True, nogil=True)
    def rank_cells(data, indices, indptr, recip_n, target, col_rm, col_tok, n_valid, offsets, max_genes, special,
                   cls_id, eos_id, r0, r1, out):  # pragma: no cover - compiled
        ts = target[0]
        m = 1
        for i in range(r0, r1):
            m = max(m, n_valid[i])
        vals = np.empty(m, dtype=np.float64)
        toks = np.empty(m, dtype=np.int32)
        keys = np.empty(m, dtype=np.int64)
        sv = np.empty(m, dtype=np.float64)
        sv2 = np.empty(m, dtype=np.float64)
        order = np.empty(m, dtype=np.int64)
        hist = np.empty(4 * m, dtype=np.int64)
        for i in range(r0, r1):
            nv = n_valid[i]
            if nv == 0:
                continue
            rn = recip_n[i]
            p = 0
            for j in range(indptr[i], indptr[i + 1]):
                col = indices[j]
                t1 = data[j] * rn
                t2 = t1 * ts
                v = t2 * col_rm[col]
                if v > 0:
                    vals[p] = v
                    toks[p] = col_tok[col]
                    p += 1
            bits = vals[:nv].view(np.int64)
            hi = bits[0]
            lo = bits[0]
            for q in range(1, nv):
                hi = max(hi, bits[q])
                lo = min(lo, bits[q])
            n_b = 2  # buckets: a power of two, at least 2 * nv
            while n_b < 2 * nv:
                n_b *= 2
            shift = 0
            while ((hi - lo) >> shift) >= n_b:
                shift += 1
            hist[:n_b] = 0
            for q in range(nv):
                kq = (hi - bits[q]) >> shift  # highest value: bucket 0
                keys[q] = kq
                hist[kq] += 1
            tot = 0
            for b in range(n_b):
                cb = hist[b]
                hist[b] = tot
                tot += cb
            for q in range(nv):  # counting sort, stable
                kq = keys[q]
                dst = hist[kq]
                hist[kq] = dst + 1
                order[dst] = q
                sv[dst] = vals[q]
            # insertion sort on the full value, descending, stable
            budget = 16 * nv + 1024
            for t in range(1, nv):
                vx = sv[t]
                if sv[t - 1] >= vx:
                    continue
                x = order[t]
                u = t - 1
                while u >= 0 and sv[u] < vx:
                    sv[u + 1] = sv[u]
                    order[u + 1] = order[u]
                    u -= 1
                sv[u + 1] = vx
                order[u + 1] = x
                budget -= t - u
                if budget < 0:
                    break
            if budget < 0:  # too many moves: bottom-up merge sort (stable, descending) from column order
                for q in range(nv):
                    order[q] = q
                    sv[q] = vals[q]
                src_v, src_o, dst_v, dst_o = sv, order, sv2, keys
                width = 1
                while width < nv:
                    for a in range(0, nv, 2 * width):
                        mid = min(a + width, nv)
                        end = min(a + 2 * width, nv)
                        x = a
                        y = mid
                        for z in range(a, end):
                            if y >= end or (x < mid and src_v[x] >= src_v[y]):
                                dst_v[z] = src_v[x]
                                dst_o[z] = src_o[x]
                                x += 1
                            else:
                                dst_v[z] = src_v[y]
                                dst_o[z] = src_o[y]
                                y += 1
                    src_v, dst_v = dst_v, src_v
                    src_o, dst_o = dst_o, src_o
                    width *= 2
                for q in range(nv):
                    order[q] = src_o[q]
            o = offsets[i]
            k = min(nv, max_genes)
            if special:
                out[o] = cls_id
                o += 1
            for q in range(k):
                out[o + q] = toks[order[q]]
            if special:
                out[o + k] = eos_id

    return count_valid, rank_cells


def _n_counts(obs: pd.DataFrame, sl: slice, block: sp.csr_matrix, key: str | None) -> np.ndarray:
    if key is not None and key in obs.columns:
        col = obs[key].iloc[sl]
        arr = np.asarray(col.to_numpy())
        if arr.dtype.kind not in "iuf":
            arr = arr.astype(np.float64)
        return arr
    tot = np.asarray(block.sum(axis=1, dtype=np.float64)).ravel()
    return tot.astype(np.int64) if np.all(tot == np.round(tot)) else tot


def iter_tokenized(
    data: CellData | AnnData,
    plan: GenePlan,
    dicts: GeneformerDictionaries,
    *,
    n_counts_key: str | None = "n_counts",
    model_input_size: int | None = None,
    chunk_size: int | None = None,
    validate: bool = True,
    where: str | None = None,
) -> Iterator[tuple[slice, TokenizedCells, np.ndarray]]:
    """Tokenize chunk by chunk: yields ``(cells slice, tokens, n_ranked)``; memory does not grow with cells."""
    from ...pp._counts import validate_counts_block

    cd = _as_celldata(data)
    size = model_input_size or dicts.model_input_size
    cls_id, eos_id = (dicts.cls_id, dicts.eos_id) if dicts.special_token else (None, None)
    obs = cd.obs
    for sl, block in cd.chunks(chunk_size):
        if validate:
            validate_counts_block(block, where=where or f"adata.{cd.source}")
        n_counts = _n_counts(obs, sl, block, n_counts_key)
        expressed = np.diff(block.indptr) > 0
        bad = expressed & ~(np.isfinite(n_counts.astype(np.float64)) & (n_counts > 0))
        if bad.any():
            raise ValueError(
                f"obs[{n_counts_key!r}] is not a positive number for {int(bad.sum())} cells that have counts "
                f"(e.g. {cd.obs_names[sl][bad][0]!r}); fix or delete the column (scfm then uses the row sums)."
            )
        toks, n_ranked = tokenize_block(
            block, n_counts, plan, model_input_size=size, cls_id=cls_id, eos_id=eos_id
        )
        yield sl, toks, n_ranked


def _as_celldata(data: Any) -> CellData:
    from .._base import CellData

    if isinstance(data, CellData):
        return data
    return CellData(data)


def tokenize(
    data: CellData | AnnData,
    model_or_dicts: Any,
    *,
    gene_id_key: str | None = "ensembl_id",
    n_counts_key: str | None = "n_counts",
    model_input_size: int | None = None,
    chunk_size: int | None = None,
    validate: bool = True,
) -> TokenizedCells:
    """Rank-value encode all cells of an AnnData as Geneformer's official tokenizer does.

    Parameters
    ----------
    data
        AnnData (in memory or backed) or :class:`~scfm.models.CellData` with raw counts.
    model_or_dicts
        A loaded :class:`GeneformerModel`, :class:`GeneformerDictionaries`, or a resources folder.
    gene_id_key
        ``var`` column with Ensembl IDs; without it, ``var_names`` are used (Ensembl IDs, or symbols mapped
        with the model's ``gene_name_id_dict``).
    n_counts_key
        ``obs`` column with each cell's total counts (used as given); absent: the row sums over all genes.
    model_input_size
        Override the input size (default 2,048 for V1, 4,096 for V2, special tokens included).
    chunk_size
        Cells per chunk (default: the ``CellData`` chunk size).
    validate
        Check that the matrix holds raw counts.

    Returns
    -------
    :class:`TokenizedCells`, cells in the data's order (``input_ids``, ``offsets``, ``lengths``).
    """
    dicts = _dicts_of(model_or_dicts)
    cd = _as_celldata(data)
    plan = build_gene_plan(cd.var, dicts, gene_id_key=gene_id_key)
    parts = [
        t
        for _, t, _ in iter_tokenized(
            cd, plan, dicts, n_counts_key=n_counts_key, model_input_size=model_input_size,
            chunk_size=chunk_size, validate=validate,
        )
    ]
    return TokenizedCells.concat(parts)


def _dicts_of(obj: Any) -> GeneformerDictionaries:
    if isinstance(obj, GeneformerDictionaries):
        return obj
    if isinstance(obj, (str, Path)):
        return load_dictionaries(obj)
    d = getattr(obj, "dictionaries", None)
    if isinstance(d, GeneformerDictionaries):
        return d
    raise TypeError("Pass a GeneformerModel, GeneformerDictionaries or the folder holding the dictionaries.")
