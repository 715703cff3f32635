"""Every slot name scfm writes, computed in one place (see squidpy's ``Key``)."""

from __future__ import annotations

__all__ = ["Key"]


class Key:
    """Slot names. No other module spells a slot name."""

    class obsm:
        @staticmethod
        def embedding(family: str) -> str:
            """Cell embedding: ``obsm['X_<family>']``."""
            return f"X_{family}"

        @staticmethod
        def perturbation(family: str) -> str:
            """Per-cell perturbation effect table: ``obsm['<family>_perturbation']``."""
            return f"{family}_perturbation"

    class obs:
        @staticmethod
        def mask(key: str) -> str:
            """Boolean column marking the cells a model could process (written only when some could not)."""
            return f"{key}_valid"

    class var:
        @staticmethod
        def gene_id(kind: str) -> str:
            """Gene IDs written by ``scfm.pp.map_gene_ids``: ``var['ensembl_id']`` or ``var['gene_symbol']``."""
            return {"ensembl": "ensembl_id", "symbol": "gene_symbol"}[kind]

        @staticmethod
        def ortholog_source(species: str) -> str:
            """Source genes of each gene after ``scfm.pp.convert_orthologs``: ``var['<species>_gene']``."""
            return f"{species}_gene"

    class varm:
        @staticmethod
        def gene_embedding(family: str) -> str:
            """Gene embedding: ``varm['<family>_gene']``."""
            return f"{family}_gene"

    class varp:
        @staticmethod
        def gene_similarity(key: str) -> str:
            """Gene-gene similarity network from a gene embedding."""
            return f"{key}_similarity"

    class uns:
        root = "scfm"

        @staticmethod
        def summary(key: str) -> str:
            """Summary table of a perturbation run: ``uns['<key>_summary']``."""
            return f"{key}_summary"
