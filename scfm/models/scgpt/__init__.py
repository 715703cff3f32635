"""scGPT (bowang-lab/scGPT): cell embeddings (``<cls>``) and gene-token embeddings from the official releases.

``scfm.models.load("scgpt", checkpoint=<folder with args.json, vocab.json, best_model.pt>)`` or a registry name
(``"scgpt-human"``, ...); then ``scfm.tl.embed(adata, model=m)`` → ``obsm['X_scgpt']`` and
``scfm.tl.gene_embeddings(adata, model=m)`` → ``varm['scgpt_gene']``. See :class:`ScGPTModel` for what is
reproduced from the official ``embed_data`` and what differs. Importing this package does not import torch.
"""

from __future__ import annotations

from typing import Any

from .._registry import register_family
from ._model import ScGPTModel, load_model
from ._releases import RELEASES

__all__ = ["ScGPTModel", "RELEASES", "load"]


@register_family("scgpt")
def load(**kwargs: Any) -> ScGPTModel:
    """Loader of the ``scgpt`` family (see :func:`scfm.models.scgpt._model.load_model`)."""
    return load_model(**kwargs)
