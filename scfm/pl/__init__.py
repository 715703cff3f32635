"""Plot model results: side-by-side embeddings and perturbation shifts."""

from ._plots import embeddings, perturbation

__all__ = ["embeddings", "perturbation"]
