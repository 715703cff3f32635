"""The Geneformer adapter: loader, registry entries, cell and gene embeddings.

``scfm.models.load("geneformer", checkpoint=<model folder>, resources=<dictionary folder>)`` builds a
:class:`GeneformerModel`; the public releases of ``ctheodoris/Geneformer`` are registered by name. The generation
(V1/V2) follows from the dictionaries found (gc30M: V1; gc95M/gc104M: V2) and must match the checkpoint's
vocabulary size.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ... import logging as logg
from ..._io.safe import sha256sum
from .._base import CellData, EmbeddingResult, FoundationModel, GeneEmbeddingResult, PerturbationResult
from .._registry import ModelEntry, RemoteFile, register_family, register_model
from ._network import GeneformerNetwork, layer_to_quant, load_network
from ._tokenizer import (
    GeneformerDictionaries,
    GenePlan,
    TokenizedCells,
    _find_dictionary_sets,
    build_gene_plan,
    iter_tokenized,
    load_dictionaries,
)

__all__ = ["GeneformerModel", "load_geneformer"]

_POOLINGS = ("mean", "cls")


class GeneformerModel(FoundationModel):
    """Geneformer V1 / V2 (a BERT encoder over rank-value encoded transcriptomes).

    Cell embedding (:meth:`embed`), as the official ``EmbExtractor``:

    * ``emb_layer=-1`` (default) takes the output of the second-to-last encoder layer, ``0`` the last (E1).
    * ``pooling="mean"``: the mean over the cell's gene positions; with the V2 dictionary ``<cls>`` and ``<eos>``
      are excluded (E4). ``pooling="cls"`` (V2 only): the ``<cls>`` position (E5).
    * Cells are sorted by length and batched so padding is minimal; results come back in the user's order.
      Cells without any gene of the vocabulary get a NaN row (``valid`` False).
    * Only the work the result needs is done: layers above the chosen one are not run, with ``pooling="cls"``
      the last layer run computes only the ``<cls>`` query, and on CPU each cell of a padded batch attends over
      its own tokens only (the official code runs every layer on every padded position).

    Gene embedding (:meth:`gene_embeddings`), as the official ``emb_mode='gene'`` with ``summary_stat=None``:
    for each gene, its hidden state (same layer) at its position in each cell that expresses it (among the
    cell's top ``input size`` genes), averaged over those cells. Genes never in any cell's input get NaN.
    Genes collapsed to one Ensembl ID share its embedding.

    Differences from the official code (defects fixed; numbers are otherwise identical to float32 round-off):
    see :mod:`scfm.models.geneformer._tokenizer` for the tokenizer (deterministic tie order, explicit zeros,
    empty cells). The encoder runs only the layers needed for ``emb_layer`` (the official code runs all of
    them and the MLM head, whose outputs it discards); any ``emb_layer`` in ``-num_layers..0`` is accepted
    (official: -1 or 0). No CUDA device is hard-coded.
    """

    family = "geneformer"

    def __init__(
        self,
        network: GeneformerNetwork,
        dictionaries: GeneformerDictionaries,
        *,
        name: str | None = None,
        version: str = "",
        entry: ModelEntry | None = None,
        files: dict[str, str] | None = None,
        device: str | None = None,
        random_weights: bool = False,
    ):
        super().__init__(name=name, version=version or dictionaries.version, entry=entry, files=files,
                         device=device, random_weights=random_weights)
        self.network = network
        self.dictionaries = dictionaries
        cfg = network.config
        if cfg.vocab_size != dictionaries.vocab_size:
            raise ValueError(
                f"The checkpoint's vocabulary has {cfg.vocab_size} tokens but the {dictionaries.version} token "
                f"dictionary has {dictionaries.vocab_size}: the checkpoint and the dictionaries do not belong "
                "together (V1 models use the gc30M dictionaries, V2 models the gc95M/gc104M ones)."
            )
        self.model_input_size = min(dictionaries.model_input_size, cfg.max_position_embeddings)

    @property
    def generation(self) -> str:
        """``"V1"`` or ``"V2"``."""
        return self.dictionaries.version

    @property
    def embedding_dim(self) -> int:
        return self.network.hidden_size

    # ---- helpers -------------------------------------------------------------------------------------------
    def gene_plan(self, data: CellData, *, gene_id_key: str | None = "ensembl_id") -> GenePlan:
        """Map the genes of ``data`` to tokens; errors for mouse genes or no known gene."""
        plan = build_gene_plan(data.var, self.dictionaries, gene_id_key=gene_id_key)
        if plan.n_slots == 0:
            raise ValueError(
                f"None of the {data.n_vars} genes is in the Geneformer {self.generation} vocabulary "
                f"({plan.coverage['gene_ids_from']}). Pass Ensembl IDs in var['ensembl_id'] (or as var_names), or "
                "human gene symbols."
            )
        return plan

    def tokenize(
        self,
        data: CellData | Any,
        *,
        gene_id_key: str | None = "ensembl_id",
        n_counts_key: str | None = "n_counts",
        chunk_size: int | None = None,
    ) -> TokenizedCells:
        """Rank-value encode all cells of ``data`` (AnnData or CellData) for this model, in the data's order."""
        from ._tokenizer import _as_celldata

        cd = _as_celldata(data)
        plan = self.gene_plan(cd, gene_id_key=gene_id_key)
        parts = [t for _, t, _ in iter_tokenized(cd, plan, self.dictionaries, n_counts_key=n_counts_key,
                                                 model_input_size=self.model_input_size, chunk_size=chunk_size)]
        return TokenizedCells.concat(parts)

    def _device(self, device: Any) -> Any:
        from ..._torch import resolve_device

        dev = resolve_device(device if device is not None else self.device)
        if next(self.network.parameters()).device != dev:
            self.network.to(dev)
        return dev

    def _batches(self, toks: TokenizedCells, batch_size: int) -> Iterator[np.ndarray]:
        """Indices of non-empty cells, longest first (stable), in batches: little padding."""
        lens = toks.lengths
        order = np.argsort(-lens, kind="stable")
        order = order[lens[order] > 0]
        for s in range(0, len(order), batch_size):
            yield order[s : s + batch_size]

    def _forward(self, toks: TokenizedCells, idx: np.ndarray, layer: int, dev: Any, first_only: bool = False):
        import torch

        lens = toks.lengths[idx]
        L = int(lens.max())
        ids = np.full((len(idx), L), self.dictionaries.pad_id, dtype=np.int64)
        for r, i in enumerate(idx):
            ids[r, : lens[r]] = toks.cell(int(i))
        h = self.network.hidden_states(torch.from_numpy(ids).to(dev), torch.from_numpy(lens).to(dev), layer=layer,
                                       first_only=first_only)
        return h.float(), lens

    def _hidden_state_batches(
        self,
        data: CellData,
        plan: GenePlan,
        *,
        layer: int,
        dev: Any,
        precision: str,
        batch_size: int,
        n_counts_key: str | None,
        chunk_size: int | None,
        progress: bool,
        desc: str,
        stats: _Stats,
        first_only: bool = False,
    ) -> Iterator[tuple[slice, TokenizedCells, np.ndarray, Any, np.ndarray]]:
        """Tokenize chunk by chunk and run the network batch by batch (longest cells first).

        Yields ``(chunk slice, chunk tokens, cell indices within the chunk, hidden states, lengths)``; token
        statistics go to ``stats``. ``first_only``: hidden states of position 0 only (``[B, 1, H]``).
        """
        from tqdm.auto import tqdm

        from ..._torch import autocast

        with tqdm(total=data.n_obs, desc=desc, unit="cells", disable=not progress) as bar:
            for sl, toks, n_ranked in iter_tokenized(
                data, plan, self.dictionaries, n_counts_key=n_counts_key, model_input_size=self.model_input_size,
                chunk_size=chunk_size,
            ):
                stats.add(toks, n_ranked)
                with autocast(dev, precision):
                    for idx in self._batches(toks, batch_size):
                        h, lens = self._forward(toks, idx, layer, dev, first_only)
                        yield sl, toks, idx, h, lens
                bar.update(sl.stop - sl.start)

    def _check_options(self, pooling: str, emb_layer: int) -> int:
        if pooling not in _POOLINGS:
            raise ValueError(f"pooling={pooling!r}; use 'mean' or 'cls'.")
        if pooling == "cls" and self.dictionaries.cls_id is None:
            raise ValueError("pooling='cls' needs a V2 model (its cells start with <cls>); V1 models have no "
                             "<cls> token: use pooling='mean'.")
        return layer_to_quant(self.network.num_layers, emb_layer)

    def _pool_span(self, lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """First position and number of positions of the mean (E4: decided by the dictionary)."""
        if self.dictionaries.cls_id is not None:
            drop_end = 1 if self.dictionaries.eos_id is not None else 0
            return np.ones_like(lens), lens - 1 - drop_end
        return np.zeros_like(lens), lens

    # ---- capabilities --------------------------------------------------------------------------------------
    def embed(
        self,
        data: CellData,
        *,
        batch_size: int = 10,
        device: str | None = None,
        pooling: str = "mean",
        emb_layer: int = -1,
        precision: str = "float32",
        gene_id_key: str | None = "ensembl_id",
        n_counts_key: str | None = "n_counts",
        chunk_size: int | None = None,
        progress: bool = False,
    ) -> EmbeddingResult:
        """Cell embeddings of all cells of ``data``.

        Parameters
        ----------
        data
            Read-only view of the AnnData (raw counts).
        batch_size
            Cells per forward pass (the official default is 10... 100 depending on the function).
        device
            Torch device.
        pooling
            ``"mean"`` (mean over gene positions) or ``"cls"`` (V2: the ``<cls>`` position).
        emb_layer
            ``-1``: second-to-last layer (official default), ``0``: last layer.
        precision
            ``"float32"`` or ``"bfloat16"`` (autocast, also on CPU; results differ by ~1e-2 relative).
        gene_id_key
            ``var`` column with Ensembl IDs (absent: ``var_names``, mapped from symbols if needed).
        n_counts_key
            ``obs`` column with total counts (absent: row sums).
        chunk_size
            Cells tokenized and embedded at a time (default: the ``CellData`` chunk size).
        progress
            Show a progress bar.
        """
        from ..._torch import check_precision

        precision = check_precision(precision)
        layer = self._check_options(pooling, emb_layer)
        batch_size = int(batch_size)
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1.")
        plan = self.gene_plan(data, gene_id_key=gene_id_key)
        dev = self._device(device)
        X = np.full((data.n_obs, self.embedding_dim), np.nan, dtype=np.float32)
        valid = np.zeros(data.n_obs, dtype=bool)
        stats = _Stats(self.model_input_size, bool(self.dictionaries.special_token))
        for sl, _, idx, h, lens in self._hidden_state_batches(
            data, plan, layer=layer, dev=dev, precision=precision, batch_size=batch_size, n_counts_key=n_counts_key,
            chunk_size=chunk_size, progress=progress, desc="geneformer embed", stats=stats,
            first_only=pooling == "cls",
        ):
            if pooling == "cls":
                emb = h[:, 0, :]
            else:
                start, count = self._pool_span(lens)
                emb = _masked_mean(h, start, count)
            X[sl.start + idx] = emb.cpu().numpy()
            valid[sl.start + idx] = True
        coverage = {**plan.coverage, **stats.summary()}
        params = {"pooling": pooling, "emb_layer": int(emb_layer), "hidden_state_index": layer,
                  "precision": precision, "model_input_size": self.model_input_size, "generation": self.generation}
        if (~valid).any():
            coverage["n_cells_without_known_gene"] = int((~valid).sum())
        return EmbeddingResult(X=X, valid=valid, coverage=coverage, params=params)

    def gene_embeddings(
        self,
        data: CellData,
        *,
        batch_size: int = 10,
        device: str | None = None,
        emb_layer: int = -1,
        precision: str = "float32",
        gene_id_key: str | None = "ensembl_id",
        n_counts_key: str | None = "n_counts",
        chunk_size: int | None = None,
        progress: bool = False,
    ) -> GeneEmbeddingResult:
        """Context-averaged gene embeddings aligned to ``data.var_names``.

        For each gene: the mean, over the cells whose model input contains it, of its hidden state (layer
        chosen by ``emb_layer``) at its position in that cell, as the official ``emb_mode='gene'``
        (``label_gene_embs``). Sums are accumulated in float64. Genes never in any cell's input get NaN
        (``valid`` False). Other parameters as in :meth:`embed`.
        """
        import torch

        from ..._torch import check_precision

        precision = check_precision(precision)
        layer = layer_to_quant(self.network.num_layers, emb_layer)
        plan = self.gene_plan(data, gene_id_key=gene_id_key)
        dev = self._device(device)
        V = self.dictionaries.vocab_size
        H = self.embedding_dim
        sums = torch.zeros((V, H), dtype=torch.float64, device=dev)
        counts = torch.zeros(V, dtype=torch.float64, device=dev)
        stats = _Stats(self.model_input_size, bool(self.dictionaries.special_token))
        for _, toks, idx, h, lens in self._hidden_state_batches(
            data, plan, layer=layer, dev=dev, precision=precision, batch_size=int(batch_size),
            n_counts_key=n_counts_key, chunk_size=chunk_size, progress=progress, desc="geneformer gene embeddings",
            stats=stats,
        ):
            L = h.shape[1]
            inside = torch.arange(L, device=dev)[None, :] < torch.as_tensor(lens, device=dev)[:, None]
            ids = torch.from_numpy(np.concatenate([toks.cell(int(i)) for i in idx]).astype(np.int64)).to(dev)
            sums.index_add_(0, ids, h[inside].double())
            counts.index_add_(0, ids, torch.ones_like(ids, dtype=torch.float64))
        var_token = plan.var_token
        X = np.full((data.n_vars, H), np.nan, dtype=np.float32)
        c = counts.cpu().numpy()
        s = sums.cpu().numpy()
        ok = var_token >= 0
        ok[ok] = c[var_token[ok]] > 0
        X[ok] = (s[var_token[ok]] / c[var_token[ok], None]).astype(np.float32)
        coverage = {**plan.coverage, **stats.summary(), "n_genes_embedded": int(ok.sum())}
        params = {"emb_layer": int(emb_layer), "hidden_state_index": layer, "precision": precision,
                  "model_input_size": self.model_input_size, "generation": self.generation,
                  "averaging": "mean over cells whose input contains the gene of its per-position hidden state"}
        return GeneEmbeddingResult(X=X, valid=ok, coverage=coverage, params=params)

    def perturb(self, data: CellData, genes: Any, *, batch_size: int = 16, device: str | None = None,
                **options: Any) -> PerturbationResult:
        """In-silico perturbation as the official ``InSilicoPerturber``; see :func:`._perturb.perturb`."""
        from ._perturb import perturb

        return perturb(self, data, genes, batch_size=batch_size, device=device, **options)


def _masked_mean(h: Any, start: np.ndarray, count: np.ndarray) -> Any:
    """Mean of ``h[b, start[b] : start[b] + count[b]]`` per row (float32, masked sum / count)."""
    import torch

    dev = h.device
    pos = torch.arange(h.shape[1], device=dev)[None, :]
    st = torch.as_tensor(start, device=dev)[:, None]
    cn = torch.as_tensor(count, device=dev)
    m = ((pos >= st) & (pos < st + cn[:, None])).to(h.dtype)
    return (h * m[..., None]).sum(1) / cn[:, None].to(h.dtype)


class _Stats:
    def __init__(self, input_size: int, special: bool):
        self.max_genes = input_size - 2 if special else input_size
        self.n_cells = 0
        self.n_truncated = 0
        self.n_tokens = 0

    def add(self, toks: TokenizedCells, n_ranked: np.ndarray) -> None:
        self.n_cells += toks.n_cells
        self.n_truncated += int((n_ranked > self.max_genes).sum())
        self.n_tokens += int(toks.lengths.sum())

    def summary(self) -> dict[str, Any]:
        return {"n_cells_truncated": self.n_truncated,
                "mean_tokens_per_cell": float(self.n_tokens / self.n_cells) if self.n_cells else 0.0}


# ----------------------------------------------------------------------------------------------------------------
# loader
# ----------------------------------------------------------------------------------------------------------------
def _find_resources(checkpoint: Path) -> Path | None:
    """The dictionaries beside a model folder (Hugging Face layout: ``<repo>/geneformer/``), if any."""
    for cand in (checkpoint, checkpoint.parent / "geneformer", checkpoint.parent):
        if cand.is_dir() and _find_dictionary_sets(cand, recursive=False):
            return cand
    return None


@register_family("geneformer")
def load_geneformer(
    *,
    checkpoint: Path | None,
    resources: Path | None,
    entry: ModelEntry | None = None,
    device: str | None = None,
    version: str | None = None,
    random_weights: bool = False,
    hash_files: bool = True,
    **options: Any,
) -> GeneformerModel:
    """Load a Geneformer model from its Hugging Face folder and the dictionaries.

    Parameters
    ----------
    checkpoint
        Model folder with ``config.json`` and ``model.safetensors`` or ``pytorch_model.bin``.
    resources
        Folder with the dictionaries (``*_gc30M.pkl`` for V1, ``*_gc95M.pkl`` / ``*_gc104M.pkl`` for V2). Default:
        looked up beside the checkpoint (the Hugging Face repository layout).
    entry
        Registry entry (set by :func:`scfm.models.load` for a release name).
    device
        Torch device.
    version
        ``"V1"``/``"V2"`` when the resources folder holds both sets (default: the set whose vocabulary matches
        the checkpoint).
    random_weights
        Mark the model as carrying untrained test weights (shown in ``repr`` and provenance).
    hash_files
        Record the sha256 of each file read in the provenance.
    """
    from ..._torch import resolve_device

    if options:
        raise TypeError(f"Unknown option(s) for the geneformer loader: {', '.join(options)}.")
    if checkpoint is None:
        raise ValueError("Geneformer needs `checkpoint=<model folder with config.json and model.safetensors or "
                         "pytorch_model.bin>` (or a release name from scfm.models.list('geneformer')).")
    checkpoint = Path(checkpoint)
    if resources is None:
        resources = _find_resources(checkpoint if checkpoint.is_dir() else checkpoint.parent)
        if resources is None:
            raise ValueError("Pass `resources=<folder with the Geneformer dictionaries>` (token_dictionary_gc*.pkl "
                             "and the median / mapping dictionaries).")
    dev = resolve_device(device)
    net, net_files = load_network(checkpoint, device=dev)
    dicts = load_dictionaries(resources, version=version, vocab_size=net.config.vocab_size)
    files: dict[str, str] = {}
    all_files = {**net_files, **{p.name: p for p in dicts.files.values()}}
    for name, path in all_files.items():
        files[name] = sha256sum(path) if hash_files else str(path)
    model = GeneformerModel(net, dicts, entry=entry, files=files, device=str(dev), random_weights=random_weights,
                            name=None if entry is not None else f"geneformer-{dicts.version}")
    logg.debug(f"loaded {model!r}: {net.num_layers} layers, hidden {net.hidden_size}, vocab {dicts.vocab_size}")
    return model


# ----------------------------------------------------------------------------------------------------------------
# registry: the public releases on Hugging Face ctheodoris/Geneformer
# ----------------------------------------------------------------------------------------------------------------
_HF = "ctheodoris/Geneformer"
_LICENSE = "Apache-2.0"
_CITE_V1 = ("Theodoris CV et al. Transfer learning enables predictions in network biology. Nature 618, 616-624 "
            "(2023). doi:10.1038/s41586-023-06139-9")
_CITE_V2 = ("Chen H et al. Quantized multi-task learning for context-specific representations of gene network "
            "dynamics. bioRxiv (2024). doi:10.1101/2024.08.16.608180; " + _CITE_V1)

# sha256 and size of the dictionaries (byte-identical to the files in the hub repository).
_V1_DICTS = {
    "token_dictionary_gc30M.pkl": ("ab9dc40973fa5224d77b793e2fd114cacf3d08423ed9c4c49caf0ba9c7f218f1", 788424),
    "gene_median_dictionary_gc30M.pkl": ("b3b589bb5ec75040d05fc44dd6bf0184cf87f3c362cf158d196a6ed3b7fe5f39", 940965),
    "ensembl_mapping_dict_gc30M.pkl": ("eac0fb0b3007267871b6305ac0003ceba19d4f28d85686cb9067ecf142787869", 584125),
    "gene_name_id_dict_gc30M.pkl": ("55e67962e79c0039a6c32d43c5c99f38e51964bbcfa32f736150ee1e285c438c", 1117117),
}
# V2: upstream names them *_gc104M.pkl (renamed from *_gc95M.pkl, same bytes); the mirror keeps the gc95M names.
_V2_DICTS = {
    "token_dictionary": ("67c445f4385127adfc48dcc072320cd65d6822829bf27dd38070e6e787bc597f", 425590),
    "gene_median_dictionary": ("a51c53f6a771d64508dfaf61529df70e394c53bd20856926117ae5d641a24bf5", 1512661),
    "ensembl_mapping_dict": ("0819bcbd869cfa14279449b037eb9ed1d09a91310e77bd1a19d927465030e95c", 3957652),
    "gene_name_id_dict": ("fabfa0c2f49c598c59ae432a32c3499a5908c033756c663b5e0cddf58deea8e1", 1660882),
}


def _v1_resources() -> tuple[RemoteFile, ...]:
    return tuple(
        RemoteFile(filename=name, hf_repo=_HF, hf_filename=f"geneformer/gene_dictionaries_30m/{name}", sha256=sha,
                   size=size, mirror_path=f"resources/geneformer/v1/{name}")
        for name, (sha, size) in _V1_DICTS.items()
    )


def _v2_resources() -> tuple[RemoteFile, ...]:
    return tuple(
        RemoteFile(filename=f"{stem}_gc104M.pkl", hf_repo=_HF, hf_filename=f"geneformer/{stem}_gc104M.pkl", sha256=sha,
                   size=size, mirror_path=f"resources/geneformer/v2/{stem}_gc95M.pkl")
        for stem, (sha, size) in _V2_DICTS.items()
    )


def _checkpoint(folder: str, weights: tuple[str, ...] = ("model.safetensors",)) -> tuple[RemoteFile, ...]:
    names = ("config.json", *weights)
    return tuple(RemoteFile(filename=n, hf_repo=_HF, hf_filename=f"{folder}/{n}") for n in names)


_RELEASES = (
    # registry name, folder in the hub repository, version, parameters, hidden size, input length, description
    ("geneformer-v1-10m", "Geneformer-V1-10M", "V1", 10_000_000, 256, 2048,
     "V1: 6 layers, 256 dims, pretrained on Genecorpus-30M."),
    ("geneformer-v2-104m", "Geneformer-V2-104M", "V2", 104_000_000, 768, 4096,
     "V2: 12 layers, 768 dims, pretrained on Genecorpus-104M."),
    ("geneformer-v2-316m", "Geneformer-V2-316M", "V2", 316_000_000, 1152, 4096,
     "V2: 18 layers, 1152 dims, pretrained on Genecorpus-104M."),
    ("geneformer-v2-104m-clcancer", "Geneformer-V2-104M_CLcancer", "V2", 104_000_000, 768, 4096,
     "V2-104M with continual learning on ~14M cancer cells."),
)

for _name, _folder, _ver, _nparam, _dim, _inp, _desc in _RELEASES:
    register_model(
        ModelEntry(
            name=_name,
            family="geneformer",
            version=_ver,
            n_parameters=_nparam,
            embedding_dim=_dim,
            gene_id_scheme="ensembl",
            species=("human",),
            input_length=_inp,
            license=_LICENSE,
            citation=_CITE_V1 if _ver == "V1" else _CITE_V2,
            source=f"https://huggingface.co/{_HF}/tree/main/{_folder}",
            checkpoint=_checkpoint(_folder),
            resources=_v1_resources() if _ver == "V1" else _v2_resources(),
            description=_desc + " Layer count / dims as on the model card; the loader reads config.json.",
        )
    )
