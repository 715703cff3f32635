"""Prepare data for a model: count checks, gene ID mapping, ortholog conversion."""

from ._counts import check_counts, validate_counts_block
from ._genes import detect_species, map_gene_ids, map_ids
from ._orthologs import convert_orthologs

__all__ = ["check_counts", "map_gene_ids", "map_ids", "convert_orthologs", "detect_species", "validate_counts_block"]
