"""Registry entries of the public scGPT releases (bowang-lab/scGPT README, "Pretrained scGPT Model Zoo").

All releases are Google Drive folders with ``args.json``, ``vocab.json`` and ``best_model.pt``; 12 layers,
512 wide, 8 heads, vocabulary of 60,694 gene symbols + 3 special tokens. Per-file Drive IDs are given where
they are public (whole-human, continual-pretrained); for the organ and pan-cancer models only the folder link
is published, so their files must be downloaded from that folder by hand and loaded with
``scfm.models.load("scgpt", checkpoint=<folder>)``. No sha256 is published for any file: the hash seen at
the first download is recorded by the cache.

Licence: the code is MIT (github.com/bowang-lab/scGPT/LICENSE). The weights are distributed from the same
README without a separate licence statement; the entries say so.
"""

from __future__ import annotations

from .._registry import ModelEntry, RemoteFile, register_model

__all__ = ["RELEASES"]

_CITATION = (
    "Cui H, Wang C, Maan H, Pang K, Luo F, Duan N, Wang B. scGPT: toward building a foundation model for "
    "single-cell multi-omics using generative AI. Nature Methods 21, 1470-1480 (2024). "
    "doi:10.1038/s41592-024-02201-0"
)
_LICENSE = "MIT (code); weights: no separate licence stated"
_ENCODER_PARAMETERS = 50_278_400  # embedding-path parameters of the 12 x 512 architecture (decoder heads excluded)


def _drive(file_id: str) -> str:
    # the direct-download endpoint; `confirm=t` skips the virus-scan page Google shows for large files
    return f"https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t"


def _folder(folder_id: str) -> str:
    return f"https://drive.google.com/drive/folders/{folder_id}"


def _entry(name: str, folder_id: str, what: str, *, checkpoint=(), resources=(), extra: str = "") -> ModelEntry:
    manual = "" if checkpoint else (
        " Only the Drive folder is public: download args.json, vocab.json and best_model.pt from it and load with "
        "scfm.models.load('scgpt', checkpoint=<folder>)."
    )
    return ModelEntry(
        name=name,
        family="scgpt",
        version="1.0",
        n_parameters=_ENCODER_PARAMETERS,
        embedding_dim=512,
        gene_id_scheme="symbol",
        species=("human",),
        input_length=1200,
        license=_LICENSE,
        citation=_CITATION,
        source=_folder(folder_id),
        checkpoint=tuple(checkpoint),
        resources=tuple(resources),
        description=f"scGPT {what}. 12 transformer layers, 512 wide, 8 heads, 60,697-token vocabulary; "
                    f"cell embedding = L2-normalised <cls> output.{extra}{manual}",
    )


RELEASES = (
    _entry(
        "scgpt-human",
        "1oWh_-ZRdhtoGQ2Fw24HP41FgLoomVo-y",
        "whole-human (scGPT_human), pretrained on 33 million normal human cells; recommended by the authors",
        checkpoint=(
            RemoteFile("args.json", url=_drive("1hh2zGKyWAx3DyovD30GStZ3QlzmSqdk1")),
            RemoteFile("best_model.pt", url=_drive("14AebJfGOUF047Eg40hk57HCtrb0fyDTm")),
        ),
        resources=(
            # the mirror file is the census vocabulary without the 3 special tokens, which the loader appends as
            # the official code does: token ids are identical to the released vocab.json
            RemoteFile("vocab.json", url=_drive("1H3E_MJ-Dl36AQV6jLbna2EdvgPaqvqcC"),
                       mirror_path="resources/scgpt/default_census_vocab.json"),
        ),
    ),
    _entry(
        "scgpt-continual-pretrained",
        "1_GROJTzXiAV8HB4imruOTk6PEGuNOcgB",
        "continual pretrained (scGPT_CP), whole-human further pretrained for zero-shot cell embedding",
        checkpoint=(
            RemoteFile("args.json", url=_drive("15TEZmd2cZCrHwgfE424fgQkGUZCXiYrR")),
            RemoteFile("best_model.pt", url=_drive("1x1SfmFdI-zcocmqWAd7ZTC9CTEAVfKZq")),
        ),
        resources=(RemoteFile("vocab.json", url=_drive("1jfT_T5n8WNbO9QZcLWObLdRG8lYFKH-Q")),),
    ),
    _entry("scgpt-brain", "1vf1ijfQSk7rGdDGpBntR5bi5g6gNt-Gx", "brain, pretrained on 13.2 million brain cells"),
    _entry("scgpt-blood", "1kkug5C7NjvXIwQGGaGoqXTk_Lb_pDrBU",
           "blood, pretrained on 10.3 million blood and bone marrow cells"),
    _entry("scgpt-heart", "1GcgXrd7apn6y4Ze_iSCncskX3UsWPY2r", "heart, pretrained on 1.8 million heart cells"),
    _entry("scgpt-lung", "16A1DJ30PT6bodt4bWLa4hpS7gbWZQFBG", "lung, pretrained on 2.1 million lung cells"),
    _entry("scgpt-kidney", "1S-1AR65DF120kNFpEbWCvRHPhpkGK3kK", "kidney, pretrained on 814 thousand kidney cells"),
    _entry("scgpt-pancancer", "13QzLHilYUd0v3HTwa_9n4G4yEF-hdkqa",
           "pan-cancer, pretrained on 5.7 million cells of various cancer types"),
)

for _e in RELEASES:
    register_model(_e)
