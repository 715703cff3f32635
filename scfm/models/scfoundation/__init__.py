"""scFoundation (Hao et al. 2024): loader, registry entries, cell embeddings and gene-level output.

* ``m = scfm.models.load("scfoundation", checkpoint=<models.ckpt or its folder>, checkpoint_key="cell")``
  loads the official checkpoint (``"rde"``: the read-depth-enhancement variant, ``"gene"``: the variant the
  official script uses for gene-level output). ``scfm.models.load("scfoundation-100m")`` does the same from
  the cache / mirror (the released weights have to be downloaded by hand, see the entry).
* ``scfm.tl.embed(adata, model=m, pre_normalized="F", tgthighres="t4", pool="all")`` →
  ``adata.obsm['X_scfoundation']`` (see :class:`ScFoundation` for every option).
* :func:`gene_states` → per-cell gene-level states ``[cells, genes, 512]`` (official ``output_type='gene'``)
  for chosen cells and genes; ``scfm.tl.gene_embeddings(adata, model=m)`` → their mean over cells in ``varm``.

The data are aligned to the 19,264-gene panel inside scfm (by symbol, per chunk, sparse); see :mod:`._panel`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .._registry import ModelEntry, RemoteFile, register_family, register_model
from ._model import ScFoundation
from ._panel import PANEL_FILE, PANEL_SIZE, find_panel, read_panel

__all__ = ["ScFoundation", "load_scfoundation", "gene_states", "random_model", "RELEASED_CONFIG", "PANEL_FILE",
           "PANEL_SIZE"]

_SHAREPOINT = ("https://hopebio2020.sharepoint.com/:f:/s/PublicSharedfiles/"
               "EmUQnvZMETlDvoCaBduCNeIBQArcOrd8T8iEpiGofFZ9CQ?e=3SpPZU")
_CITATION = (
    "Hao M, Gong J, Zeng X, Liu C, Guo Y, Cheng X, Wang T, Ma J, Zhang X, Song L. Large-scale foundation model "
    "on single-cell transcriptomics. Nature Methods 21, 1481-1491 (2024). doi:10.1038/s41592-024-02305-7"
)
_LICENSE = ("scFoundation Model License (weights: non-commercial research use only); code Apache-2.0 "
            "(github.com/biomap-research/scFoundation MODEL_LICENSE)")
_CHECKPOINT = RemoteFile(
    # The official README (model/README.md, model/models/download.txt, commit d09626a) points to a public
    # SharePoint *folder* that holds `models.ckpt`; it has no direct, scriptable file URL, so no `url` here: the
    # download module then asks for a manual download into the cache (or `checkpoint=<path>`), and the sha256
    # seen at first use is recorded and checked later.
    filename="models.ckpt",
    mirror_path="models/scfoundation-100m/models.ckpt",
)
_DESCRIPTION = (
    "scFoundation 100M (xTrimoGene MAE-autobin: 12-layer 768-wide transformer encoder over the non-zero genes, "
    "6-layer 512-wide Performer decoder), pre-trained on ~50M human cells; input = 19,264-gene panel + T/S "
    "tokens. The weights are on a public SharePoint folder (no application needed, but no direct link): "
    "download models.ckpt by hand from " + _SHAREPOINT + " and load it with "
    "scfm.models.load('scfoundation', checkpoint=<path>). The file holds three variants: 'cell' (default, official "
    "--version ce), 'rde' (read-depth enhancement: `scfm.models.load('scfoundation-100m', checkpoint_key='rde')`) "
    "and 'gene' (used for gene-level output)."
)

register_model(
    ModelEntry(
        name="scfoundation-100m",
        family="scfoundation",
        version="01B-resolution",
        n_parameters=100_000_000,
        embedding_dim=3072,
        gene_id_scheme="symbol (HGNC, 19,264-gene panel)",
        species=("human",),
        input_length=PANEL_SIZE,
        license=_LICENSE,
        citation=_CITATION,
        source="https://github.com/biomap-research/scFoundation (weights: " + _SHAREPOINT + ")",
        gated=False,
        checkpoint=(_CHECKPOINT,),
        resources=(PANEL_FILE,),
        load_options={"checkpoint_key": "cell"},
        description=_DESCRIPTION,
    )
)

RELEASED_CONFIG: dict[str, Any] = {
    "model": "mae_autobin",
    "mask_gene_name": False,
    "gene_num": PANEL_SIZE + 2,
    "seq_len": PANEL_SIZE + 2,
    "encoder": {"hidden_dim": 768, "depth": 12, "heads": 12, "dim_head": 64, "seq_len": PANEL_SIZE + 2,
                "module_type": "transformer", "norm_first": False},
    "decoder": {"hidden_dim": 512, "depth": 6, "heads": 8, "dim_head": 64, "seq_len": PANEL_SIZE + 2,
                "module_type": "performer", "norm_first": False},
    "n_class": 104,
    "pad_token_id": 103,
    "mask_token_id": 102,
    "bin_num": 100,
    "bin_alpha": 1.0,
    "rawcount": True,
}
"""Architecture of the released 100M checkpoint (from its printed config), for benchmarks with random weights."""


@register_family("scfoundation")
def load_scfoundation(
    *,
    checkpoint: Path | None,
    resources: Path | None,
    entry: ModelEntry | None,
    device: str | None,
    checkpoint_key: str | None = None,
    **options: Any,
) -> ScFoundation:
    """Load the official ``models.ckpt``.

    Parameters
    ----------
    checkpoint
        ``models.ckpt`` or the folder that holds it (also ``<folder>/models/models.ckpt``, the official layout).
    resources
        Folder with ``OS_scRNA_gene_index.19264.tsv``; default: beside the checkpoint, the mirror, or the cache.
    entry
        Registry entry (provenance), if loaded by release name.
    device
        Device for the network.
    checkpoint_key
        ``'cell'`` (default; official ``--version ce``), ``'rde'`` or ``'gene'``. Gene-level output always uses
        the ``'gene'`` variant (read from the same file when needed), as the official script does.
    """
    from ..._io.safe import sha256sum
    from ._checkpoint import VARIANTS, read_variant, resolve_checkpoint

    if options:
        raise TypeError(f"Unknown options for the scFoundation loader: {sorted(options)}")
    if checkpoint is None:
        raise ValueError(
            "scFoundation needs its checkpoint: pass checkpoint=<models.ckpt or its folder>. The released weights "
            f"are downloaded by hand from {_SHAREPOINT}."
        )
    key = checkpoint_key or "cell"
    if key not in VARIANTS:
        raise ValueError(f"checkpoint_key={checkpoint_key!r}; use one of {VARIANTS}.")
    path = resolve_checkpoint(checkpoint)
    net, used = read_variant(path, key)
    panel_path = find_panel(resources, path.parent, path.parent.parent)
    panel = read_panel(panel_path)
    files = {path.name: sha256sum(path), panel_path.name: sha256sum(panel_path)}
    # a single-variant file (official --version noversion) has no separate 'gene' variant to read later
    return ScFoundation(net, panel=panel, checkpoint_key=key, checkpoint_path=None if used == "single" else path,
                        entry=entry, files=files, device=device)


def gene_states(
    adata: Any,
    model: ScFoundation | str,
    *,
    cells: Any = None,
    genes: Any = None,
    layer: str | None = None,
    use_raw: bool = False,
    pre_normalized: str = "F",
    tgthighres: str = "t4",
    batch_size: int = 4,
    device: str | None = None,
    gene_symbols: str | None = None,
    total_counts: str | None = None,
    min_panel_fraction: float = 0.25,
    precision: str = "float32",
    max_bytes: float = 4 * 2**30,
) -> np.ndarray:
    """Per-cell gene-level states of scFoundation (the official ``output_type='gene'``).

    For each chosen cell, the encoder reads its non-zero panel genes (+ T, S); the decoder then produces a state
    for every panel position, expressed or not. The ``'gene'`` checkpoint variant is used, as in the official
    script. Nothing is written to ``adata``.

    Parameters
    ----------
    adata
        Cells × genes (counts for ``pre_normalized='F'``), in memory or backed.
    model
        A model from ``scfm.models.load("scfoundation", ...)`` or a registry name.
    cells
        Cells to compute: ``obs_names``, integer positions or a boolean mask (default: all cells).
    genes
        Panel gene symbols to return, in the order wanted (default: all 19,264 panel genes, panel order).
    layer, use_raw
        Where to read the data (default ``adata.X``).
    pre_normalized, tgthighres, gene_symbols, total_counts, min_panel_fraction, precision
        As for the cell embedding (:class:`ScFoundation`).
    batch_size
        Cells per decoder pass (each takes ~0.5 GB at the released size).
    device
        Torch device (default: the model's, else ``scfm.settings.device``).
    max_bytes
        Refuse outputs larger than this (default 4 GiB).

    Returns
    -------
    float32 array ``[n_cells, n_genes, decoder_dim]`` (512 for the released model) in the order of ``cells`` and
    ``genes``. Cells with no panel counts get NaN.
    """
    from ..._settings import settings
    from .. import CellData, resolve

    m = resolve(model, device=device)
    if not isinstance(m, ScFoundation):
        raise TypeError(f"gene_states needs a scFoundation model, got {type(m).__name__}.")
    data = CellData(adata, layer=layer, use_raw=use_raw, chunk_size=settings.chunk_size)
    out, _, _ = m.gene_states(
        data, cells=cells, genes=genes, batch_size=batch_size,
        device=device if device is not None else (m.device or settings.device), pre_normalized=pre_normalized,
        tgthighres=tgthighres, gene_symbols=gene_symbols, total_counts=total_counts,
        min_panel_fraction=min_panel_fraction, precision=precision, max_bytes=max_bytes,
    )
    return out


def random_model(*, config: dict[str, Any] | None = None, seed: int = 0, resources: Path | None = None,
                 device: str | None = None) -> ScFoundation:
    """A scFoundation model with **random weights** (default: the released 100M architecture), for benchmarks.

    Random weights are not a model: the object is flagged ``random_weights=True`` and its provenance says so.
    """
    import torch

    from ._network import MaeAutobin, MaeAutobinConfig

    cfg = MaeAutobinConfig(dict(config or RELEASED_CONFIG))
    g = torch.Generator().manual_seed(seed)
    net = MaeAutobin(cfg)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.02, generator=g)
            elif "norm" in name:
                p.normal_(1.0, 0.1, generator=g)
            else:
                p.normal_(0.0, 1.0 / max(p.shape[-1], 1) ** 0.5, generator=g)
        for layer in net.decoder.layers:
            layer.projection.normal_(0.0, 1.0, generator=g)
    net.eval().requires_grad_(False)
    panel = read_panel(find_panel(resources))
    return ScFoundation(net, panel=panel, checkpoint_key="random", name="scfoundation-random", device=device,
                        random_weights=True)
