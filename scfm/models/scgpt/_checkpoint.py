"""Reading the official scGPT model folder: ``args.json``, ``vocab.json``, ``best_model.pt``.

Nothing here imports torch at module level; the state dict is read with :func:`scfm._io.safe.torch_load`
(``weights_only=True``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "ScGPTConfig",
    "SPECIAL_TOKENS",
    "IGNORED_PREFIXES",
    "read_args",
    "read_vocab",
    "find_files",
    "map_state_dict",
    "expected_keys",
]

#: Special tokens ``scgpt.tasks.embed_data`` appends to the vocabulary when absent, in this order.
SPECIAL_TOKENS = ("<pad>", "<cls>", "<eoc>")

#: Parameter groups of the released checkpoints that the cell- and gene-embedding paths do not use: the
#: expression decoder (``decoder.*``), the cell-type head (``cls_decoder.*``) and the masked-value-prediction
#: head (``mvc_decoder.*``). They are read and deliberately dropped. Every other unknown key is an error.
IGNORED_PREFIXES = ("decoder.", "cls_decoder.", "mvc_decoder.")

# Released (flash-attention-trained) names → the standard names used here. ``self_attn.Wqkv`` is the
# flash-attn 1.x layout of scGPT_human and the organ models; ``self_attn._impl.*`` is the wrapped layout of
# the FlashAttention-2 compatibility module (scGPT >= 0.2.5).
_RENAMES = (
    (re.compile(r"^(transformer_encoder\.layers\.\d+\.self_attn\.)(?:_impl\.)?Wqkv\.(weight|bias)$"), r"\1in_proj_\2"),
    (re.compile(r"^(transformer_encoder\.layers\.\d+\.self_attn\.)_impl\.out_proj\.(weight|bias)$"), r"\1out_proj.\2"),
)

_REQUIRED_ARGS = ("embsize", "nheads", "d_hid", "nlayers", "pad_token", "pad_value")


@dataclass(frozen=True)
class ScGPTConfig:
    """The architecture values ``embed_data`` reads from ``args.json`` (others are ignored, as officially)."""

    embsize: int
    nheads: int
    d_hid: int
    nlayers: int
    pad_token: str = "<pad>"
    pad_value: float = -2.0
    n_bins: int = 51  # hard-coded in the official DataCollator; args.json's n_bins is not read
    max_value: float = 512.0  # clamp of the continuous value encoder

    def __post_init__(self) -> None:
        if self.embsize % self.nheads != 0:
            raise ValueError(f"args.json: embsize {self.embsize} is not divisible by nheads {self.nheads}.")


def read_args(path: str | Path) -> ScGPTConfig:
    """Read ``args.json`` of a released model folder."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        args = json.load(f)
    if not isinstance(args, dict):
        raise ValueError(f"{path} does not hold a JSON object of training arguments.")
    missing = [k for k in _REQUIRED_ARGS if k not in args]
    if missing:
        raise ValueError(f"{path} lacks the keys {missing} that define the scGPT architecture; is this an scGPT "
                         "model folder (args.json, vocab.json, best_model.pt)?")
    return ScGPTConfig(
        embsize=int(args["embsize"]),
        nheads=int(args["nheads"]),
        d_hid=int(args["d_hid"]),
        nlayers=int(args["nlayers"]),
        pad_token=str(args["pad_token"]),
        pad_value=float(args["pad_value"]),
    )


def read_vocab(path: str | Path) -> list[str]:
    """Tokens of ``vocab.json`` in id order, with ``<pad>``, ``<cls>``, ``<eoc>`` appended when absent.

    The file maps token → integer id (the official ``GeneVocab.save_json`` layout); key order in the file is
    irrelevant, ids must be exactly ``0 .. n-1``.
    """
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        stoi = json.load(f)
    if not isinstance(stoi, dict) or not stoi:
        raise ValueError(f"{path} is not an scGPT vocabulary (a JSON object mapping gene symbol → integer id).")
    itos: list[str | None] = [None] * len(stoi)
    for tok, idx in stoi.items():
        if not isinstance(idx, int) or isinstance(idx, bool) or not 0 <= idx < len(stoi) or itos[idx] is not None:
            raise ValueError(f"{path}: token ids must be the integers 0..{len(stoi) - 1}, each used once "
                             f"(token {tok!r} has id {idx!r}).")
        itos[idx] = tok
    tokens = [t for t in itos if t is not None]
    present = set(tokens)
    tokens.extend(s for s in SPECIAL_TOKENS if s not in present)
    return tokens


def find_files(checkpoint: Path | None, resources: Path | None) -> dict[str, Path]:
    """Locate ``args.json``, ``vocab.json`` and ``best_model.pt``.

    ``checkpoint`` is the released folder (or its ``best_model.pt``); ``vocab.json`` may instead sit in
    ``resources``.
    """
    if checkpoint is None:
        raise ValueError("scGPT needs `checkpoint=`: the model folder with args.json, vocab.json and best_model.pt "
                         "(e.g. the scGPT_human folder of the official release), or a registry name such as "
                         "'scgpt-human'.")
    checkpoint = Path(checkpoint)
    folder = checkpoint.parent if checkpoint.is_file() else checkpoint
    if not folder.is_dir():
        raise FileNotFoundError(f"scGPT checkpoint folder {folder} does not exist.")
    weights = checkpoint if checkpoint.is_file() else folder / "best_model.pt"
    files = {"args.json": folder / "args.json", "best_model.pt": weights}
    vocab = folder / "vocab.json"
    if not vocab.is_file() and resources is not None:
        vocab = Path(resources) / "vocab.json"
    files["vocab.json"] = vocab
    missing = [f"{k} ({p})" for k, p in files.items() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"The scGPT model folder {folder} lacks {', '.join(missing)}. The official layout "
                                "is a folder with args.json, vocab.json and best_model.pt.")
    return files


def expected_keys(config: ScGPTConfig, ntoken: int) -> dict[str, tuple[int, ...]]:
    """Every parameter of the cell-embedding path with its shape, in the standard (non-flash) names."""
    d, h = config.embsize, config.d_hid
    keys: dict[str, tuple[int, ...]] = {
        "encoder.embedding.weight": (ntoken, d),
        "encoder.enc_norm.weight": (d,),
        "encoder.enc_norm.bias": (d,),
        "value_encoder.linear1.weight": (d, 1),
        "value_encoder.linear1.bias": (d,),
        "value_encoder.linear2.weight": (d, d),
        "value_encoder.linear2.bias": (d,),
        "value_encoder.norm.weight": (d,),
        "value_encoder.norm.bias": (d,),
    }
    for i in range(config.nlayers):
        p = f"transformer_encoder.layers.{i}."
        keys.update({
            p + "self_attn.in_proj_weight": (3 * d, d),
            p + "self_attn.in_proj_bias": (3 * d,),
            p + "self_attn.out_proj.weight": (d, d),
            p + "self_attn.out_proj.bias": (d,),
            p + "linear1.weight": (h, d),
            p + "linear1.bias": (h,),
            p + "linear2.weight": (d, h),
            p + "linear2.bias": (d,),
            p + "norm1.weight": (d,),
            p + "norm1.bias": (d,),
            p + "norm2.weight": (d,),
            p + "norm2.bias": (d,),
        })
    return keys


def _rename(key: str) -> str:
    for pattern, repl in _RENAMES:
        new, n = pattern.subn(repl, key)
        if n:
            return new
    return key


def map_state_dict(
    state: Mapping[str, Any], config: ScGPTConfig, n_vocab: int, *, source: str = "best_model.pt"
) -> tuple[dict[str, Any], list[str]]:
    """Place every tensor of a released state dict, or raise.

    Accepts the flash-attention names (``self_attn.Wqkv.*``, ``self_attn._impl.Wqkv.*``,
    ``self_attn._impl.out_proj.*``) and the standard ``in_proj_*`` / ``out_proj.*`` names.

    Returns
    -------
    The state dict of the embedding path (standard names, float32) and the list of keys that were dropped
    because they belong to :data:`IGNORED_PREFIXES`.

    Raises
    ------
    ValueError
        On a key that cannot be placed, a key given twice under two names, a missing key of the embedding
        path, a shape that does not match ``args.json``, or a vocabulary whose size differs from the
        embedding matrix.
    """
    import torch

    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{source} does not hold a flat state dict of tensors (the official best_model.pt does).")
    emb = state.get("encoder.embedding.weight")
    if emb is not None and emb.ndim == 2 and emb.shape[0] != n_vocab:
        raise ValueError(
            f"The vocabulary has {n_vocab} tokens (vocab.json plus <pad>/<cls>/<eoc> where absent) but the gene "
            f"embedding matrix in {source} has {emb.shape[0]} rows: vocab.json and best_model.pt do not belong to "
            "the same scGPT model. Use the vocab.json shipped in the same model folder."
        )
    want = expected_keys(config, n_vocab)
    out: dict[str, Any] = {}
    origin: dict[str, str] = {}
    ignored: list[str] = []
    unplaced: list[str] = []
    for key, value in state.items():
        if key.startswith(IGNORED_PREFIXES):
            ignored.append(key)
            continue
        name = _rename(key)
        if name not in want:
            unplaced.append(key)
            continue
        if name in out:
            raise ValueError(f"{source} holds {name!r} twice (as {origin[name]!r} and {key!r}); refusing to guess.")
        if tuple(value.shape) != want[name]:
            raise ValueError(f"{source}: {key!r} has shape {tuple(value.shape)}, but args.json (embsize "
                             f"{config.embsize}, d_hid {config.d_hid}, {n_vocab} tokens) implies {want[name]}.")
        out[name] = value.detach().to(torch.float32)
        origin[name] = key
    if unplaced:
        shown = ", ".join(unplaced[:8]) + (f", ... ({len(unplaced)} in all)" if len(unplaced) > 8 else "")
        raise ValueError(
            f"{source} holds parameters scfm cannot place in the scGPT encoder: {shown}. They may belong to an "
            f"architecture variant (batch/domain encoders, more layers than args.json's nlayers={config.nlayers}) "
            "that this adapter does not implement; scfm never drops weights silently."
        )
    missing = [k for k in want if k not in out]
    if missing:
        shown = ", ".join(missing[:8]) + (f", ... ({len(missing)} in all)" if len(missing) > 8 else "")
        raise ValueError(f"{source} lacks parameters the cell-embedding path needs: {shown}.")
    return out, ignored
