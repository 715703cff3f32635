"""Write the tutorial notebooks from this script (so they stay reviewable as code). Run: python tutorials/_build.py."""

from __future__ import annotations

from pathlib import Path

import nbformat as nbf

HERE = Path(__file__).parent

SETUP = """import os
from pathlib import Path

import numpy as np
import pandas as pd
import scanpy as sc

import scfm

scfm.settings.verbosity = 1
# Where the example data and (for CI) the parity-test weights live; unset -> downloaded from the public sources.
MIRROR = Path(os.environ.get("SCFM_MIRROR", "../../shared")).resolve()
if MIRROR.is_dir():
    scfm.settings.mirror = MIRROR
print(scfm.settings)"""


def load_model_cell(release: str, family: str, checkpoint: str, resources: str | None, extra: str = "") -> str:
    res = f'MIRROR / "{resources}"' if resources else "None"
    return f'''def load_{family}():
    """Real weights when they are cached or downloadable; otherwise the tiny untrained test weights."""
    try:
        return scfm.models.load("{release}"{extra}), "real"
    except Exception as err:  # offline, not cached, hub unreachable, ...
        print(f"real {release} weights not available ({{type(err).__name__}}): using UNTRAINED TEST WEIGHTS")
    m = scfm.models.load("{family}", checkpoint=MIRROR / "{checkpoint}", resources={res}{extra})
    m.random_weights = True  # recorded in the provenance and shown on every plot
    return m, "untrained test weights"


{family}_model, {family}_weights = load_{family}()
{family}_model'''


def md(text: str):
    return nbf.v4.new_markdown_cell(text)


def code(text: str):
    return nbf.v4.new_code_cell(text)


def write(name: str, cells: list) -> None:
    nb = nbf.v4.new_notebook()
    nb.cells = cells
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbf.write(nb, HERE / name)


def geneformer_tutorial() -> None:
    write(
        "01_geneformer_pbmc.ipynb",
        [
            md(
                "# Geneformer on PBMCs: embed, compare with PCA, perturb a gene\n\n"
                "This tutorial embeds 200 PBMCs (raw counts) with Geneformer, compares the cell embedding with the "
                "weights-free PCA baseline, and deletes a gene *in silico* to see how much each cell's embedding "
                "moves.\n\n"
                "> **Weights.** scfm uses the real Geneformer V2 weights when they are in the cache or can be "
                "downloaded. On a machine without them (such as CI) it falls back to a tiny model with **untrained "
                "test weights** (the parity-test checkpoint): the code path is identical, the numbers are "
                "meaningless, and every result and plot is labelled as such."
            ),
            code(SETUP),
            md(
                "## Data\nRaw UMI counts are what Geneformer's rank-value encoding needs. "
                "`scfm.pp.check_counts` tells where the counts are (or what to pass when they are not)."
            ),
            code("adata = scfm.datasets.pbmc200()\nprint(scfm.pp.check_counts(adata))\nadata"),
            md(
                "## Model\n`scfm.models.load` takes a registry name (files come from the verified cache) or the "
                "official folder layout (`checkpoint=` the model folder, `resources=` the dictionaries)."
            ),
            code(
                load_model_cell(
                    "geneformer-v2-104m", "geneformer", "fixtures/geneformer/tiny-v2", "resources/geneformer/v2"
                )
            ),
            md(
                "## Cell embeddings\nGene symbols are mapped to Ensembl IDs through the model's own dictionaries; "
                "the coverage is recorded in the provenance. `pooling=\"mean\"` averages the gene tokens of the "
                "second-to-last layer, as the official `EmbExtractor` does by default; V2 models also offer "
                "`pooling=\"cls\"`."
            ),
            code(
                'scfm.tl.embed(adata, model=geneformer_model, pooling="mean", batch_size=8)\n'
                'scfm.tl.embed(adata, model="pca")\n'
                'prov = adata.uns["scfm"]["X_geneformer"]\n'
                '{k: prov[k] for k in ("model", "coverage", "n_cells_used") if k in prov}'
            ),
            md("Clusters from the PCA baseline colour both UMAPs, so the two embeddings can be compared cell by cell."),
            code(
                'sc.pp.neighbors(adata, use_rep="X_pca")\nsc.tl.leiden(adata, flavor="igraph", n_iterations=2, '
                'directed=False, key_added="cluster")\n'
                'fig = scfm.pl.embeddings(adata, ["X_geneformer", "X_pca"], color="cluster", show=False)'
            ),
            md(
                "## In-silico deletion\nDelete *CD74* (an MHC class II chaperone, high in B cells and monocytes) "
                "and measure, per cell, the cosine similarity between the original and the perturbed embedding."
            ),
            code(
                'scfm.tl.in_silico_perturb(adata, ["CD74"], model=geneformer_model, perturbation="delete",\n'
                '                          pooling="mean", batch_size=8)\n'
                'adata.uns["geneformer_perturbation_summary"]'
            ),
            md(
                "Cells that do not express the gene are not perturbed: their row is NaN, and the summary counts the "
                "cells in which the gene was expressed."
            ),
            code(
                'fig = scfm.pl.perturbation(adata, "geneformer_perturbation", groupby="cluster", kind="box", '
                "show=False)"
            ),
            md("Everything scfm wrote is listed in the provenance, with the model files' sha256:"),
            code('list(adata.uns["scfm"])'),
        ],
    )


def comparison_tutorial() -> None:
    write(
        "02_compare_foundation_models.ipynb",
        [
            md(
                "# scGPT, scFoundation, Geneformer and PCA on the same cells\n\n"
                "Each model is one `scfm.tl.embed` call on the same AnnData; the embeddings land side by side in "
                "`adata.obsm`, aligned to the cells, each with its provenance.\n\n"
                "> **Weights.** Real weights are used when cached or downloadable; otherwise tiny **untrained test "
                "weights** (labelled in the provenance and on the plots), so the numbers are meaningless but the code "
                "path is the one you will run."
            ),
            code(SETUP),
            code("adata = scfm.datasets.pbmc200()\nadata"),
            code(load_model_cell("scgpt-human", "scgpt", "fixtures/scgpt/tiny", None)),
            code(
                load_model_cell(
                    "scfoundation-100m",
                    "scfoundation",
                    "fixtures/scfoundation/tiny/models.ckpt",
                    None,
                    ', checkpoint_key="cell"',
                )
            ),
            code(
                load_model_cell(
                    "geneformer-v2-104m", "geneformer", "fixtures/geneformer/tiny-v2", "resources/geneformer/v2"
                )
            ),
            md(
                "## Embed with each model\nscGPT takes gene symbols and bins each cell's counts; scFoundation aligns "
                "the genes to its fixed 19,264-gene panel without building a dense copy; Geneformer ranks genes."
            ),
            code(
                "scfm.tl.embed(adata, model=scgpt_model, max_length=1200, seed=0, batch_size=16)\n"
                'scfm.tl.embed(adata, model=scfoundation_model, pre_normalized="F", tgthighres="t4", pool="all",\n'
                "              batch_size=16)\n"
                'scfm.tl.embed(adata, model=geneformer_model, pooling="cls", batch_size=16)\n'
                'scfm.tl.embed(adata, model="pca")\n'
                'pd.DataFrame({k: {"model": v.get("model"), "dims": adata.obsm[k].shape[1],\n'
                '                  "untrained": bool(v.get("random_weights", False))}\n'
                '              for k, v in adata.uns["scfm"].items()}).T'
            ),
            code(
                'sc.pp.neighbors(adata, use_rep="X_pca")\nsc.tl.leiden(adata, flavor="igraph", n_iterations=2, '
                'directed=False, key_added="pca_leiden")\n'
                'fig = scfm.pl.embeddings(adata, ["X_scgpt", "X_scfoundation", "X_geneformer", "X_pca"],\n'
                '                         color="pca_leiden", show=False)'
            ),
            md(
                "## Gene embeddings and a gene–gene network\nscGPT's gene-token embeddings go to `adata.varm`; "
                "`scfm.tl.gene_similarity` turns them into a k-nearest-neighbour cosine network in `adata.varp`."
            ),
            code(
                "scfm.tl.gene_embeddings(adata, model=scgpt_model)\n"
                'edges = scfm.tl.gene_similarity(adata, use_rep="scgpt_gene", top_k=10, return_df=True)\n'
                "edges.head()"
            ),
        ],
    )


if __name__ == "__main__":
    geneformer_tutorial()
    comparison_tutorial()
