"""The scGPT adapter: gene matching, tokenisation, batched encoder runs, cell and gene embeddings."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from ... import logging as logg
from ..._settings import settings
from .._base import CellData, EmbeddingResult, FoundationModel, GeneEmbeddingResult
from ._checkpoint import SPECIAL_TOKENS, ScGPTConfig
from ._tokenize import N_BINS, RandomSource, Tokens, pad_batch, tokenize_block

if TYPE_CHECKING:
    import pandas as pd

    from .._registry import ModelEntry
    from ._network import ScGPTEncoder

__all__ = ["ScGPTModel"]

# var columns that commonly hold gene symbols when var_names are Ensembl IDs (10x, CELLxGENE, scanpy readers)
_SYMBOL_COLUMNS = ("gene_symbols", "gene_symbol", "feature_name", "gene_name", "gene_names", "symbol", "symbols")


class ScGPTModel(FoundationModel):
    """scGPT (Cui et al., Nature Methods 2024): cell embeddings from the ``<cls>`` token, gene-token embeddings.

    Reimplements the zero-shot path of the official ``scgpt.tasks.embed_data`` (``get_batch_cell_embeddings``
    with ``cell_embedding_mode="cls"``) in plain PyTorch:

    * genes are matched to the vocabulary by exact, case-sensitive symbol (``var_names``, or a ``var`` column);
      genes outside the vocabulary are left out, the others keep the AnnData's column order;
    * per cell, the non-zero genes only; their values are binned into 51 per-cell quantile bins with random
      tie-breaking; ``<cls>`` is prepended with the pad value (-2); cells with more than ``max_length - 1``
      genes are randomly sub-sampled (a random subset in random order); shorter cells are padded;
    * the encoder (gene embedding + LayerNorm, continuous value encoder, post-norm transformer layers with
      scaled-dot-product attention, padded keys masked) runs in eval mode; the ``<cls>`` output, L2-normalised,
      is the cell embedding.

    Differences from the official code, all deliberate:

    * Randomness (``rng=``): ``"official"`` (default) replays the official draws for ``seed`` — the numbers of
      a seeded official run with ``num_workers=0`` — and, because the draws are made per cell in obs order
      before batching, does not depend on ``batch_size`` or chunking. ``"per_cell"`` seeds each cell from
      ``(seed, obs name)``, so a cell's embedding does not depend on the other cells either (the official
      loader re-seeds each worker process, so its output depends on the CPU count and batch size:
      bowang-lab/scGPT#281).
    * Cells are run sorted by length (less padding); padded keys are masked, so this changes nothing beyond
      float rounding. The last layer computes only the ``<cls>`` query.
    * Input checks: raw counts are required by default (``check_counts``); the official code bins any values.
      Binning is rank-based per cell, so normalised or log-normalised data with the same zeros give nearly the
      same bins: pass ``check_counts=False`` to embed such data on purpose (negative or NaN values are always
      refused). A cell with no non-zero vocabulary gene gets a NaN row (the official code fails).
    * Weights are placed key by key and every unknown or missing key is an error (the official
      ``load_pretrained(strict=False)`` silently skips mismatches); the decoder heads are dropped explicitly.
    * The AnnData is never modified (the official code adds ``var['id_in_vocab']`` and subsets it).
    * On CUDA the official path runs under fp16 autocast; here precision is explicit (``precision=``),
      ``"float32"`` by default, ``"bfloat16"`` opt-in (also on CPU).
    """

    family = "scgpt"

    def __init__(
        self,
        *,
        network: ScGPTEncoder,
        vocab: list[str],
        config: ScGPTConfig,
        name: str | None = None,
        version: str = "",
        entry: ModelEntry | None = None,
        files: dict[str, str] | None = None,
        device: str | None = None,
        random_weights: bool = False,
        ignored_keys: tuple[str, ...] = (),
    ):
        super().__init__(name=name, version=version, entry=entry, files=files, device=device,
                         random_weights=random_weights)
        self.network = network.eval()
        self.config = config
        self.vocab = list(vocab)
        self.stoi = {t: i for i, t in enumerate(self.vocab)}
        if config.pad_token not in self.stoi or "<cls>" not in self.stoi:
            raise ValueError(f"The vocabulary lacks {config.pad_token!r} or '<cls>'.")
        self.pad_id = self.stoi[config.pad_token]
        self.cls_id = self.stoi["<cls>"]
        self.ignored_keys = tuple(ignored_keys)
        self._special = {self.stoi[t] for t in (*SPECIAL_TOKENS, config.pad_token) if t in self.stoi}

    # ---- genes --------------------------------------------------------------------------------------------
    def gene_names(self, var: pd.DataFrame, gene_col: str | None = None) -> tuple[np.ndarray, str]:
        """The symbols used to match ``var`` to the vocabulary, and where they came from.

        ``gene_col=None`` uses ``var_names``; when those are Ensembl IDs, a ``var`` column of symbols
        (``gene_symbols``, ``feature_name``, ``gene_name``, ...) is used if present.
        """
        from ...pp._genes import detect_id_type

        if gene_col is not None:
            if gene_col == "index":
                return np.asarray(var.index.astype(str)), "var_names"
            if gene_col not in var.columns:
                raise KeyError(f"gene_col={gene_col!r} is not a column of adata.var (columns: {list(var.columns)}); "
                               "pass None to use var_names.")
            return np.asarray(var[gene_col].astype(str)), f"var[{gene_col!r}]"
        names = np.asarray(var.index.astype(str))
        if detect_id_type(names) != "ensembl":
            return names, "var_names"
        for col in _SYMBOL_COLUMNS:
            if col in var.columns and detect_id_type(var[col].astype(str).tolist()) == "symbol":
                logg.info(f"scGPT: var_names are Ensembl IDs; matching genes by the symbols in var[{col!r}].")
                return np.asarray(var[col].astype(str)), f"var[{col!r}]"
        raise ValueError(
            "adata.var_names are Ensembl IDs, but scGPT's vocabulary is gene symbols and adata.var has no column "
            f"of symbols (looked for {', '.join(_SYMBOL_COLUMNS)}). Map the IDs first with "
            "`scfm.pp.map_gene_ids(adata, ...)`, or pass `gene_col=` naming the var column that holds symbols."
        )

    def vocab_ids(self, names: np.ndarray) -> np.ndarray:
        """Vocabulary id of each name (-1 where absent; special tokens never match a gene)."""
        ids = np.fromiter((self.stoi.get(n, -1) for n in names), dtype=np.int64, count=len(names))
        if self._special:
            ids[np.isin(ids, list(self._special))] = -1
        return ids

    def _match(self, data: CellData, gene_col: str | None, min_genes: int) -> tuple[np.ndarray, dict[str, Any]]:
        names, source = self.gene_names(data.var, gene_col)
        ids = self.vocab_ids(names)
        n_match = int((ids >= 0).sum())
        coverage = {
            "gene_names": source,
            "n_genes": int(len(ids)),
            "n_genes_in_vocab": n_match,
            "fraction_genes_in_vocab": float(n_match / max(len(ids), 1)),
            "vocab_size": len(self.vocab),
        }
        # a model with a small gene vocabulary cannot reach the default threshold: cap it at a tenth of the vocabulary
        n_vocab_genes = len(self.vocab) - len(self._special)
        min_genes = min(int(min_genes), max(1, -(-n_vocab_genes // 10)))
        if n_match < min_genes:
            from ...pp._genes import detect_species

            species = detect_species(names.tolist())
            hint = ""
            if species == "mouse":
                hint = (" The gene names look like mouse symbols; scGPT's vocabulary is human: convert them to "
                        "human orthologs first (scfm.pp ortholog conversion).")
            elif n_match == 0:
                hint = " Are the gene names symbols (e.g. 'CD3E')? Pass `gene_col=` to use a var column instead."
            raise ValueError(
                f"Only {n_match} of {len(ids)} genes ({source}) are in the scGPT vocabulary of {len(self.vocab)} "
                f"tokens; at least {min_genes} are required for a meaningful embedding (min_genes_in_vocab, capped at "
                f"a tenth of the model's gene vocabulary).{hint} "
                "Lower `min_genes_in_vocab=` to proceed anyway."
            )
        return ids, coverage

    # ---- tokens -------------------------------------------------------------------------------------------
    def _check_values(self, block: sp.csr_matrix, where: str, check_counts: bool) -> None:
        from ...pp._counts import validate_counts_block

        validate_counts_block(block, where=where, integers=check_counts)

    def _token_chunks(
        self, data: CellData, ids: np.ndarray, *, max_length: int, rng: RandomSource, check_counts: bool
    ) -> Iterator[tuple[slice, Tokens]]:
        cols = np.flatnonzero(ids >= 0)
        col_ids = ids[cols]
        where = "adata." + data.source
        for sl, block in data.chunks():
            self._check_values(block, where, check_counts)
            sub = sp.csr_matrix(block[:, cols])
            sub.sum_duplicates()
            sub.eliminate_zeros()
            names = np.asarray(data.obs_names[sl]) if rng.mode == "per_cell" else None
            yield sl, tokenize_block(sub, col_ids, max_length=max_length, cls_id=self.cls_id,
                                     pad_value=self.config.pad_value, rng=rng, names=names)

    def tokenize(
        self,
        data: CellData,
        *,
        max_length: int = 1200,
        seed: int | None = None,
        rng: str = "official",
        gene_col: str | None = None,
        min_genes_in_vocab: int = 500,
        check_counts: bool = True,
    ) -> Tokens:
        """The token sequences (genes, binned values) of all cells, exactly as the encoder receives them.

        For inspection and tests; :meth:`embed` streams the same tokens chunk by chunk.
        """
        ids, _ = self._match(data, gene_col, min_genes_in_vocab)
        source = RandomSource(settings.seed if seed is None else seed, rng)  # type: ignore[arg-type]
        parts = [t for _, t in self._token_chunks(data, ids, max_length=_check_length(max_length), rng=source,
                                                  check_counts=check_counts)]
        offsets = [np.zeros(1, dtype=np.int64)]
        base = 0
        for t in parts:
            offsets.append(t.offsets[1:] + base)
            base += int(t.offsets[-1])
        return Tokens(
            genes=np.concatenate([t.genes for t in parts]) if parts else np.empty(0, np.int64),
            values=np.concatenate([t.values for t in parts]) if parts else np.empty(0, np.float32),
            offsets=np.concatenate(offsets),
            n_genes=np.concatenate([t.n_genes for t in parts]) if parts else np.empty(0, np.int64),
        )

    # ---- capabilities -------------------------------------------------------------------------------------
    def embed(
        self,
        data: CellData,
        *,
        batch_size: int,
        device: str,
        max_length: int = 1200,
        seed: int | None = None,
        rng: str = "official",
        precision: str = "float32",
        gene_col: str | None = None,
        min_genes_in_vocab: int = 500,
        check_counts: bool = True,
    ) -> EmbeddingResult:
        """L2-normalised ``<cls>`` embeddings of all cells (``obsm['X_scgpt']``).

        Parameters
        ----------
        data
            The cells (read-only).
        batch_size
            Cells per forward pass.
        device
            Torch device.
        max_length
            Maximum tokens per cell including ``<cls>`` (official default 1200); cells with more non-zero
            vocabulary genes are randomly sub-sampled.
        seed
            Seed of the binning tie-breaks and the sub-sampling (default ``scfm.settings.seed``).
        rng
            ``"official"``: the official run's random stream (reproduces it; independent of batch size and
            chunking). ``"per_cell"``: each cell seeded by ``(seed, obs name)``, so its embedding is also
            independent of the other cells in the AnnData.
        precision
            ``"float32"`` (default) or ``"bfloat16"`` autocast (CPU or CUDA); ``"float16"`` on CUDA.
        gene_col
            ``adata.var`` column with gene symbols (default: ``var_names``, or a symbol column when
            ``var_names`` are Ensembl IDs).
        min_genes_in_vocab
            Error if fewer genes match the vocabulary. Capped at a tenth of the model's gene vocabulary (a model
            with a small vocabulary would otherwise refuse every dataset; the released 60,694-gene vocabulary is
            unaffected).
        check_counts
            Require raw integer counts (default). ``False`` accepts any non-negative values (binning is per-cell
            rank based, so normalised data give nearly the same bins).
        """
        import torch

        from ..._torch import autocast, check_precision

        precision = check_precision(precision)
        max_length = _check_length(max_length)
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        ids, coverage = self._match(data, gene_col, min_genes_in_vocab)
        seed = settings.seed if seed is None else seed
        source = RandomSource(seed, rng)  # type: ignore[arg-type]
        dev = torch.device(device)
        net = self.network.to(dev)
        d = self.config.embsize
        out = np.full((data.n_obs, d), np.nan, dtype=np.float32)
        valid = np.zeros(data.n_obs, dtype=bool)
        n_sampled = 0
        n_tokens = []
        from tqdm.auto import tqdm

        bar = tqdm(total=data.n_obs, desc="scGPT", unit="cell", disable=settings.verbosity < 2)
        for sl, tokens in self._token_chunks(data, ids, max_length=max_length, rng=source, check_counts=check_counts):
            lengths = tokens.lengths
            ok = lengths > 0
            n_sampled += int((tokens.n_genes + 1 > max_length).sum())
            n_tokens.append(lengths[ok])
            order = np.flatnonzero(ok)[np.argsort(-lengths[ok], kind="stable")]
            for b in range(0, len(order), batch_size):
                cells = order[b : b + batch_size]
                genes, values = pad_batch(tokens, cells, self.pad_id, self.config.pad_value)
                with autocast(dev, precision):
                    g = torch.from_numpy(genes).to(dev)
                    v = torch.from_numpy(values).to(dev)
                    cls = net(g, v, g.eq(self.pad_id))
                out[sl.start + cells] = cls.float().cpu().numpy()
                bar.update(len(cells))
            valid[sl.start + np.flatnonzero(ok)] = True
            bar.update(int((~ok).sum()))
        bar.close()
        out[valid] = out[valid] / np.linalg.norm(out[valid], axis=1, keepdims=True)
        all_tokens = np.concatenate(n_tokens) if n_tokens else np.empty(0)
        coverage.update({
            "n_cells_without_vocab_gene": int((~valid).sum()),
            "n_cells_subsampled": n_sampled,
            "median_tokens_per_cell": float(np.median(all_tokens)) if all_tokens.size else 0.0,
        })
        params = {
            "max_length": max_length,
            "seed": int(seed),
            "rng": rng,
            "precision": precision,
            "n_bins": N_BINS,
            "gene_col": gene_col,
            "min_genes_in_vocab": int(min_genes_in_vocab),
            "check_counts": bool(check_counts),
            "cell_embedding": "<cls> output, L2-normalised",
        }
        return EmbeddingResult(X=out, valid=valid, coverage=coverage, params=params)

    def gene_embeddings(
        self,
        data: CellData,
        *,
        batch_size: int,
        device: str,
        gene_col: str | None = None,
        enc_norm: bool = True,
    ) -> GeneEmbeddingResult:
        """Gene-token embeddings (``varm['scgpt_gene']``), NaN for genes outside the vocabulary.

        ``enc_norm=True`` (default) gives ``model.encoder(gene_ids)`` — the embedding row followed by the gene
        encoder's LayerNorm — which is what scGPT's GRN tutorial uses as gene embeddings. ``enc_norm=False``
        gives the raw rows of the embedding matrix. Context-free: the expression values are not used.
        """
        import torch

        from ..._torch import autocast

        ids, coverage = self._match(data, gene_col, 1)
        ok = ids >= 0
        dev = torch.device(device)
        net = self.network.to(dev)
        out = np.full((len(ids), self.config.embsize), np.nan, dtype=np.float32)
        with autocast(dev, "float32"):
            rows = net.encoder.embedding(torch.from_numpy(ids[ok]).to(dev))
            if enc_norm:
                rows = net.encoder.enc_norm(rows)
            out[ok] = rows.float().cpu().numpy()
        params = {"gene_col": gene_col, "enc_norm": bool(enc_norm),
                  "gene_embedding": "encoder(gene id)" if enc_norm else "encoder.embedding.weight rows"}
        return GeneEmbeddingResult(X=out, valid=ok, coverage=coverage, params=params)


def _check_length(max_length: Any) -> int:
    if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)) or max_length < 2:
        raise ValueError(f"max_length must be an integer >= 2 (tokens per cell including <cls>), got {max_length!r}.")
    return int(max_length)


def load_model(
    *,
    checkpoint: Path | None,
    resources: Path | None,
    entry: ModelEntry | None,
    device: str | None,
    random_weights: bool = False,
    **options: Any,
) -> ScGPTModel:
    """Load an official scGPT model folder (``args.json``, ``vocab.json``, ``best_model.pt``).

    Parameters
    ----------
    checkpoint
        The folder (or its ``best_model.pt``).
    resources
        Optional folder holding ``vocab.json`` when the checkpoint folder does not.
    entry
        The registry entry, when loaded by release name.
    device
        Device for the network (default ``scfm.settings.device``).
    random_weights
        Label the model as carrying untrained test weights (shown in its repr and provenance).
    """
    if options:
        raise TypeError(f"Unknown scGPT load option(s) {sorted(options)}. Embedding options (max_length, seed, rng, "
                        "precision, ...) go to scfm.tl.embed.")
    from ..._io.safe import sha256sum, torch_load
    from ..._torch import resolve_device
    from ._checkpoint import find_files, map_state_dict, read_args, read_vocab
    from ._network import ScGPTEncoder

    if checkpoint is None and entry is not None:
        raise FileNotFoundError(
            f"{entry.name} has no per-file download links (only the Google Drive folder {entry.source} is "
            "public): download args.json, vocab.json and best_model.pt from it into a folder and pass "
            f"`scfm.models.load({entry.name!r}, checkpoint=<folder>)` or `scfm.models.load('scgpt', checkpoint=...)`."
        )
    files = find_files(checkpoint, resources)
    config = read_args(files["args.json"])
    vocab = read_vocab(files["vocab.json"])
    state = torch_load(files["best_model.pt"], map_location="cpu")
    mapped, ignored = map_state_dict(state, config, len(vocab), source=str(files["best_model.pt"]))
    del state
    net = ScGPTEncoder(config, len(vocab))
    net.load_state_dict(mapped, strict=True)
    dev = resolve_device(device)
    net.to(dev).eval()
    if ignored:
        logg.debug(f"scGPT: dropped {len(ignored)} decoder-head tensors not used for embeddings.")
    return ScGPTModel(
        network=net,
        vocab=vocab,
        config=config,
        name=entry.name if entry is not None else "scgpt",
        entry=entry,
        files={name: sha256sum(p) for name, p in files.items()},
        device=str(dev),
        random_weights=random_weights,
        ignored_keys=tuple(ignored),
    )
