"""Run models: ``scfm.tl.embed``, ``gene_embeddings``, ``in_silico_perturb``, ``gene_similarity``."""

from ._embed import embed, gene_embeddings
from ._network import gene_similarity
from ._perturb import in_silico_perturb

__all__ = ["embed", "gene_embeddings", "in_silico_perturb", "gene_similarity"]
