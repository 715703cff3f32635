"""Example data sets, read from the verified cache, a local mirror (``$SCFM_MIRROR``) or their public sources.

=================================  =====================================================================
:func:`pbmc200`                    200 PBMCs, raw counts + CITE-seq proteins (10x pbmc_10k_protein_v3)
:func:`pbmc_10x_chr21`             Cell Ranger v3 files (h5 or mtx), 1,107 cells × 507 chr21 genes
:func:`visium_mouse_brain_mini`    tiny Visium mouse-brain section (Space Ranger layout or processed)
:func:`her2st`                     HER2+ breast cancer ST section: counts, spots, H&E (squidpy layout)
:func:`orthologs_human_mouse`      Ensembl BioMart human → mouse homolog table
=================================  =====================================================================
"""

from ._datasets import her2st, orthologs_human_mouse, pbmc200, pbmc_10x_chr21, visium_mouse_brain_mini

__all__ = ["pbmc200", "pbmc_10x_chr21", "visium_mouse_brain_mini", "her2st", "orthologs_human_mouse"]
