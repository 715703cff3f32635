"""Prepare data for a model: count checks, gene ID mapping, ortholog conversion."""

from ._genes import detect_species

__all__ = ["detect_species"]
