"""The Geneformer encoder: a BERT encoder (Hugging Face ``BertForMaskedLM`` layout) written in plain torch.

The released checkpoints are ``BertForMaskedLM``: embeddings = word + absolute position + token-type-0
embedding, LayerNorm; each layer is post-LayerNorm (self-attention → dense → residual → LayerNorm; intermediate
activation → dense → residual → LayerNorm); attention scores are scaled by ``1/sqrt(head_dim)`` and padded keys
are masked out. Attention runs through :func:`torch.nn.functional.scaled_dot_product_attention`.

Only the encoder is built. The masked-language-model head (state-dict keys ``cls.*``) is never used for
embeddings or perturbation and is ignored explicitly; any other unknown or missing key is an error.

``hidden_states(ids, lengths, layer=k)`` returns what Hugging Face calls ``outputs.hidden_states[k]``
(``k = 0``: the embedding output, ``k = n``: the output of layer ``n``) and runs only the first ``k`` layers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..._io.safe import load_state_dict
from .._attention import attention, cell_spans

__all__ = ["BertConfig", "GeneformerNetwork", "load_network", "find_weights", "pad_batch", "layer_to_quant"]

_ACTIVATIONS = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
}


@dataclass(frozen=True)
class BertConfig:
    """The fields of a Hugging Face ``config.json`` that the encoder uses."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    hidden_act: str = "relu"
    max_position_embeddings: int = 2048
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    position_embedding_type: str = "absolute"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BertConfig:
        names = {f.name for f in fields(cls)}
        cfg = cls(**{k: v for k, v in d.items() if k in names})
        if cfg.position_embedding_type != "absolute":
            raise ValueError(f"position_embedding_type={cfg.position_embedding_type!r} is not supported "
                             "(Geneformer uses 'absolute').")
        if cfg.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"hidden_act={cfg.hidden_act!r} is not supported ({', '.join(_ACTIVATIONS)}).")
        if cfg.hidden_size % cfg.num_attention_heads:
            raise ValueError("hidden_size must be a multiple of num_attention_heads.")
        mt = d.get("model_type", "bert")
        if mt != "bert":
            raise ValueError(f"config.json has model_type={mt!r}; Geneformer checkpoints are 'bert'.")
        return cfg

    @classmethod
    def from_json(cls, path: str | Path) -> BertConfig:
        with open(path) as f:
            return cls.from_dict(json.load(f))


class _Layer(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        h = cfg.hidden_size
        self.n_heads = cfg.num_attention_heads
        self.query = nn.Linear(h, h)
        self.key = nn.Linear(h, h)
        self.value = nn.Linear(h, h)
        self.attn_out = nn.Linear(h, h)
        self.attn_norm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.intermediate = nn.Linear(h, cfg.intermediate_size)
        self.output = nn.Linear(cfg.intermediate_size, h)
        self.out_norm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.act = _ACTIVATIONS[cfg.hidden_act]

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, spans: list[int] | None = None,
                first_only: bool = False) -> torch.Tensor:
        """One encoder layer; ``first_only``: compute only position 0 (keys and values still use every token)."""
        b, L, h = x.shape
        nh, hd = self.n_heads, h // self.n_heads

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, t.shape[1], nh, hd).transpose(1, 2)

        x_out = x[:, :1] if first_only else x
        q, k, v = heads(self.query(x_out)), heads(self.key(x)), heads(self.value(x))
        a = attention(q, k, v, mask=mask, spans=spans, scale=1.0 / math.sqrt(hd))
        a = a.transpose(1, 2).reshape(b, q.shape[2], h)
        x = self.attn_norm(self.attn_out(a) + x_out)
        return self.out_norm(self.output(self.act(self.intermediate(x))) + x)


class GeneformerNetwork(nn.Module):
    """BERT encoder of a Geneformer checkpoint (no MLM head)."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.config = cfg
        h = cfg.hidden_size
        self.word_embeddings = nn.Embedding(cfg.vocab_size, h, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, h)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, h)
        self.emb_norm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.layers = nn.ModuleList(_Layer(cfg) for _ in range(cfg.num_hidden_layers))
        self.eval()

    @property
    def num_layers(self) -> int:
        return self.config.num_hidden_layers

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    def layer_to_quant(self, emb_layer: int = -1) -> int:
        """Hidden-state index for Geneformer's ``emb_layer`` (see :func:`layer_to_quant`)."""
        return layer_to_quant(self.num_layers, emb_layer)

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        L = input_ids.shape[1]
        if L > self.config.max_position_embeddings:
            raise ValueError(f"Input of {L} tokens exceeds max_position_embeddings="
                             f"{self.config.max_position_embeddings}.")
        pos = torch.arange(L, device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.position_embeddings(pos)[None] + self.token_type_embeddings.weight[0]
        return self.emb_norm(x)

    @staticmethod
    def key_mask(lengths: torch.Tensor, L: int) -> torch.Tensor | None:
        """Boolean attention mask ``[B, 1, 1, L]`` (True = attend), or ``None`` when no position is padding."""
        if bool((lengths >= L).all()):
            return None
        return (torch.arange(L, device=lengths.device)[None, :] < lengths[:, None])[:, None, None, :]

    def hidden_states(
        self, input_ids: torch.Tensor, lengths: Any, *, layer: int, first_only: bool = False
    ) -> torch.Tensor:
        """Hidden states ``[B, L, H]`` after ``layer`` encoder layers (``outputs.hidden_states[layer]``).

        ``first_only=True`` returns ``[B, 1, H]``, position 0 only (the ``<cls>`` state): the last layer run
        then computes only that query, which saves most of its work.

        Rows beyond a cell's length (padding) hold finite values that are not the official ones (on CPU each
        cell attends over its own tokens only); read positions ``< lengths`` only.

        Parameters
        ----------
        input_ids
            ``LongTensor [B, L]``, right-padded (the pad value does not matter: padded keys are masked).
        lengths
            Number of real tokens of each row (tensor, array or list).
        layer
            0 = embedding output, ``num_layers`` = last layer. Use :func:`layer_to_quant` for Geneformer's
            ``emb_layer`` convention.
        """
        if not 0 <= layer <= self.num_layers:
            raise ValueError(f"layer must be in 0..{self.num_layers}, got {layer}.")
        input_ids = input_ids.to(self.word_embeddings.weight.device)
        lengths = torch.as_tensor(np.asarray(lengths), device=input_ids.device)
        x = self.embed_tokens(input_ids)
        mask = self.key_mask(lengths, input_ids.shape[1])
        spans = cell_spans(None if mask is None else ~mask[:, 0, 0, :])  # CPU: attention cell by cell
        for i, blk in enumerate(self.layers[:layer]):
            x = blk(x, mask, spans, first_only=first_only and i == layer - 1)
        return x[:, :1] if first_only else x

    def forward(self, input_ids: torch.Tensor, lengths: Any, layer: int | None = None) -> torch.Tensor:
        return self.hidden_states(input_ids, lengths, layer=self.num_layers if layer is None else layer)

    # ---- weights --------------------------------------------------------------------------------------------
    def load_hf_state_dict(self, state: dict[str, torch.Tensor], *, source: str = "checkpoint") -> None:
        """Load a Hugging Face ``BertForMaskedLM`` (or ``BertModel``) state dict; strict except for ``cls.*``."""
        prefix = "bert." if any(k.startswith("bert.") for k in state) else ""
        ignored_exact = {f"{prefix}embeddings.position_ids"}  # a non-trainable buffer in old checkpoints
        mapped: dict[str, torch.Tensor] = {}
        unknown: list[str] = []
        for k, v in state.items():
            if k.startswith("cls.") or k in ignored_exact:
                continue  # masked-LM head / position-id buffer: not used
            if not k.startswith(prefix):
                unknown.append(k)
                continue
            name = _hf_to_local(k[len(prefix):])
            if name is None:
                unknown.append(k)
            else:
                mapped[name] = v
        own = self.state_dict()
        missing = sorted(set(own) - set(mapped))
        if unknown or missing:
            raise ValueError(
                f"{source} does not match the Geneformer BERT encoder: "
                + (f"unexpected keys {unknown[:8]}{' …' if len(unknown) > 8 else ''}; " if unknown else "")
                + (f"missing keys {missing[:8]}{' …' if len(missing) > 8 else ''}" if missing else "")
            )
        for k, v in mapped.items():
            if tuple(v.shape) != tuple(own[k].shape):
                raise ValueError(f"{source}: {k} has shape {tuple(v.shape)}, the config implies {tuple(own[k].shape)}.")
        self.load_state_dict({k: v.to(own[k].dtype) for k, v in mapped.items()}, strict=True)


_EMB = {
    "embeddings.word_embeddings.weight": "word_embeddings.weight",
    "embeddings.position_embeddings.weight": "position_embeddings.weight",
    "embeddings.token_type_embeddings.weight": "token_type_embeddings.weight",
    "embeddings.LayerNorm.weight": "emb_norm.weight",
    "embeddings.LayerNorm.bias": "emb_norm.bias",
    # very old checkpoints name LayerNorm parameters gamma/beta
    "embeddings.LayerNorm.gamma": "emb_norm.weight",
    "embeddings.LayerNorm.beta": "emb_norm.bias",
}
_LAYER = {
    "attention.self.query": "query",
    "attention.self.key": "key",
    "attention.self.value": "value",
    "attention.output.dense": "attn_out",
    "attention.output.LayerNorm": "attn_norm",
    "intermediate.dense": "intermediate",
    "output.dense": "output",
    "output.LayerNorm": "out_norm",
}


def _hf_to_local(k: str) -> str | None:
    if k in _EMB:
        return _EMB[k]
    parts = k.split(".")
    if len(parts) >= 5 and parts[0] == "encoder" and parts[1] == "layer" and parts[2].isdigit():
        mod, param = ".".join(parts[3:-1]), parts[-1]
        param = {"gamma": "weight", "beta": "bias"}.get(param, param)
        if mod in _LAYER and param in ("weight", "bias"):
            return f"layers.{parts[2]}.{_LAYER[mod]}.{param}"
    return None


def find_weights(checkpoint: Path) -> Path:
    """The weights file of a model folder: ``model.safetensors`` preferred, else ``pytorch_model.bin``."""
    if checkpoint.is_file():
        return checkpoint
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (checkpoint / name).is_file():
            return checkpoint / name
    if any(checkpoint.glob("*.index.json")):
        raise NotImplementedError(f"{checkpoint} holds a sharded checkpoint; Geneformer releases are single files.")
    raise FileNotFoundError(f"No model.safetensors or pytorch_model.bin in {checkpoint}.")


def load_network(checkpoint: str | Path, *, device: Any = "cpu") -> tuple[GeneformerNetwork, dict[str, Path]]:
    """Build the encoder from a Hugging Face model folder (``config.json`` + weights).

    Returns the network (eval mode, on ``device``) and the files read.
    """
    checkpoint = Path(checkpoint).expanduser()
    folder = checkpoint.parent if checkpoint.is_file() else checkpoint
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"No config.json in {folder}: pass the folder of a Hugging Face Geneformer model.")
    cfg = BertConfig.from_json(cfg_path)
    weights = find_weights(checkpoint)
    net = GeneformerNetwork(cfg)
    net.load_hf_state_dict(load_state_dict(weights), source=str(weights))
    return net.to(device).eval(), {"config.json": cfg_path, weights.name: weights}


def layer_to_quant(num_layers: int, emb_layer: int = -1) -> int:
    """Index into the hidden states for Geneformer's ``emb_layer`` (quirk E1).

    ``emb_layer=-1`` (official default) = ``num_layers - 1``: the output of the second-to-last layer;
    ``emb_layer=0``: the last layer. Other negative values go further down (the official code accepts only
    -1 and 0).
    """
    emb_layer = int(emb_layer)
    if emb_layer > 0 or emb_layer < -num_layers:
        raise ValueError(f"emb_layer must be in {-num_layers}..0 (-1: second-to-last layer, 0: last), got {emb_layer}.")
    return num_layers + emb_layer


def pad_batch(cells: Sequence[np.ndarray], pad_id: int = 0, device: Any = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token arrays to ``(LongTensor [B, max_len], lengths LongTensor [B])``."""
    lengths = np.fromiter((len(c) for c in cells), dtype=np.int64, count=len(cells))
    L = int(lengths.max()) if len(cells) else 0
    out = np.full((len(cells), L), pad_id, dtype=np.int64)
    for i, c in enumerate(cells):
        out[i, : len(c)] = c
    return torch.from_numpy(out).to(device), torch.from_numpy(lengths).to(device)
