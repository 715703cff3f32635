"""Geneformer V1/V2 (Theodoris et al. 2023; Chen et al. 2024): tokenizer, BERT encoder, adapter.

``scfm.models.load("geneformer", checkpoint=<model folder>, resources=<dictionary folder>)`` or a release name
(``scfm.models.list("geneformer")``); then ``scfm.tl.embed``, ``scfm.tl.gene_embeddings``.
"""

from ._model import GeneformerModel, load_geneformer
from ._network import BertConfig, GeneformerNetwork, layer_to_quant, load_network, pad_batch
from ._tokenizer import (
    GeneformerDictionaries,
    GenePlan,
    TokenizedCells,
    build_gene_plan,
    iter_tokenized,
    load_dictionaries,
    tokenize,
)

__all__ = [
    "GeneformerModel",
    "load_geneformer",
    "BertConfig",
    "GeneformerNetwork",
    "layer_to_quant",
    "load_network",
    "pad_batch",
    "GeneformerDictionaries",
    "GenePlan",
    "TokenizedCells",
    "build_gene_plan",
    "iter_tokenized",
    "load_dictionaries",
    "tokenize",
]
