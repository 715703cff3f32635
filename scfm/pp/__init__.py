"""Prepare data for a model: count checks, gene ID mapping, ortholog conversion."""
