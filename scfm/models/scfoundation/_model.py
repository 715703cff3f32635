"""The scFoundation adapter: cell embeddings, gene-level states and gene embeddings from CSR chunks."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ... import logging as logg
from .._base import CellData, EmbeddingResult, FoundationModel, GeneEmbeddingResult
from ._inputs import PRE_NORMALIZED, Tokens, check_prenormalized, make_tokens, parse_tgthighres
from ._panel import PANEL_SIZE, GeneAlignment, align_genes

if TYPE_CHECKING:
    import torch

    from .._registry import ModelEntry
    from ._network import MaeAutobin

__all__ = ["ScFoundation"]

POOLS = ("all", "max")
_TOTAL_COLUMNS = ("total_count", "total_counts")
_OFFICIAL_SYMBOL_COLUMN = "gene_name"  # get_embedding.py: `col = var.gene_name.tolist()` if it exists
_DEFAULT_MAX_TOKENS = 16_384


class ScFoundation(FoundationModel):
    """scFoundation (xTrimoGene MAE-autobin, 100M) with the official ``get_embedding.py`` semantics.

    Load with ``scfm.models.load("scfoundation", checkpoint=<models.ckpt or its folder>,
    checkpoint_key="cell" | "rde" | "gene")`` or ``scfm.models.load("scfoundation-100m")``.

    **Cell embeddings** (``scfm.tl.embed(adata, model=m, pre_normalized="F", tgthighres="t4", pool="all")``):
    the cell's non-zero panel genes plus the T and S tokens go through the encoder; ``pool='all'`` concatenates
    [S token, T token, max over genes, mean over genes] (4 × 768 = 3,072 for the released model), ``pool='max'``
    takes the maximum over all tokens, T and S included (768). Options:

    ``pre_normalized``
        ``'F'`` raw counts (normalised here as the official code does), ``'T'`` data already
        ``normalize_total(1e4)`` + ``log1p`` (S is then log10 of the sum of the log values: the official rule),
        ``'A'`` log-normalised values plus each cell's raw total count, taken from a variable named
        ``total_count`` (or, as the official code does, the last variable of the N × 19,265 layout: the panel in
        order followed by one more column) or from ``obs[total_counts]``.
    ``tgthighres``
        ``'t<v>'`` (T = v), ``'a<v>'`` (T = S + v), ``'f<v>'`` (T = log10(total × v)).
    ``pool``
        ``'all'`` or ``'max'``.
    ``gene_symbols``
        Column of ``var`` with gene symbols (default: ``var_names``, or ``var['gene_name']`` when that column
        exists and matches more panel genes: the official reader takes the symbols from ``var.gene_name``). Genes
        are matched to the 19,264-gene panel by exact symbol; missing panel genes are zeros (as the official
        zero-filling), coverage is reported.
    ``check_counts``
        With ``pre_normalized='F'``, require raw integer counts (default). ``False`` accepts any non-negative
        values (e.g. ambient-corrected counts from CellBender or SoupX), which the model normalises itself.
    ``min_panel_fraction``
        Minimum fraction of the panel that must be matched (default 0.25); below it the call fails.
    ``total_counts``
        ``obs`` column with raw totals for ``pre_normalized='A'``.
    ``precision``
        ``'float32'`` (default, reproduces the official numbers) or ``'bfloat16'`` (autocast, faster).
    ``max_tokens``
        Cap on (cells × longest cell) per forward pass (default 16,384); ``batch_size`` caps the cells.

    Differences from the official code (all documented, none changes the reference numbers):

    * Cells are batched (sorted by length, padded, masked); the official script runs one cell at a time.
      Results agree with single-cell runs to ~1e-6 and do not depend on the batch size beyond that.
    * The official cell path treats any value exactly equal to 102 or 103 (its mask / pad ids) as a mask /
      pad token; real inputs never hold those values and scfm embeds them as values.
    * The Performer decoder stabilises the key features with the maximum over one cell, not over the whole
      batch (the official batched ``gene_batch`` mode makes a cell depend on its batch-mates: by ~1e-6 for
      similar cells, up to ~2e-3 when deep and shallow cells share a batch); identical to the official
      per-cell ``output_type='gene'``.
    * Inputs the official code silently mis-reads raise errors: counts given as pre-normalised,
      log-normalised data given as counts, negative (scaled) values, NaN, too few panel genes, an 'A' total
      that is missing. Cells with no panel counts get a NaN row (the official script crashes).
    * Panel alignment is by symbol whatever the number of columns (the official script aligns only inputs
      with fewer than 19,264 columns and reads wider ones by position).
    """

    family = "scfoundation"

    def __init__(
        self,
        net: MaeAutobin,
        *,
        panel: pd.Index,
        checkpoint_key: str,
        checkpoint_path: Path | None = None,
        entry: ModelEntry | None = None,
        files: dict[str, str] | None = None,
        device: str | None = None,
        random_weights: bool = False,
        name: str | None = None,
    ):
        super().__init__(name=name or (entry.name if entry else "scfoundation"), entry=entry, files=files,
                         device=device, random_weights=random_weights)
        if len(panel) + 2 != net.seq_len:
            raise ValueError(
                f"The gene panel has {len(panel)} genes but the checkpoint's seq_len is {net.seq_len} "
                "(expected panel + 2 for the T and S tokens)."
            )
        self.panel = panel
        self.checkpoint_key = checkpoint_key
        self.checkpoint_path = checkpoint_path
        self._nets: dict[str, MaeAutobin] = {checkpoint_key: net}

    # ---- networks ---------------------------------------------------------------------------------------------
    @property
    def net(self) -> MaeAutobin:
        """The network of the loaded checkpoint variant (``checkpoint_key``)."""
        return self._nets[self.checkpoint_key]

    @property
    def embedding_dim(self) -> int:
        return self.net.dim

    def _gene_net(self) -> MaeAutobin:
        """The ``gene`` variant (the official script uses it for every gene-level output)."""
        if "gene" not in self._nets:
            if self.checkpoint_path is None:
                if not self.random_weights:
                    logg.warning("No 'gene' checkpoint variant is available; using the loaded "
                                 f"{self.checkpoint_key!r} variant for gene-level output.")
                return self.net
            from ._checkpoint import read_variant

            logg.info(f"loading the 'gene' variant of {self.checkpoint_path.name} for gene-level output")
            net, _ = read_variant(self.checkpoint_path, "gene")
            self._nets["gene"] = net
        return self._nets["gene"]

    @staticmethod
    def _place(net: MaeAutobin, device: Any) -> torch.device:
        from ..._torch import resolve_device

        dev = resolve_device(device)
        p = next(net.parameters())
        if p.device != dev:
            net.to(dev)
        return dev

    # ---- input checks -----------------------------------------------------------------------------------------
    def _align(self, data: CellData, *, pre_normalized: str, gene_symbols: str | None,
               min_panel_fraction: float, total_counts: str | None) -> GeneAlignment:
        if pre_normalized not in PRE_NORMALIZED:
            raise ValueError(f"pre_normalized={pre_normalized!r}; use 'F' (raw counts), 'T' (normalize_total + "
                             "log1p) or 'A' (log-normalised + total counts).")
        symbols_from = "var_names"
        if gene_symbols is not None:
            if gene_symbols not in data.var.columns:
                raise KeyError(f"gene_symbols={gene_symbols!r} is not a column of var ({list(data.var.columns)}).")
            symbols = pd.Index(data.var[gene_symbols].astype(str))
            symbols_from = f"var[{gene_symbols!r}]"
        else:
            symbols = pd.Index(data.var_names.astype(str))
            # The official h5ad reader takes the symbols from `var['gene_name']` when that column exists.
            # Follow it when that column matches more panel genes than var_names (e.g. Ensembl var_names).
            if _OFFICIAL_SYMBOL_COLUMN in data.var.columns:
                alt = pd.Index(data.var[_OFFICIAL_SYMBOL_COLUMN].astype(str))
                if int(self.panel.isin(alt).sum()) > int(self.panel.isin(symbols).sum()):
                    logg.info(f"scFoundation: gene symbols taken from var[{_OFFICIAL_SYMBOL_COLUMN!r}] (as the "
                              "official reader does); pass gene_symbols= to choose another column.")
                    symbols = alt
                    symbols_from = f"var[{_OFFICIAL_SYMBOL_COLUMN!r}]"
        total_col = None
        if pre_normalized == "A":
            if total_counts is not None:
                if total_counts not in data.obs.columns:
                    raise KeyError(f"total_counts={total_counts!r} is not a column of obs.")
            else:
                names = pd.Index(data.var_names.astype(str))
                hits = [i for i, (s, v) in enumerate(zip(symbols, names, strict=True))
                        if s in _TOTAL_COLUMNS or v in _TOTAL_COLUMNS]
                n_panel = len(self.panel)
                if not hits and len(symbols) == n_panel + 1 and (symbols[:n_panel] == self.panel).all():
                    # the official layout, whatever the last variable is called: the official code takes the
                    # last column as the total by position
                    hits = [n_panel]
                    logg.info(f"scFoundation: pre_normalized='A' takes the last variable ({symbols[-1]!r}) as each "
                              "cell's total count (the official N × 19,265 layout).")
                if len(hits) != 1:
                    raise ValueError(
                        "pre_normalized='A' needs each cell's raw total count: either a variable named 'total_count' "
                        "(the official N × 19,265 layout: panel genes + total count) or "
                        "`total_counts=<obs column with raw totals>`."
                    )
                total_col = hits[0]
        elif total_counts is not None:
            raise ValueError("total_counts= is only used with pre_normalized='A'.")
        al = align_genes(symbols, self.panel, total_col=total_col)
        al.coverage["min_panel_fraction"] = float(min_panel_fraction)
        al.coverage["gene_symbols_from"] = symbols_from
        if al.coverage["panel_fraction"] < min_panel_fraction:
            hint = ""
            try:
                from ...pp._genes import detect_id_type, detect_species

                if detect_id_type(list(symbols[:2000])) == "ensembl":
                    hint = (" The genes look like Ensembl IDs: scFoundation's panel uses HGNC symbols; pass "
                            "`gene_symbols=<var column with symbols>` or map the IDs to symbols first.")
                elif detect_species(list(symbols[:2000])) == "mouse":
                    hint = " The genes look like mouse symbols: convert them to human orthologs first."
            except Exception:  # hints are best effort
                pass
            raise ValueError(
                f"Only {al.n_matched} of scFoundation's {len(self.panel)} panel genes "
                f"({al.coverage['panel_fraction']:.1%}) were found in the data; at least "
                f"{min_panel_fraction:.0%} are required (min_panel_fraction={min_panel_fraction}). scFoundation "
                "needs the whole transcriptome (not only highly variable genes), matched by gene symbol." + hint
            )
        return al

    def _chunk_tokens(self, data: CellData, block: Any, cells: slice | np.ndarray, al: GeneAlignment, *,
                      pre_normalized: str, tgthighres: str, total_counts: str | None,
                      check_counts: bool = True) -> Tokens:
        import scipy.sparse as sp

        block = sp.csr_matrix(block)
        where = f"adata.{data.source}"
        if pre_normalized == "F":
            from ...pp._counts import validate_counts_block

            try:
                validate_counts_block(block, where=where, integers=check_counts)
            except ValueError as e:
                raise ValueError(
                    f"{e} With scFoundation you can also pass data already normalised with "
                    "`sc.pp.normalize_total(target_sum=1e4)` + `sc.pp.log1p` as pre_normalized='T', or "
                    "non-integer counts (e.g. ambient-corrected) with check_counts=False."
                ) from None
        totals = None
        if pre_normalized == "A":
            if al.total_col is not None:
                totals = np.asarray(block[:, al.total_col].toarray(), dtype=np.float64).ravel()
            else:
                totals = np.asarray(data.obs[total_counts].to_numpy()[cells], dtype=np.float64)
            if not np.isfinite(totals).all() or (totals < 0).any():
                raise ValueError("pre_normalized='A': the total counts hold NaN, infinite or negative values.")
        if pre_normalized in ("T", "A"):
            mapped = block.data[al.colmap[block.indices] >= 0]
            check_prenormalized(np.asarray(mapped, dtype=np.float64), mode=pre_normalized, where=where)
        return make_tokens(block, al.colmap, pre_normalized=pre_normalized, tgthighres=tgthighres, totals=totals)

    # ---- batching ---------------------------------------------------------------------------------------------
    @staticmethod
    def _batches(lengths: np.ndarray, cells: np.ndarray, batch_size: int, max_tokens: int) -> Iterator[np.ndarray]:
        """Groups of cells (sorted by token count) with ≤ batch_size cells and ≤ max_tokens padded tokens."""
        order = cells[np.argsort(lengths[cells], kind="stable")]
        start = 0
        while start < len(order):
            stop = start + 1
            while (stop < len(order) and stop - start < batch_size
                   and (stop - start + 1) * lengths[order[stop]] <= max_tokens):
                stop += 1
            yield order[start:stop]
            start = stop

    @staticmethod
    def _padded(tok: Tokens, idx: np.ndarray, device: Any):
        import torch

        lens = tok.lengths[idx]
        n = int(lens.max())
        vals = np.zeros((len(idx), n), dtype=np.float32)
        pos = np.zeros((len(idx), n), dtype=np.int64)
        pad = np.ones((len(idx), n), dtype=bool)
        for j, i in enumerate(idx):
            p, v = tok.cell(int(i))
            vals[j, : len(p)] = v  # float64 -> float32 here, as the official `.float()`
            pos[j, : len(p)] = p
            pad[j, : len(p)] = False
        as_t = torch.from_numpy
        return as_t(vals).to(device), as_t(pos).to(device), as_t(pad).to(device), lens

    def _encode(self, net: MaeAutobin, tok: Tokens, idx: np.ndarray, dev: Any):
        vals, pos, pad, lens = self._padded(tok, idx, dev)
        h = net.encode(vals, pos, pad if pad.any() else None)
        return h, lens

    # ---- capabilities -----------------------------------------------------------------------------------------
    def embed(
        self,
        data: CellData,
        *,
        batch_size: int,
        device: str,
        pre_normalized: str = "F",
        tgthighres: str = "t4",
        pool: str = "all",
        gene_symbols: str | None = None,
        min_panel_fraction: float = 0.25,
        total_counts: str | None = None,
        check_counts: bool = True,
        precision: str = "float32",
        max_tokens: int | None = None,
    ) -> EmbeddingResult:
        """Cell embeddings (see the class docstring for the options)."""
        import torch

        from ..._torch import autocast, check_precision

        if pool not in POOLS:
            raise ValueError(f"pool={pool!r}; use 'all' (S, T, max, mean: 4 × dim) or 'max' (dim).")
        parse_tgthighres(tgthighres)
        precision = check_precision(precision)
        al = self._align(data, pre_normalized=pre_normalized, gene_symbols=gene_symbols,
                         min_panel_fraction=min_panel_fraction, total_counts=total_counts)
        net = self.net
        dev = self._place(net, device)
        D = net.dim
        out_dim = 4 * D if pool == "all" else D
        X = np.full((data.n_obs, out_dim), np.nan, dtype=np.float32)
        valid = np.zeros(data.n_obs, dtype=bool)
        mt = int(max_tokens or _DEFAULT_MAX_TOKENS)
        n_tokens = 0
        for sl, block in data.chunks():
            tok = self._chunk_tokens(data, block, sl, al, pre_normalized=pre_normalized, tgthighres=tgthighres,
                                     total_counts=total_counts, check_counts=check_counts)
            lengths = tok.lengths
            ok = tok.n_genes >= 1
            if pool == "all":
                ok &= lengths >= 3
            n_tokens += int(lengths[ok].sum())
            for idx in self._batches(lengths, np.flatnonzero(ok), int(batch_size), mt):
                with autocast(dev, precision):
                    h, lens = self._encode(net, tok, idx, dev)
                    h = h.float()
                    X[sl.start + idx] = _pool(h, lens, pool).cpu().numpy()
            valid[sl.start + np.flatnonzero(ok)] = True
        coverage = dict(al.coverage)
        coverage["mean_tokens_per_cell"] = n_tokens / max(int(valid.sum()), 1)
        params = {"checkpoint_key": self.checkpoint_key, "pre_normalized": pre_normalized, "tgthighres": tgthighres,
                  "pool": pool, "precision": precision, "gene_symbols": gene_symbols, "total_counts": total_counts,
                  "max_tokens": mt, "check_counts": bool(check_counts)}
        del torch
        return EmbeddingResult(X=X, valid=valid, coverage=coverage, params=params)

    def gene_states(
        self,
        data: CellData,
        *,
        cells: Any = None,
        genes: Sequence[str] | None = None,
        batch_size: int = 4,
        device: Any = None,
        pre_normalized: str = "F",
        tgthighres: str = "t4",
        gene_symbols: str | None = None,
        min_panel_fraction: float = 0.25,
        total_counts: str | None = None,
        check_counts: bool = True,
        precision: str = "float32",
        max_bytes: float = 4 * 2**30,
        _reduce: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Per-cell gene-level states ``[cells, genes, decoder_dim]`` (see :func:`gene_states`)."""
        from ..._torch import autocast, check_precision

        parse_tgthighres(tgthighres)
        precision = check_precision(precision)
        al = self._align(data, pre_normalized=pre_normalized, gene_symbols=gene_symbols,
                         min_panel_fraction=min_panel_fraction, total_counts=total_counts)
        rows = _cell_indices(cells, data.obs_names)
        if genes is None:
            gene_idx = np.arange(PANEL_SIZE)
            gene_names = list(self.panel)
        else:
            gene_names = [str(g) for g in ([genes] if isinstance(genes, str) else genes)]
            gene_idx = self.panel.get_indexer(gene_names)
            if (gene_idx < 0).any():
                bad = [g for g, i in zip(gene_names, gene_idx, strict=True) if i < 0]
                raise KeyError(f"{len(bad)} genes are not in scFoundation's panel: {bad[:10]}")
        net = self._gene_net()
        dev = self._place(net, device)
        Dd = net.decoder_dim
        if not _reduce:
            need = len(rows) * len(gene_idx) * Dd * 4
            if need > max_bytes:
                raise MemoryError(
                    f"The gene states of {len(rows)} cells × {len(gene_idx)} genes × {Dd} take "
                    f"{need / 2**30:.1f} GiB (limit max_bytes={max_bytes / 2**30:.1f} GiB): choose fewer cells= or "
                    "genes=, or raise max_bytes."
                )
            out = np.full((len(rows), len(gene_idx), Dd), np.nan, dtype=np.float32)
        else:
            out = np.zeros((len(gene_idx), Dd), dtype=np.float64)
        valid = np.zeros(len(rows), dtype=bool)
        gidx_t = None
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        for start in range(0, len(sorted_rows), max(int(data.chunk_size), 1)):
            chunk_pos = order[start:start + data.chunk_size]
            chunk_rows = rows[chunk_pos]
            block = data.take(chunk_rows)
            tok = self._chunk_tokens(data, block, chunk_rows, al, pre_normalized=pre_normalized,
                                     tgthighres=tgthighres, total_counts=total_counts, check_counts=check_counts)
            ok = np.flatnonzero(tok.n_genes >= 1)
            for idx in self._batches(tok.lengths, ok, max(int(batch_size), 1), _DEFAULT_MAX_TOKENS):
                import torch

                with autocast(dev, precision):
                    h, lens = self._encode(net, tok, idx, dev)
                    dense = np.zeros((len(idx), net.seq_len), dtype=np.float32)
                    enc_index = np.full((len(idx), h.shape[1]), -1, dtype=np.int64)
                    for j, i in enumerate(idx):
                        p, v = tok.cell(int(i))
                        nz = p < PANEL_SIZE
                        dense[j, p[nz]] = v[nz]
                        dense[j, PANEL_SIZE:PANEL_SIZE + 2] = tok.ts[i]  # T and S even when not tokens
                        enc_index[j, : len(p)] = p
                    states = net.decode(torch.from_numpy(dense).to(dev), h,
                                        torch.from_numpy(enc_index).to(dev))
                    if gidx_t is None:
                        gidx_t = torch.from_numpy(gene_idx).to(dev)
                    sel = states.index_select(1, gidx_t).float().cpu().numpy()
                if _reduce:
                    out += sel.sum(0)
                else:
                    out[chunk_pos[idx]] = sel
                valid[chunk_pos[idx]] = True
        return out, valid, gene_names

    def gene_embeddings(
        self,
        data: CellData,
        *,
        batch_size: int,
        device: str,
        cells: Any = None,
        **options: Any,
    ) -> GeneEmbeddingResult:
        """Gene embeddings: the decoder's gene-level states averaged over cells.

        For each gene of ``data`` that is in the panel, the mean over the chosen ``cells`` (default: all) of its
        per-cell gene state (the official ``output_type='gene'``, from the checkpoint's ``gene`` variant), so
        expressed and non-expressed cells both count. Genes outside the panel get NaN rows. Options as
        :meth:`embed` (``pre_normalized``, ``tgthighres``, ``gene_symbols``, ...), without ``pool``.
        """
        opts = {k: v for k, v in options.items() if k in {"pre_normalized", "tgthighres", "gene_symbols",
                                                            "min_panel_fraction", "total_counts", "precision"}}
        unknown = set(options) - set(opts)
        if unknown:
            raise TypeError(f"Unknown options for scFoundation gene embeddings: {sorted(unknown)}")
        al = self._align(data, pre_normalized=opts.get("pre_normalized", "F"),
                         gene_symbols=opts.get("gene_symbols"),
                         min_panel_fraction=opts.get("min_panel_fraction", 0.25),
                         total_counts=opts.get("total_counts"))
        matched = np.flatnonzero(al.colmap >= 0)
        genes = list(self.panel[al.colmap[matched]])
        sums, valid_cells, _ = self.gene_states(data, cells=cells, genes=genes, batch_size=batch_size,
                                                device=device, _reduce=True, **opts)
        n_cells = int(valid_cells.sum())
        X = np.full((data.n_vars, self._gene_net().decoder_dim), np.nan, dtype=np.float32)
        if n_cells:
            X[matched] = (sums / n_cells).astype(np.float32)
        valid = np.zeros(data.n_vars, dtype=bool)
        valid[matched] = n_cells > 0
        coverage = dict(al.coverage)
        coverage["n_cells_averaged"] = n_cells
        params = {"checkpoint_key": "gene" if "gene" in self._nets else self.checkpoint_key,
                  "aggregation": "mean over cells of the per-cell decoder gene states", **opts}
        return GeneEmbeddingResult(X=X, valid=valid, coverage=coverage, params=params)


def _pool(h: Any, lens: np.ndarray, pool: str):
    """Official pooling of padded encoder outputs ``h`` [B, n, D] with true lengths ``lens``."""
    import torch

    b, n, d = h.shape
    lens_t = torch.as_tensor(lens, device=h.device)
    ar = torch.arange(n, device=h.device)
    if pool == "max":
        masked = h.masked_fill((ar[None, :] >= lens_t[:, None])[..., None], float("-inf"))
        return masked.amax(dim=1)
    rows = torch.arange(b, device=h.device)
    s_tok = h[rows, lens_t - 1]  # the last token (S), then the one before it (T): the official blind rule
    t_tok = h[rows, lens_t - 2]
    genes = (ar[None, :] < (lens_t - 2)[:, None])[..., None]
    gmax = h.masked_fill(~genes, float("-inf")).amax(dim=1)
    gmean = h.masked_fill(~genes, 0.0).sum(dim=1) / (lens_t - 2)[:, None].to(h.dtype)
    return torch.cat([s_tok, t_tok, gmax, gmean], dim=1)


def _cell_indices(cells: Any, obs_names: pd.Index) -> np.ndarray:
    """Positions of the chosen cells: None (all), names, integer positions or a boolean mask."""
    n = len(obs_names)
    if cells is None:
        return np.arange(n)
    if isinstance(cells, (str, bytes)):
        cells = [cells]
    arr = np.asarray(cells)
    if arr.dtype == bool:
        if arr.shape != (n,):
            raise ValueError(f"A boolean cells= mask must have one entry per cell ({n}).")
        return np.flatnonzero(arr)
    if arr.dtype.kind in "iu":
        if arr.size and (arr.min() < -n or arr.max() >= n):
            raise IndexError(f"cells= positions out of range for {n} cells.")
        return np.where(arr < 0, arr + n, arr).astype(np.int64)
    idx = obs_names.get_indexer(arr.astype(str))
    if (idx < 0).any():
        raise KeyError(f"cells not in obs_names: {list(arr[idx < 0][:5])}")
    return idx.astype(np.int64)
