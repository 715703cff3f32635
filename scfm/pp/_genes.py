"""Gene names: species detection, ID kind detection, symbol ↔ Ensembl mapping."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from scfm import logging as logg
from scfm._constants import Key

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["detect_species", "detect_id_type", "map_ids", "map_gene_ids", "gene_id_mapping"]

Species = Literal["human", "mouse", "unknown"]

_ENSEMBL = re.compile(r"^ENS([A-Z]{0,6})([GTP])\d{6,}(\.\d+)?$")
# Ensembl species codes: human has none (ENSG), mouse is MUS (ENSMUSG).
_ENSEMBL_SPECIES = {"": "human", "MUS": "mouse"}
# Human open-reading-frame genes are the one common lower-case part of an HGNC symbol (C1orf112).
_ORF = re.compile(r"(?<=\d)orf(?=\d)")
_MIN_SHARE = 0.8


def _ensembl_species(name: str) -> str | None:
    """``"human"``/``"mouse"``/``"other"`` for an Ensembl ID, ``None`` for anything else."""
    m = _ENSEMBL.match(name)
    if m is None:
        return None
    return _ENSEMBL_SPECIES.get(m.group(1), "other")


def _symbol_vote(name: str) -> str | None:
    """Vote of one gene symbol: HGNC symbols are upper-case, MGI symbols are Title-case."""
    if name.startswith("mt-"):
        return "mouse"
    letters = [c for c in _ORF.sub("", name) if c.isalpha()]
    if not letters:
        return None
    if all(c.isupper() for c in letters):
        return "human"
    if letters[0].isupper() and any(c.islower() for c in letters[1:]):
        return "mouse"
    return None


def _decide(votes: dict[str, int]) -> Species:
    total = sum(votes.values())
    if total == 0:
        return "unknown"
    best = max(votes, key=votes.get)
    if best in ("human", "mouse") and votes[best] >= _MIN_SHARE * total:
        return best  # type: ignore[return-value]
    return "unknown"


def detect_id_type(names: Sequence[str]) -> Literal["ensembl", "symbol"]:
    """Whether ``names`` are mostly Ensembl IDs (``ENSG…``, ``ENSMUSG…``) or gene symbols."""
    names = [str(n) for n in names]
    if not names:
        return "symbol"
    n_ens = sum(_ENSEMBL.match(n) is not None for n in names)
    return "ensembl" if n_ens >= 0.5 * len(names) else "symbol"


def detect_species(names: Sequence[str]) -> Species:
    """Guess the species of a list of gene names.

    Ensembl IDs decide by their prefix (``ENSG`` human, ``ENSMUSG`` mouse). Symbols decide by their case:
    HGNC (human) symbols are upper-case (``ACTB``, ``MT-CO1``, ``C1orf112``), MGI (mouse) symbols are
    Title-case (``Actb``, ``mt-Co1``, ``Gm12345``).

    Parameters
    ----------
    names
        Gene names, e.g. ``adata.var_names``.

    Returns
    -------
    ``"human"`` or ``"mouse"`` when at least 80% of the names that carry evidence agree, else ``"unknown"``
    (also for an empty list, other species, or a mix such as a human–mouse barnyard experiment).
    """
    names = [str(n) for n in names]
    if not names:
        return "unknown"
    ens_votes: dict[str, int] = {}
    sym_votes: dict[str, int] = {}
    n_ens = 0
    for name in names:
        sp = _ensembl_species(name)
        if sp is not None:
            n_ens += 1
            ens_votes[sp] = ens_votes.get(sp, 0) + 1
            continue
        vote = _symbol_vote(name)
        if vote is not None:
            sym_votes[vote] = sym_votes.get(vote, 0) + 1
    if n_ens >= 0.5 * len(names):
        return _decide(ens_votes)
    # Names without any evidence (numbers, lower-case oddities) must not be the majority.
    if sum(sym_votes.values()) < 0.5 * (len(names) - n_ens):
        return "unknown"
    return _decide(sym_votes)


# ---- mapping ----------------------------------------------------------------------------------------------

_N_EXAMPLES = 5
_TIER_NAMES = ("exact", "version_stripped", "case_insensitive", "alias")


def _strip_version(name: str) -> str | None:
    """``ENSG00000141510.17`` → ``ENSG00000141510``; ``None`` for names without an Ensembl version."""
    m = _ENSEMBL.match(name)
    if m is None or m.group(3) is None:
        return None
    return name[: -len(m.group(3))]


def _candidates(value: Any) -> tuple[str, ...]:
    """Return the target IDs of one mapping entry (a str, or a sequence of str in order), empty ones dropped."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,) if value else ()
    if isinstance(value, float) and np.isnan(value):
        return ()
    out = []
    for v in value:
        if isinstance(v, str) and v and v not in out:
            out.append(v)
    return tuple(out)


class _Index:
    """Exact and case-insensitive look-up in one mapping."""

    def __init__(self, mapping: Mapping[str, Any]):
        self.mapping = mapping
        self._upper: dict[str, list[str]] | None = None

    def exact(self, name: str) -> tuple[str, ...]:
        return _candidates(self.mapping.get(name)) if name in self.mapping else ()

    def case_insensitive(self, name: str) -> tuple[tuple[str, ...], bool]:
        """Candidates of the keys equal to ``name`` up to case; second value: several keys disagreed."""
        if self._upper is None:
            upper: dict[str, list[str]] = {}
            for key in self.mapping:
                upper.setdefault(str(key).upper(), []).append(key)
            self._upper = upper
        keys = self._upper.get(name.upper(), [])
        found = {_candidates(self.mapping[k]) for k in keys} - {()}
        if len(found) == 1:
            return found.pop(), False
        return (), len(found) > 1


def map_ids(
    names: Sequence[str],
    mapping: Mapping[str, Any],
    *,
    aliases: Mapping[str, Any] | None = None,
    case_insensitive: bool = True,
    duplicates: Literal["first", "keep"] = "first",
) -> tuple[np.ndarray, dict[str, Any]]:
    """Map gene names to IDs with a dictionary, and report the coverage.

    For each name, the first rule that finds a target wins:

    1. exact key of ``mapping``;
    2. the same Ensembl ID without its version suffix (``ENSG00000141510.17`` → ``ENSG00000141510``);
    3. a case-insensitive match, if all keys equal to the name up to case give the same target(s);
    4. the same two look-ups in ``aliases`` (e.g. previous symbols), if given.

    Duplicates are resolved deterministically:

    * one name → several IDs (a mapping value that is a list): the first ID of the list is used;
    * several names → one ID: the name matched by the better rule keeps it, ties go to the first name in
      ``names``; with ``duplicates='first'`` the others get ``""``, with ``'keep'`` they keep the ID too.

    Parameters
    ----------
    names
        Gene names to map, e.g. ``adata.var_names``.
    mapping
        Name → ID, the ID a string or a list of strings in order of preference.
    aliases
        Second mapping, used only for names that ``mapping`` does not know.
    case_insensitive
        Allow rule 3.
    duplicates
        What to do with names that map to an ID another name already has (see above).

    Returns
    -------
    ids
        Array of ``len(names)`` strings (object dtype), ``""`` where unmapped.
    report
        ``n_genes``, ``n_mapped``, ``n_unmapped``, ``fraction_mapped``, ``n_duplicated`` (names whose ID another
        name also maps to, not counting the one that keeps it), ``n_multiple`` (names with several candidate
        IDs), ``n_ambiguous`` (names whose case-insensitive matches disagree, left unmapped), counts per rule
        (``n_exact``, ``n_version_stripped``, ``n_case_insensitive``, ``n_alias``) and up to five examples of
        each problem (``unmapped_examples``, ``duplicated_examples``, ``multiple_examples``,
        ``ambiguous_examples``).
    """
    if duplicates not in ("first", "keep"):
        raise ValueError(f"`duplicates` must be 'first' or 'keep', not {duplicates!r}.")
    names = [str(n) for n in names]
    indices = [_Index(mapping)] + ([_Index(aliases)] if aliases is not None else [])
    ids = np.full(len(names), "", dtype=object)
    tier = np.full(len(names), len(_TIER_NAMES), dtype=np.int8)
    multiple: list[str] = []
    ambiguous: list[str] = []
    for i, name in enumerate(names):
        cands: tuple[str, ...] = ()
        rule = ""
        is_ambiguous = False
        for k, index in enumerate(indices):
            cands, rule = index.exact(name), "exact"
            if not cands:
                stripped = _strip_version(name)
                if stripped is not None:
                    cands, rule = index.exact(stripped), "version_stripped"
            if not cands and case_insensitive:
                cands, amb = index.case_insensitive(name)
                rule = "case_insensitive"
                is_ambiguous = is_ambiguous or amb
            if cands:
                if k > 0:
                    rule = "alias"
                break
        if not cands:
            if is_ambiguous:
                ambiguous.append(name)
            continue
        if len(cands) > 1:
            multiple.append(f"{name}→{'|'.join(cands)}")
        ids[i] = cands[0]
        tier[i] = _TIER_NAMES.index(rule)

    # Several names → one ID: the best rule, then the first name, keeps it.
    mapped = np.flatnonzero(ids != "")
    order = mapped[np.lexsort((mapped, tier[mapped]))]
    owner: dict[str, int] = {}
    duplicated: list[str] = []
    for i in order:
        target = ids[i]
        if target in owner:
            duplicated.append(f"{names[i]}→{target} (kept for {names[owner[target]]})")
            if duplicates == "first":
                ids[i] = ""
                tier[i] = len(_TIER_NAMES)
        else:
            owner[target] = int(i)

    n = len(names)
    n_mapped = int((ids != "").sum())
    unmapped = [names[i] for i in np.flatnonzero(ids == "")[:_N_EXAMPLES]]
    report: dict[str, Any] = {
        "n_genes": n,
        "n_mapped": n_mapped,
        "n_unmapped": n - n_mapped,
        "fraction_mapped": n_mapped / n if n else 0.0,
        "n_duplicated": len(duplicated),
        "n_multiple": len(multiple),
        "n_ambiguous": len(ambiguous),
    }
    for t, rule in enumerate(_TIER_NAMES):
        report[f"n_{rule}"] = int((tier == t).sum())
    report["unmapped_examples"] = unmapped
    report["duplicated_examples"] = duplicated[:_N_EXAMPLES]
    report["multiple_examples"] = multiple[:_N_EXAMPLES]
    report["ambiguous_examples"] = ambiguous[:_N_EXAMPLES]
    return ids, report


def _format_report(report: Mapping[str, Any], *, what: str) -> str:
    lines = [
        f"    {what}: mapped {report['n_mapped']} of {report['n_genes']} genes "
        f"({100 * report['fraction_mapped']:.1f}%), {report['n_unmapped']} unmapped"
    ]
    rules = [f"{report[f'n_{r}']} {r.replace('_', ' ')}" for r in _TIER_NAMES if report.get(f"n_{r}")]
    if rules:
        lines.append("    matched: " + ", ".join(rules))
    for label, key in [
        ("unmapped", "unmapped_examples"),
        ("several genes → one ID", "duplicated_examples"),
        ("one gene → several IDs (first used)", "multiple_examples"),
        ("case-insensitive matches disagree", "ambiguous_examples"),
    ]:
        examples = report.get(key) or []
        if examples:
            count = {
                "unmapped_examples": report["n_unmapped"],
                "duplicated_examples": report["n_duplicated"],
                "multiple_examples": report["n_multiple"],
                "ambiguous_examples": report["n_ambiguous"],
            }[key]
            lines.append(f"    {label} ({count}), e.g. {', '.join(examples)}")
    return "\n".join(lines)


def _pairs_to_mapping(source: pd.Series, target: pd.Series) -> dict[str, list[str]]:
    """Source → ordered list of distinct targets, from two aligned columns (missing values dropped)."""
    out: dict[str, list[str]] = {}
    for s, t in zip(source.tolist(), target.tolist(), strict=True):
        if not isinstance(s, str) or not isinstance(t, str) or not s or not t:
            continue
        lst = out.setdefault(s, [])
        if t not in lst:
            lst.append(t)
    return out


def _user_mapping(table: Any) -> dict[str, Any]:
    """Read a user table (mapping, DataFrame or path) as name → ID(s): first column → second column."""
    if isinstance(table, Mapping):
        return dict(table)
    from ._tables import read_table

    df = read_table(table)
    if df.shape[1] < 2:
        raise ValueError(
            f"A gene table needs two columns (from, to); this one has {df.shape[1]}: {list(df.columns)}."
        )
    if df.shape[1] > 2:
        logg.warning(f"gene table has {df.shape[1]} columns; mapping {df.columns[0]!r} → {df.columns[1]!r}")
    return _pairs_to_mapping(df.iloc[:, 0].astype("string").fillna(""), df.iloc[:, 1].astype("string").fillna(""))


def gene_id_mapping(
    *, to: Literal["ensembl", "symbol"], species: Literal["human", "mouse"]
) -> tuple[dict[str, Any], dict[str, Any] | None, str]:
    """Return the built-in offline mapping for ``species`` towards ``to``.

    Returns
    -------
    mapping, aliases, source
        Name → ID(s) dictionary, a second dictionary of aliases (or ``None``) and a description of the source.

        * human symbol → Ensembl: Geneformer V2's ``gene_name_id_dict``, with its ``ensembl_mapping_dict``
          (previous symbols and aliases) as aliases;
        * human Ensembl → symbol: the same dictionary inverted, retired Ensembl IDs resolved through
          ``ensembl_mapping_dict``;
        * mouse (both directions): the mouse columns of the Ensembl BioMart human–mouse homolog table (only
          mouse genes with a human homolog).
    """
    from . import _tables

    if to not in ("ensembl", "symbol"):
        raise ValueError(f"`to` must be 'ensembl' or 'symbol', not {to!r}.")
    if species == "human":
        name_id = _tables.human_symbol_to_ensembl()
        if to == "ensembl":
            alias = {k: v for k, v in _tables.human_aliases_to_ensembl().items() if not k.startswith("ENS")}
            return name_id, alias, "Geneformer V2 gene_name_id_dict (+ ensembl_mapping_dict aliases)"
        id_name: dict[str, list[str]] = {}
        for sym, ens in name_id.items():
            id_name.setdefault(ens, []).append(sym)
        alias = {}
        for old, new in _tables.human_aliases_to_ensembl().items():
            if old.startswith("ENSG") and old != new and old not in id_name and new in id_name:
                alias[old] = id_name[new]
        return id_name, alias, "Geneformer V2 gene_name_id_dict, inverted (+ retired IDs from ensembl_mapping_dict)"
    if species == "mouse":
        df = _tables.ortholog_table()
        sym = df[_tables.BIOMART_COLUMNS[("mouse", "symbol")]]
        ens = df[_tables.BIOMART_COLUMNS[("mouse", "ensembl")]]
        pairs = (sym, ens) if to == "ensembl" else (ens, sym)
        return _pairs_to_mapping(*pairs), None, "Ensembl BioMart human–mouse homolog table (mouse columns)"
    raise ValueError(f"`species` must be 'human' or 'mouse', not {species!r}.")


def map_gene_ids(
    adata: AnnData,
    *,
    to: Literal["ensembl", "symbol"] = "ensembl",
    species: Literal["human", "mouse"] | None = None,
    table: pd.DataFrame | str | os.PathLike | Mapping[str, Any] | None = None,
    source_column: str | None = None,
    key_added: str | None = None,
    duplicates: Literal["first", "keep"] = "first",
    copy: bool = False,
) -> dict[str, Any] | AnnData:
    """Map gene symbols to Ensembl IDs or back, offline.

    The built-in tables are the ones the models ship with: for human, Geneformer's symbol → Ensembl dictionary
    (and its alias dictionary); for mouse, the mouse columns of the Ensembl BioMart human–mouse homolog table.
    A name is matched exactly, then without an Ensembl version suffix, then case-insensitively (when that is
    unique), then through aliases; see :func:`scfm.pp.map_ids` for the rules and how duplicates are resolved.

    Parameters
    ----------
    adata
        Annotated data matrix, cells × genes (in memory or backed; only ``.var`` is read and written).
    to
        ``'ensembl'`` (gene IDs such as ``ENSG00000141510``) or ``'symbol'`` (such as ``TP53``).
    species
        ``'human'`` or ``'mouse'``; default: detected from the names (:func:`scfm.pp.detect_species`).
        Ignored when ``table`` is given.
    table
        Your own mapping instead of the built-in one: a dict, or a DataFrame / path of a table whose first
        column holds the names and whose second column holds the IDs (rows with the same name list the IDs in
        order of preference).
    source_column
        Column of ``adata.var`` holding the names to map (default: ``adata.var_names``).
    key_added
        Column of ``adata.var`` to write (default: ``'ensembl_id'`` or ``'gene_symbol'``).
    duplicates
        When several genes map to the same ID: ``'first'`` keeps it only for the best match (exact before
        case-insensitive before alias, then the first gene), the others get ``""``; ``'keep'`` keeps it for all.
    copy
        Return a modified copy instead of writing to ``adata``.

    Returns
    -------
    The coverage report (see :func:`scfm.pp.map_ids`, plus ``source``, ``species``, ``to``, ``key_added``), or,
    with ``copy=True``, the modified copy. Writes ``adata.var['ensembl_id' | 'gene_symbol' | key_added]``:
    the ID of each gene, ``""`` where unmapped. The report is also logged.
    """
    if to not in ("ensembl", "symbol"):
        raise ValueError(f"`to` must be 'ensembl' or 'symbol', not {to!r}.")
    if species not in (None, "human", "mouse"):
        raise ValueError(f"`species` must be 'human' or 'mouse' (or a `table=` for others), not {species!r}.")
    if source_column is not None and source_column not in adata.var.columns:
        raise KeyError(
            f"`source_column={source_column!r}` is not a column of adata.var (columns: {list(adata.var.columns)})."
        )
    names = adata.var_names if source_column is None else adata.var[source_column].astype(str)
    names = [str(n) for n in names]
    key = key_added or Key.var.gene_id(to)
    start = logg.info(f"mapping gene names to {'Ensembl IDs' if to == 'ensembl' else 'symbols'}")
    if table is not None:
        mapping, aliases, source = _user_mapping(table), None, "user table"
        detected = species or "unknown"
    else:
        guess = detect_species(names)
        if species is not None and guess not in ("unknown", species):
            logg.warning(f"the gene names look like {guess} genes, but `species={species!r}`")
        detected = species or guess
        if detected == "unknown":
            raise ValueError(
                "Could not tell the species from the gene names (neither mostly human-style upper-case symbols / "
                "ENSG IDs nor mouse-style Title-case symbols / ENSMUSG IDs). Pass `species='human'` or "
                "`species='mouse'`, or your own `table=`."
            )
        if detect_id_type(names) == to:
            mapping = {n: (_strip_version(n) or n) for n in names} if to == "ensembl" else {n: n for n in names}
            aliases, source = None, "identity (names are already of this kind)"
            logg.warning(
                f"the gene names already look like {'Ensembl IDs' if to == 'ensembl' else 'symbols'}; "
                f"copying them to adata.var[{key!r}]"
            )
        else:
            mapping, aliases, source = gene_id_mapping(to=to, species=detected)  # type: ignore[arg-type]
    ids, report = map_ids(names, mapping, aliases=aliases, duplicates=duplicates)
    report = {**report, "source": source, "species": detected, "to": to, "key_added": key}

    if copy:
        adata = adata.to_memory() if adata.isbacked else adata.copy()
    adata.var[key] = pd.Series(ids, index=adata.var.index, dtype=object)
    kind = "Ensembl ID" if to == "ensembl" else "symbol"
    deep = f"added\n    {key!r}, {kind} of each gene (adata.var)\n" + _format_report(report, what=source)
    logg.info("    finished", time=start, deep=deep)
    if report["fraction_mapped"] < 0.5:
        logg.warning(
            f"only {100 * report['fraction_mapped']:.1f}% of the genes were mapped: check `species=`, `to=`, "
            "and that the names are gene symbols or Ensembl IDs"
        )
    return adata if copy else report
