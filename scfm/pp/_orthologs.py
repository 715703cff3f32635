"""Ortholog conversion: express an AnnData of one species in the genes of another."""

from __future__ import annotations

import copy as _copy
import os
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from scfm import logging as logg
from scfm._constants import Key

from ._genes import detect_id_type, detect_species, map_ids
from ._tables import BIOMART_COLUMNS, BIOMART_CONFIDENCE, BIOMART_TYPE, ortholog_table

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["convert_orthologs", "ortholog_pairs"]

_ONE2ONE = "ortholog_one2one"
_N_EXAMPLES = 5


def _is_biomart(df: pd.DataFrame) -> bool:
    return all(c in df.columns for c in BIOMART_COLUMNS.values())


def _clean(values: pd.Series) -> pd.Series:
    """Strings with missing values as ``""`` (tables read by pandas have NaN for empty cells)."""
    return values.astype("string").fillna("").str.strip().astype(object)


def ortholog_pairs(
    table: pd.DataFrame,
    *,
    source: str,
    target: str,
    id_type: Literal["symbol", "ensembl"],
    one2one_only: bool,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Source → target gene pairs from an ortholog table, one target per source gene.

    Parameters
    ----------
    table
        The Ensembl BioMart human → mouse homolog table (columns ``ensembl_gene_id``, ``hgnc_symbol``,
        ``mmusculus_homolog_ensembl_gene``, ``mmusculus_homolog_associated_gene_name``,
        ``mmusculus_homolog_orthology_type``, ...), or any table whose first column holds source genes and whose
        second column holds target genes (an optional column whose name contains ``orthology_type`` marks
        one-to-one pairs with ``ortholog_one2one``).
    source, target
        Species (only used to pick the BioMart columns: ``'human'`` or ``'mouse'``).
    id_type
        ``'symbol'`` or ``'ensembl'`` (BioMart table only).
    one2one_only
        Keep only pairs that are one-to-one: marked so in the table (when it has an orthology type) **and**
        one-to-one among the remaining pairs after missing IDs are dropped. Otherwise each source gene keeps its
        best target (one-to-one pairs first, then higher confidence, then table order) and several source genes
        may share a target.

    Returns
    -------
    pairs
        DataFrame with columns ``source`` and ``target`` (each source once).
    stats
        ``n_pairs_table``, ``n_dropped_not_one2one``, ``n_source_several_targets``.
    """
    if _is_biomart(table):
        for sp in (source, target):
            if sp not in ("human", "mouse"):
                raise ValueError(
                    f"The BioMart table holds human and mouse genes only, not {sp!r}: give a two-column table "
                    "(source gene, target gene) as `table=`."
                )
        cols = [BIOMART_COLUMNS[(source, id_type)], BIOMART_COLUMNS[(target, id_type)]]
        kind = table[BIOMART_TYPE] if BIOMART_TYPE in table.columns else None
        conf = table[BIOMART_CONFIDENCE] if BIOMART_CONFIDENCE in table.columns else None
    else:
        if table.shape[1] < 2:
            raise ValueError(
                f"An ortholog table needs at least two columns (source gene, target gene); this one has "
                f"{list(table.columns)}."
            )
        cols = list(table.columns[:2])
        type_cols = [c for c in table.columns if "orthology_type" in str(c)]
        kind = table[type_cols[0]] if type_cols else None
        conf = None
    df = pd.DataFrame(
        {
            "source": _clean(table[cols[0]]).to_numpy(),
            "target": _clean(table[cols[1]]).to_numpy(),
            "one2one": (kind.astype(str) == _ONE2ONE).to_numpy() if kind is not None else True,
            "confidence": pd.to_numeric(conf, errors="coerce").fillna(0).to_numpy() if conf is not None else 0,
            "order": np.arange(len(table)),
        }
    )
    n_table = len(df)
    df = df[(df["source"] != "") & (df["target"] != "")]
    df = df.drop_duplicates(["source", "target"], keep="first")
    stats = {"n_pairs_table": n_table, "n_dropped_not_one2one": 0, "n_source_several_targets": 0}
    if one2one_only:
        n_before = df["source"].nunique()
        df = df[df["one2one"]]
        # Projected onto symbols (or after dropping missing IDs) a pair can stop being one-to-one.
        df = df[~df["source"].duplicated(keep=False) & ~df["target"].duplicated(keep=False)]
        stats["n_dropped_not_one2one"] = int(n_before - len(df))
    else:
        several = df["source"].duplicated(keep=False)
        stats["n_source_several_targets"] = int(df.loc[several, "source"].nunique())
        df = df.sort_values(["one2one", "confidence", "order"], ascending=[False, False, True], kind="stable")
        df = df.drop_duplicates("source", keep="first").sort_values("order", kind="stable")
    return df[["source", "target"]].reset_index(drop=True), stats


def _aggregation_matrix(gene_target: np.ndarray, targets: list[str], aggregate: str):
    """Sparse genes × targets matrix: 1 where a gene feeds a target (1/k for the mean of k genes)."""
    import scipy.sparse as sp

    col = {t: j for j, t in enumerate(targets)}
    rows = np.flatnonzero(gene_target != "")
    cols = np.fromiter((col[t] for t in gene_target[rows]), dtype=np.int64, count=len(rows))
    weights = np.ones(len(rows), dtype=np.float64)
    if aggregate == "mean":
        weights = 1.0 / np.bincount(cols, minlength=len(targets))[cols]
    return sp.csr_matrix((weights, (rows, cols)), shape=(len(gene_target), len(targets)))


def _convert_matrix(adata: AnnData, m, *, layer: str | None, mapped: np.ndarray, aggregate: str):
    """Stream one matrix of ``adata`` through the aggregation matrix; returns (CSR, total, kept).

    Sums keep the dtype of the data (integer counts stay integer); means are float32 unless the data are float64.
    """
    import scipy.sparse as sp

    from scfm._settings import settings
    from scfm.models._base import CellData

    data = CellData(adata, layer=layer, chunk_size=settings.chunk_size)
    blocks = []
    total = kept = 0.0
    mat = m
    for _, block in data.chunks():
        if block.dtype.kind == "b" or (aggregate == "mean" and block.dtype.kind != "f"):
            block = block.astype(np.float32)
        if mat.dtype != block.dtype:
            mat = m.astype(block.dtype)
        out = sp.csr_matrix(block @ mat)
        out.eliminate_zeros()
        blocks.append(out)
        total += float(block.sum())
        kept += float(block[:, mapped].sum())
    if not blocks:
        return sp.csr_matrix((0, m.shape[1]), dtype=np.float32), 0.0, 0.0
    return sp.vstack(blocks, format="csr"), total, kept


def convert_orthologs(
    adata: AnnData,
    *,
    source: str = "mouse",
    target: str = "human",
    table: pd.DataFrame | str | os.PathLike | None = None,
    one2one_only: bool = True,
    id_type: Literal["symbol", "ensembl"] | None = None,
    aggregate: Literal["sum", "mean"] = "sum",
    source_column: str | None = None,
    copy: bool = True,
) -> AnnData | None:
    """Express an AnnData of one species in the genes of another, through orthologs.

    Each gene of ``adata`` is looked up in the ortholog table (exactly, then without an Ensembl version, then
    case-insensitively when that is unique). Genes without an ortholog are dropped; genes that map to the same
    target gene are combined with ``aggregate``. The matrix stays sparse and backed data are streamed.

    Parameters
    ----------
    adata
        Annotated data matrix of the ``source`` species, cells × genes, in memory or opened with ``backed='r'``.
    source, target
        Species of ``adata`` and of the result (``'mouse'`` and ``'human'`` with the built-in table).
    table
        Ortholog table: default the Ensembl BioMart human–mouse homolog table
        (:func:`scfm.datasets.orthologs_human_mouse`). Or your own, as a DataFrame or a path: the same BioMart
        format, or a table whose first column holds ``source`` genes and second column ``target`` genes.
    one2one_only
        Use only one-to-one orthologs (default). With ``False``, many-to-one orthologs are combined with
        ``aggregate`` and a source gene with several targets goes to its best one (one-to-one first, then the
        table's confidence, then table order), so each count is used once.
    id_type
        Whether the genes are ``'symbol'`` or ``'ensembl'`` IDs (default: detected from the names). The result
        uses the same kind of names.
    aggregate
        ``'sum'`` (keeps counts integer and their totals unchanged) or ``'mean'`` of the source genes of a
        target gene.
    source_column
        Column of ``adata.var`` with the gene names (default: ``adata.var_names``).
    copy
        Return a new AnnData (default). With ``False``, ``adata`` (in memory only) is replaced in place.

    Returns
    -------
    A new AnnData (or ``None`` with ``copy=False``) whose ``var_names`` are the ``target`` genes, in the order of
    their first source gene, with

    ``.X`` and every ``.layers[...]``
        the combined values (sparse CSR);
    ``.var['<source>_gene']``
        the source gene(s) of each target gene, comma-separated;
    ``.var['n_<source>_genes']``
        how many source genes were combined.

    ``obs``, ``obsm``, ``obsp`` and ``uns`` are copied; ``raw``, ``varm`` and ``varp`` (gene-wise, source genes)
    are not.
    """
    import anndata as ad

    if aggregate not in ("sum", "mean"):
        raise ValueError(f"`aggregate` must be 'sum' or 'mean', not {aggregate!r}.")
    if source == target:
        raise ValueError(f"`source` and `target` are both {source!r}: nothing to convert.")
    if not copy and adata.isbacked:
        raise ValueError("`copy=False` cannot change a backed AnnData in place: use `copy=True` (the default).")
    if source_column is not None and source_column not in adata.var.columns:
        raise KeyError(
            f"`source_column={source_column!r}` is not a column of adata.var (columns: {list(adata.var.columns)})."
        )
    names = [str(n) for n in (adata.var_names if source_column is None else adata.var[source_column])]
    if id_type is None:
        id_type = detect_id_type(names)
    if id_type not in ("symbol", "ensembl"):
        raise ValueError(f"`id_type` must be 'symbol' or 'ensembl', not {id_type!r}.")

    if table is None and source in ("human", "mouse"):
        # Symbols of the two species differ mostly by case, which the case-insensitive match would paper over.
        detected = detect_species(names)
        if detected in ("human", "mouse") and detected != source:
            raise ValueError(
                f"The genes look like {detected} genes (e.g. {', '.join(names[:3])}), but `source={source!r}`. "
                f"Pass `source={detected!r}`" + (f", `target={source!r}`." if target == detected else ".")
            )
    start = logg.info(f"converting {source} genes to {target} orthologs")
    pairs, stats = ortholog_pairs(
        ortholog_table(table), source=source, target=target, id_type=id_type, one2one_only=one2one_only
    )
    mapping = dict(zip(pairs["source"], pairs["target"], strict=True))
    gene_target, report = map_ids(names, mapping, duplicates="keep")
    mapped = gene_target != ""
    if not mapped.any():
        raise ValueError(
            f"None of the {len(names)} genes (e.g. {', '.join(names[:3])}) is a {source} {id_type} in the ortholog "
            f"table. Check `source=`, `id_type=` (the genes look like {detect_id_type(names)}s) and `table=`."
        )

    targets = list(dict.fromkeys(gene_target[mapped].tolist()))
    sources_of: dict[str, list[str]] = {t: [] for t in targets}
    for name, t in zip(names, gene_target, strict=True):
        if t:
            sources_of[t].append(name)

    m = _aggregation_matrix(gene_target, targets, aggregate)
    X, total, kept = _convert_matrix(adata, m, layer=None, mapped=mapped, aggregate=aggregate)
    layers = {
        k: _convert_matrix(adata, m, layer=k, mapped=mapped, aggregate=aggregate)[0] for k in adata.layers.keys()
    }
    var = pd.DataFrame(
        {
            Key.var.ortholog_source(source): [",".join(sources_of[t]) for t in targets],
            f"n_{source}_genes": np.array([len(sources_of[t]) for t in targets], dtype=np.int64),
        },
        index=pd.Index(targets, name=None),
    )
    out = ad.AnnData(
        X=X,
        obs=adata.obs.copy(),
        var=var,
        obsm={k: v.copy() for k, v in adata.obsm.items()},
        obsp={k: v.copy() for k, v in adata.obsp.items()},
        layers=layers,
        uns=_copy.deepcopy(dict(adata.uns)),
    )

    n_multi = int((var[f"n_{source}_genes"] > 1).sum())
    deep = [
        f"    {source} → {target} ({'one-to-one' if one2one_only else 'all'} orthologs, {id_type}s): "
        f"{report['n_mapped']} of {len(names)} genes have an ortholog ({100 * report['fraction_mapped']:.1f}%) "
        f"→ {len(targets)} {target} genes",
        f"    counts kept: {100 * kept / total:.1f}% of the total" if total else "    counts kept: (no counts)",
    ]
    if stats["n_dropped_not_one2one"]:
        deep.append(f"    {stats['n_dropped_not_one2one']} {source} genes of the table left out: not one-to-one")
    if stats["n_source_several_targets"]:
        deep.append(
            f"    {stats['n_source_several_targets']} {source} genes of the table have several {target} orthologs: "
            "the best one is used"
        )
    if n_multi:
        deep.append(f"    {n_multi} {target} genes combine several {source} genes ({aggregate})")
    if report["unmapped_examples"]:
        deep.append(f"    without ortholog ({report['n_unmapped']}), e.g. {', '.join(report['unmapped_examples'])}")
    if adata.raw is not None:
        deep.append("    adata.raw was not converted (not copied)")
    logg.info(
        "    finished",
        time=start,
        deep=f"added\n    {Key.var.ortholog_source(source)!r}, source genes of each gene (adata.var)\n"
        + "\n".join(deep),
    )
    if report["fraction_mapped"] < 0.5:
        logg.warning(
            f"only {100 * report['fraction_mapped']:.1f}% of the genes have a {target} ortholog: check "
            f"`source={source!r}` and `id_type={id_type!r}`"
        )
    if copy:
        return out
    adata._init_as_actual(out)
    return None
