"""Geneformer V1/V2 (Theodoris et al. 2023; Chen et al. 2024): tokenizer, network, adapter."""

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
    "GeneformerDictionaries",
    "GenePlan",
    "TokenizedCells",
    "build_gene_plan",
    "iter_tokenized",
    "load_dictionaries",
    "tokenize",
]
