"""Registry entries of public releases whose scfm adapter arrives in a later release.

UCE (4- and 33-layer, with the ESM2 protein-embedding files), GeneCompass (Small, Base) and the pathology image
encoders UNI, UNI2-h, CONCH, Virchow2, Prov-GigaPath and PLIP. Their sources, licences, citations and input
contracts are registered now, so ``scfm.models.list()``, ``info()`` and ``download()`` work (e.g. to pre-fetch
weights for an offline cluster). ``scfm.models.load()`` raises :class:`AdapterNotAvailableError` for them,
before anything is downloaded, until the family's adapter module registers its own loader (an adapter module
imported before this one keeps its loader; one imported later replaces the placeholder).

Checksums: where the publisher states the sha256 (Git LFS pointers of GitHub-hosted files), it is pinned here;
for figshare and Hugging Face files it is recorded at the first download and checked on every later use
(see :mod:`scfm._io.download`). Hugging Face files without a pinned ``revision`` record the commit they came from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._registry import _FAMILIES, ModelEntry, RemoteFile, register_family, register_model

__all__ = ["AdapterNotAvailableError", "RELEASES"]


class AdapterNotAvailableError(NotImplementedError):
    """The release is registered (info, list, download work) but scfm cannot run it yet."""


# --------------------------------------------------------------------------------------------------------------
# UCE (Universal Cell Embeddings): snap-stanford/UCE. Files on figshare (article 24320806), as downloaded by the
# official evaluate.py; the folder layout is the official `model_files/`.

_UCE_REPO = "https://github.com/snap-stanford/UCE"
_UCE_COMMIT = "8ead6e07af0c80f75653598138bb704e865b45c8"
_FIGSHARE = "https://figshare.com/ndownloader/files"
_UCE_CITATION = (
    "Rosen Y, Roohani Y, Agrawal A, Samotorcan L, Tabula Sapiens Consortium, Quake SR, Leskovec J. "
    "Universal Cell Embeddings: A Foundation Model for Cell Biology. bioRxiv 2023. doi:10.1101/2023.11.28.568918"
)
#: Species keys of the official protein-embedding files (``species_offsets.pkl``).
UCE_SPECIES = (
    "human",
    "mouse",
    "frog",
    "zebrafish",
    "mouse_lemur",
    "pig",
    "macaca_fascicularis",
    "macaca_mulatta",
)


def _uce_resources() -> tuple[RemoteFile, ...]:
    return (
        RemoteFile("all_tokens.torch", url=f"{_FIGSHARE}/42706585", mirror_path="resources/uce/all_tokens.torch"),
        RemoteFile("species_chrom.csv", url=f"{_FIGSHARE}/42706558", mirror_path="resources/uce/species_chrom.csv"),
        RemoteFile("species_offsets.pkl", url=f"{_FIGSHARE}/42706555", mirror_path="resources/uce/species_offsets.pkl"),
        # a tar archive of protein_embeddings/<Species>.<assembly>.gene_symbol_to_embedding_ESM2.pt (8 species);
        # extracted next to itself, as the official code does
        RemoteFile(
            "protein_embeddings.tar.gz",
            url=f"{_FIGSHARE}/42715213",
            mirror_path="resources/uce/protein_embeddings.tar.gz",
        ),
        RemoteFile(
            "new_species_protein_embeddings.csv",
            url=f"https://raw.githubusercontent.com/snap-stanford/UCE/{_UCE_COMMIT}/model_files/"
            "new_species_protein_embeddings.csv",
            sha256="17c540dbe6adfbce15b231f89c7c94287c633c48bc76b5b03c2e258cb317dcb4",
            size=13,
            mirror_path="resources/uce/new_species_protein_embeddings.csv",
        ),
    )


_UCE_COMMON: dict[str, Any] = {
    "family": "uce",
    "embedding_dim": 1280,
    "gene_id_scheme": "symbol",
    "species": UCE_SPECIES,
    "input_length": 1536,
    "license": "MIT",
    "citation": _UCE_CITATION,
    "gated": False,
}

UCE_4L = ModelEntry(
    name="uce-4l",
    version="4-layer",
    source=f"{_UCE_REPO} (files: https://figshare.com/articles/dataset/Universal_Cell_Embedding_Model_Files/24320806)",
    checkpoint=(
        RemoteFile("4layer_model.torch", url=f"{_FIGSHARE}/42706576", mirror_path="models/uce/4layer_model.torch"),
    ),
    resources=_uce_resources(),
    description=(
        "UCE 4-layer model (the official default): transformer over 1,024 sampled genes per cell, tokens = ESM2 "
        "protein embeddings (5,120-d) grouped by chromosome, 1,280-d cell embedding. Raw counts, gene symbols; "
        "any species with protein embeddings. Embeddings are not comparable with the 33-layer model's."
    ),
    **_UCE_COMMON,
)

UCE_33L = ModelEntry(
    name="uce-33l",
    version="33-layer",
    n_parameters=650_000_000,
    source=f"{_UCE_REPO} (files: https://figshare.com/articles/dataset/Universal_Cell_Embedding_Model_Files/24320806)",
    checkpoint=(
        RemoteFile(
            "33l_8ep_1024t_1280.torch",
            url=f"{_FIGSHARE}/43423236",
            mirror_path="models/uce/33l_8ep_1024t_1280.torch",
        ),
    ),
    resources=_uce_resources(),
    description=(
        "UCE 33-layer model of the paper (~650M parameters; the embeddings of the paper's data sets use it). "
        "Same input contract as uce-4l; needs a large GPU (the authors use batch 25 on an 80 GB GPU)."
    ),
    **_UCE_COMMON,
)

# --------------------------------------------------------------------------------------------------------------
# GeneCompass: xCompass-AI/GeneCompass. Prior-knowledge files are Git LFS objects of the repository (sha256 and
# size from their LFS pointers at the pinned commit); the checkpoints are only on ScienceDB behind an anonymous
# share page, without a direct download link, so they are fetched by hand (or from a mirror).

_GC_REPO = "https://github.com/xCompass-AI/GeneCompass"
_GC_COMMIT = "8323757bd068aa4f818ea604c863a9aa3c1b90fe"
_GC_LFS = f"https://media.githubusercontent.com/media/xCompass-AI/GeneCompass/{_GC_COMMIT}"
_GC_RAW = "https://raw.githubusercontent.com/xCompass-AI/GeneCompass"
_GC_CHECKPOINT_PAGE = "https://www.scidb.cn/en/anonymous/SUZOdk1y"
_GC_CITATION = (
    "Yang X, Liu G, Feng G, Bu D, Wang P, Jiang J, et al. GeneCompass: deciphering universal gene regulatory "
    "mechanisms with a knowledge-informed cross-species foundation model. Cell Research 34, 830-845 (2024). "
    "doi:10.1038/s41422-024-01034-y"
)

# (path in the repository, sha256, size) of the prior-knowledge files
_GC_PRIOR = (
    ("prior_knowledge/PECA2vec/human_PECA_vec.pickle",
     "2f6b358a15082e0f79db936291e3c936435b7f0370ad553a20d7361779f02ac6", 124783263),
    ("prior_knowledge/PECA2vec/mouse_PECA_vec.pickle",
     "5347ce0bf0956baf47b6c0ad054c7a0d259eae155196a8f4ac3c7d472f2526a8", 120544451),
    ("prior_knowledge/gene_co_express_emb/Human_dim_768_gene_28291_random.pickle",
     "023d09484ecbb84ca446d7617452c5fa60a53b7bef5da8268bdb15346ec98842", 88200663),
    ("prior_knowledge/gene_co_express_emb/Mouse_dim_768_gene_27444_random.pickle",
     "db9d68f102a6e2968ccfc09c129ebdb8892e3edf1e662ba579f7e75f29798bf7", 85563766),
    ("prior_knowledge/gene_family/Human_dim_768_gene_28291_random.pickle",
     "ee094584e8dfb7169790a4900207de669d380643fe5cd24cdfb0646d49871a79", 102078734),
    ("prior_knowledge/gene_family/Mouse_dim_768_gene_27934_random.pickle",
     "21b685f885e23b0d410a037d04bb39a3f152359659e08d7e62ff2daeb7f4749d", 87081403),
    ("prior_knowledge/gene_list/Gene_id_name_dict_human_mouse.pickle",
     "9241a76d3506fe8960727f32302899a6ca1d33ef2e2b0625e95c8b4a05ed4ad4", 3864127),
    ("prior_knowledge/h&m_token1000W.pickle",
     "c0252b9b6f0b71296bec483550718ef67f8700e6c97dadee42fdbc80ba4d9814", 1036265),
    ("prior_knowledge/homologous_hm_token.pickle",
     "07466713cb4ca6e05c9a74fafa848618691a9c85a751d758c72911c941d05d26", 104655),
    ("prior_knowledge/human_mouse_tokens.pickle",
     "b86750520401bee48e777e65d68f4fd1ba1eade3cd5f7b391bb90d014e72e525", 1144041),
    ("prior_knowledge/promoter_emb/human_emb_768.pickle",
     "6b01064329341c488a46f167df94d3907444ef8b58e7a2fab64257b8b0869114", 88151111),
    ("prior_knowledge/promoter_emb/mouse_emb_768.pickle",
     "389361cd495079177f57234448e360c0f59410c95b19fd072f5ed0b906bdb007", 85503703),
)  # fmt: skip

# Preprocessing tables of the official preprocess.py (plain files, not in the current tree: pinned to the commit
# that last held each; sha256 recorded at the first download).
_GC_SCDATA = (
    ("scdata/Gene_id_name_dict1.pickle", "eff27dfafd72730e6e69c872aa4e3bd0a6d931e2"),
    ("scdata/gene_id_hpromoter.pickle", "eff27dfafd72730e6e69c872aa4e3bd0a6d931e2"),
    ("scdata/dict/human_gene_median_after_filter.pickle", "e3810c9cf252ed10ce83cf06c752ba16ae41250c"),
)


def _genecompass_resources() -> tuple[RemoteFile, ...]:
    prior = tuple(
        RemoteFile(
            path,
            url=f"{_GC_LFS}/{path.replace('&', '%26')}",
            sha256=sha,
            size=size,
            mirror_path=f"resources/genecompass/{path}",
        )
        for path, sha, size in _GC_PRIOR
    )
    scdata = tuple(
        RemoteFile(path, url=f"{_GC_RAW}/{commit}/{path}", mirror_path=f"resources/genecompass/{path}")
        for path, commit in _GC_SCDATA
    )
    return prior + scdata


def _genecompass(name: str, folder: str, layers: int) -> ModelEntry:
    return ModelEntry(
        name=name,
        family="genecompass",
        version=folder,
        embedding_dim=768,
        gene_id_scheme="ensembl",
        species=("human", "mouse"),
        input_length=2048,
        license="not stated (no licence file in xCompass-AI/GeneCompass)",
        citation=_GC_CITATION,
        source=f"{_GC_REPO} (checkpoints: {_GC_CHECKPOINT_PAGE})",
        gated=False,
        checkpoint=tuple(
            RemoteFile(f, mirror_path=f"models/genecompass/{folder}/{f}") for f in ("config.json", "pytorch_model.bin")
        ),
        resources=_genecompass_resources(),
        description=(
            f"GeneCompass {layers}-layer BERT pretrained on ~120 million human and mouse cells, with four kinds of "
            "prior knowledge (promoter, co-expression, gene family, PECA GRN) added to the gene-token embeddings; "
            "2,048 rank-ordered Ensembl tokens with log-normalised values. The checkpoint has no direct download: "
            f"get {folder}/ (config.json, pytorch_model.bin) from {_GC_CHECKPOINT_PAGE}."
        ),
    )


GENECOMPASS_SMALL = _genecompass("genecompass-small", "GeneCompass_Small", 6)
GENECOMPASS_BASE = _genecompass("genecompass-base", "GeneCompass_Base", 12)

# --------------------------------------------------------------------------------------------------------------
# Pathology image encoders (Hugging Face). Gated repositories need the licence accepted on the hub page and
# `huggingface-cli login`. Tile-level embeddings of 224 x 224 px H&E tiles.

_CC_NC_ND = "CC-BY-NC-ND-4.0 (non-commercial, no derivatives; access on request)"


def _hf(repo: str, *files: str) -> tuple[RemoteFile, ...]:
    return tuple(RemoteFile(f, hf_repo=repo, mirror_path=f"models/{repo}/{f}") for f in files)


def _image_entry(name: str, repo: str, files: tuple[str, ...], **kw: Any) -> ModelEntry:
    return ModelEntry(
        name=name,
        modality="image",
        species=("human",),
        input_length=224,
        source=f"https://huggingface.co/{repo}",
        checkpoint=_hf(repo, *files),
        **kw,
    )


UNI = _image_entry(
    "uni",
    "MahmoodLab/UNI",
    ("config.json", "pytorch_model.bin"),
    family="uni",
    version="UNI (ViT-L/16)",
    n_parameters=303_000_000,
    embedding_dim=1024,
    license=_CC_NC_ND,
    gated=True,
    citation=(
        "Chen RJ, Ding T, Lu MY, Williamson DFK, et al. Towards a general-purpose foundation model for "
        "computational pathology. Nature Medicine 30, 850-862 (2024). doi:10.1038/s41591-024-02857-3"
    ),
    description=(
        "UNI: ViT-L/16 (DINOv2) pretrained on Mass-100K (>100 million H&E tiles); 1,024-d class-token embedding of "
        "224 x 224 px tiles at 20x (~0.5 um/px); ImageNet normalisation."
    ),
)

UNI2 = _image_entry(
    "uni2-h",
    "MahmoodLab/UNI2-h",
    ("config.json", "pytorch_model.bin"),
    family="uni",
    version="UNI2-h (ViT-H/14)",
    n_parameters=681_000_000,
    embedding_dim=1536,
    license=_CC_NC_ND,
    gated=True,
    citation=UNI.citation,
    description=(
        "UNI2-h: ViT-H/14-like encoder (24 blocks, 1,536 wide, SwiGLU, 8 register tokens) pretrained on >200 "
        "million H&E and IHC tiles; 1,536-d class-token embedding of 224 x 224 px tiles."
    ),
)

CONCH = _image_entry(
    "conch",
    "MahmoodLab/CONCH",
    ("pytorch_model.bin",),
    family="conch",
    version="CONCH (ViT-B/16)",
    embedding_dim=512,
    license=_CC_NC_ND,
    gated=True,
    citation=(
        "Lu MY, Chen B, Williamson DFK, Chen RJ, et al. A visual-language foundation model for computational "
        "pathology. Nature Medicine 30, 863-874 (2024). doi:10.1038/s41591-024-02856-4"
    ),
    description=(
        "CONCH: CoCa-style vision-language model (ViT-B/16 image encoder, 1.17 million image-caption pairs); "
        "512-d joint image/text embedding of 224 x 224 px tiles (zero-shot classification and retrieval)."
    ),
)

VIRCHOW2 = _image_entry(
    "virchow2",
    "paige-ai/Virchow2",
    ("config.json", "model.safetensors"),
    family="virchow",
    version="Virchow2 (ViT-H/14)",
    n_parameters=632_000_000,
    embedding_dim=2560,
    license=_CC_NC_ND,
    gated=True,
    citation=(
        "Zimmermann E, Vorontsov E, Viret J, et al. Virchow2: Scaling Self-Supervised Mixed Magnification Models "
        "in Pathology. arXiv:2408.00738 (2024)"
    ),
    description=(
        "Virchow2: ViT-H/14 (4 register tokens, SwiGLU) pretrained on 3.1 million slides at mixed magnifications; "
        "tile embedding = class token (1,280) concatenated with the mean patch token (1,280) = 2,560-d."
    ),
)

PROV_GIGAPATH = _image_entry(
    "prov-gigapath",
    "prov-gigapath/prov-gigapath",
    ("config.json", "pytorch_model.bin", "slide_encoder.pth"),
    family="gigapath",
    version="Prov-GigaPath (tile ViT-g/14 + LongNet slide encoder)",
    n_parameters=1_135_000_000,
    embedding_dim=1536,
    license="Apache-2.0 (hub access form: non-commercial research use only)",
    gated=True,
    citation=(
        "Xu H, Usuyama N, Bagga J, Zhang S, Rao R, Naumann T, et al. A whole-slide foundation model for digital "
        "pathology from real-world data. Nature 630, 181-188 (2024). doi:10.1038/s41586-024-07441-w"
    ),
    description=(
        "Prov-GigaPath: tile encoder (ViT-giant/14, DINOv2, 1.3 billion tiles of 171k slides) giving 1,536-d tile "
        "embeddings of 224 x 224 px tiles at 0.5 um/px, and a LongNet slide encoder (slide_encoder.pth, 768-d)."
    ),
)

PLIP = _image_entry(
    "plip",
    "vinid/plip",
    ("config.json", "pytorch_model.bin", "preprocessor_config.json"),
    family="plip",
    version="PLIP (CLIP ViT-B/32)",
    n_parameters=151_000_000,
    embedding_dim=512,
    license="not stated by the authors (no licence file in PathologyFoundation/plip)",
    gated=False,
    citation=(
        "Huang Z, Bianchi F, Yuksekgonul M, Montine TJ, Zou J. A visual-language foundation model for pathology "
        "image analysis using medical Twitter. Nature Medicine 29, 2307-2316 (2023). doi:10.1038/s41591-023-02504-3"
    ),
    description=(
        "PLIP: CLIP ViT-B/32 fine-tuned on 208,414 pathology image-text pairs (OpenPath); 512-d image/text "
        "embeddings of 224 x 224 px images (Hugging Face transformers CLIPModel layout)."
    ),
)

RELEASES: tuple[ModelEntry, ...] = (
    UCE_4L,
    UCE_33L,
    GENECOMPASS_SMALL,
    GENECOMPASS_BASE,
    UNI,
    UNI2,
    CONCH,
    VIRCHOW2,
    PROV_GIGAPATH,
    PLIP,
)

for _entry in RELEASES:
    register_model(_entry)

# --------------------------------------------------------------------------------------------------------------
# Placeholder loaders: a clear error instead of "no loader", raised before any download.

_PLANNED = {
    "uce": "the cross-species work (UCE)",
    "genecompass": "the cross-species work (GeneCompass)",
    "uni": "the histology work (pathology image encoders)",
    "conch": "the histology work (pathology image encoders)",
    "virchow": "the histology work (pathology image encoders)",
    "gigapath": "the histology work (pathology image encoders)",
    "plip": "the histology work (pathology image encoders)",
}


def _placeholder(family: str, when: str):
    def loader(
        *,
        checkpoint: Path | None = None,
        resources: Path | None = None,
        entry: ModelEntry | None = None,
        device: str | None = None,
        **options: Any,
    ):
        name = entry.name if entry is not None else next(e.name for e in RELEASES if e.family == family)
        what = f"{name!r}" if entry is not None else f"model family {family!r}"
        raise AdapterNotAvailableError(
            f"scfm cannot run {what} yet: the {family!r} adapter arrives with {when}. The registry entry is "
            f"available now: `scfm.models.info({name!r})` shows sources, licence and citation, and "
            f"`scfm.models.download({name!r})` pre-fetches the files into the cache."
        )

    loader.__name__ = f"_{family}_adapter_not_available"
    loader.fetch_files = False  # type: ignore[attr-defined]  # scfm.models.load: raise before downloading
    return loader


for _family, _when in _PLANNED.items():
    if _family not in _FAMILIES:  # a real adapter imported earlier wins
        register_family(_family)(_placeholder(_family, _when))
