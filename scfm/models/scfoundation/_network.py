"""scFoundation's MAE-autobin network (xTrimoGene), written for inference with PyTorch SDPA.

Structure, as in the official ``mae_autobin`` model (``model/pretrainmodels/``):

* **value embedding** (auto-discretisation): a scalar expression value ``v`` becomes
  ``softmax(a * h + W2 h) @ B`` with ``h = LeakyReLU_0.1(W1 v + b1)``, ``B`` the ``bin_num`` bin vectors and
  ``a = bin_alpha``; plus a learnt position (gene) embedding with ``seq_len + 1`` rows.
* **encoder**: post-LayerNorm transformer layers (ReLU feed-forward, 4× wide), then a final LayerNorm. It
  only sees the non-zero genes of a cell (and the T and S tokens).
* **decoder** (gene-level output): all ``seq_len`` positions, the encoder output at the expressed ones and
  the value embedding of zero elsewhere, projected to the decoder width, then pre-LayerNorm Performer layers
  (softmax-kernel linear attention with a fixed random-feature projection, GELU feed-forward) with their
  own final LayerNorm, then a second LayerNorm.

:func:`build_from_checkpoint` maps every key of an official state dict onto this module and fails on any key
it cannot place (or any parameter the checkpoint lacks).
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._attention import attention, cell_spans

__all__ = ["MaeAutobinConfig", "MaeAutobin", "build_from_checkpoint", "official_config"]


class MaeAutobinConfig(dict):
    """The flattened model configuration (``model_config[model]`` updated by ``dataset_config['rnaseq']``)."""

    @property
    def seq_len(self) -> int:
        return int(self["seq_len"])


def official_config(variant: dict[str, Any]) -> MaeAutobinConfig:
    """Flatten one checkpoint variant's config the way the official ``convertconfig`` does.

    ``model_config[<model>]`` is merged with ``dataset_config['rnaseq']`` (the latter wins on duplicate keys);
    every other top-level entry (training, trainer, optimizer, scheduler, ...) is ignored.
    """
    if not isinstance(variant, dict) or "config" not in variant or "state_dict" not in variant:
        raise ValueError("A scFoundation checkpoint variant must be a dict with 'config' and 'state_dict'.")
    cfg = variant["config"]
    model_type = cfg.get("model")
    try:
        model_cfg = dict(cfg["model_config"][model_type])
    except (KeyError, TypeError):
        raise ValueError(f"The checkpoint config has no model_config[{model_type!r}].") from None
    model_cfg.update(dict(cfg.get("dataset_config", {}).get("rnaseq", {}) or {}))
    model_cfg["model_type"] = model_type
    if model_type != "mae_autobin":
        raise NotImplementedError(
            f"scfm implements scFoundation's 'mae_autobin' model; this checkpoint is a {model_type!r} model."
        )
    enc, dec = model_cfg.get("encoder", {}), model_cfg.get("decoder", {})
    if enc.get("module_type") != "transformer" or dec.get("module_type") != "performer":
        raise NotImplementedError(
            "scfm implements the released layout (transformer encoder, performer decoder); this checkpoint has "
            f"encoder {enc.get('module_type')!r} and decoder {dec.get('module_type')!r}."
        )
    return MaeAutobinConfig(model_cfg)


class ValueEmbedding(nn.Module):
    """Auto-discretisation embedding of scalar values (``AutoDiscretizationEmbedding2``)."""

    def __init__(self, dim: int, bin_num: int, bin_alpha: float):
        super().__init__()
        self.bin_alpha = float(bin_alpha)
        self.mlp = nn.Linear(1, bin_num)
        self.mlp2 = nn.Linear(bin_num, bin_num)
        self.bins = nn.Parameter(torch.empty(bin_num, dim))
        # The mask and pad vectors of pre-training; inference never produces mask or pad tokens (see model docs).
        self.mask_vector = nn.Parameter(torch.empty(1, dim))
        self.pad_vector = nn.Parameter(torch.empty(1, dim))

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` [...] (float) → embeddings [..., dim]."""
        h = F.leaky_relu(self.mlp(values.unsqueeze(-1)), 0.1)
        logits = self.bin_alpha * h + self.mlp2(h)
        return torch.softmax(logits, dim=-1) @ self.bins


class EncoderLayer(nn.Module):
    """Post-LayerNorm transformer layer (as ``nn.TransformerEncoderLayer``, ReLU, eval mode) with SDPA."""

    def __init__(self, dim: int, heads: int, ff_mult: int = 4, eps: float = 1e-5):
        super().__init__()
        if dim % heads:
            raise ValueError(f"encoder hidden_dim {dim} is not divisible by heads {heads}.")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.ff1 = nn.Linear(dim, ff_mult * dim)
        self.ff2 = nn.Linear(ff_mult * dim, dim)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.norm2 = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None, spans: list[int] | None = None) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = attention(q, k, v, mask=attn_mask, spans=spans)
        a = self.out(a.transpose(1, 2).reshape(b, n, d))
        x = self.norm1(x + a)
        return self.norm2(x + self.ff2(F.relu(self.ff1(x))))


class Encoder(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int):
        super().__init__()
        self.layers = nn.ModuleList([EncoderLayer(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` [B, n, D]; ``key_padding`` [B, n] bool, True at padded positions (None: no padding)."""
        mask = None
        if key_padding is not None and bool(key_padding.any()):
            mask = (~key_padding)[:, None, None, :]
        spans = cell_spans(key_padding)  # CPU: attention cell by cell over each cell's own tokens
        for layer in self.layers:
            x = layer(x, mask, spans)
        return self.norm(x)


class PerformerLayer(nn.Module):
    """Pre-LayerNorm Performer layer: softmax-kernel linear attention (FAVOR+, fixed features) + GELU FF."""

    def __init__(self, dim: int, heads: int, dim_head: int, nb_features: int, ff_mult: int = 4):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.dim_head = heads, dim_head
        self.attn_norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner)
        self.to_k = nn.Linear(dim, inner)
        self.to_v = nn.Linear(dim, inner)
        self.to_out = nn.Linear(inner, dim)
        self.register_buffer("projection", torch.empty(nb_features, dim_head))
        self.ff_norm = nn.LayerNorm(dim)
        self.ff1 = nn.Linear(dim, ff_mult * dim)
        self.ff2 = nn.Linear(ff_mult * dim, dim)

    def _features(self, x: torch.Tensor, *, is_query: bool, eps: float = 1e-4) -> torch.Tensor:
        """Positive random features of the softmax kernel, ``x`` [B, H, N, dh] → [B, H, N, m].

        Queries are stabilised by their own row maximum, keys by the maximum over the whole sample (all
        heads, tokens and features); the official code takes that maximum over the whole batch, which makes
        a cell's output depend on its batch-mates (up to ~2e-3 when deep and shallow cells share a batch), so
        here it is per cell — identical to the official one-cell-at-a-time ``output_type='gene'``.
        """
        c = self.dim_head ** -0.25
        ratio = self.projection.shape[0] ** -0.5
        proj = (c * x) @ self.projection.to(x.dtype).t()
        diag = (x * x).sum(-1, keepdim=True) * (0.5 * c * c)
        if is_query:
            stab = proj.amax(dim=-1, keepdim=True)
        else:
            stab = proj.amax(dim=(1, 2, 3), keepdim=True)
        return ratio * (torch.exp(proj - diag - stab) + eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        h = self.attn_norm(x)

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.heads, self.dim_head).transpose(1, 2)

        q = self._features(split(self.to_q(h)), is_query=True)
        k = self._features(split(self.to_k(h)), is_query=False)
        v = split(self.to_v(h))
        context = k.transpose(-1, -2) @ v  # [B, H, m, dh]
        denom = q @ k.sum(dim=-2).unsqueeze(-1)  # [B, H, N, 1]
        a = (q @ context) / denom
        x = x + self.to_out(a.transpose(1, 2).reshape(b, n, self.heads * self.dim_head))
        return x + self.ff2(F.gelu(self.ff1(self.ff_norm(x))))


class PerformerDecoder(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, nb_features: int):
        super().__init__()
        self.layers = nn.ModuleList([PerformerLayer(dim, heads, dim_head, nb_features) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)


class MaeAutobin(nn.Module):
    """The full network: value/position embedding, encoder, and the decoder path for gene-level output."""

    def __init__(self, config: MaeAutobinConfig, *, nb_features: int | None = None):
        super().__init__()
        enc, dec = config["encoder"], config["decoder"]
        self.config = config
        self.seq_len = int(config["seq_len"])
        dim, ddim = int(enc["hidden_dim"]), int(dec["hidden_dim"])
        dh = int(dec.get("dim_head", 64))
        nb = int(nb_features) if nb_features is not None else int(dh * math.log(dh))
        self.dim, self.decoder_dim = dim, ddim
        self.value_emb = ValueEmbedding(dim, int(config["bin_num"]), float(config.get("bin_alpha", 1.0)))
        self.pos_emb = nn.Embedding(self.seq_len + 1, dim)
        self.encoder = Encoder(dim, int(enc["depth"]), int(enc["heads"]))
        self.decoder_embed = nn.Linear(dim, ddim)
        self.decoder = PerformerDecoder(ddim, int(dec["depth"]), int(dec["heads"]), dh, nb)
        self.norm = nn.LayerNorm(ddim)
        self.to_final = nn.Linear(ddim, 1)  # expression head of pre-training (unused for embeddings)

    def encode(self, values: torch.Tensor, positions: torch.Tensor, key_padding: torch.Tensor | None = None):
        """Encoder output [B, n, D] for gathered non-zero values [B, n] at gene positions [B, n]."""
        x = self.value_emb(values) + self.pos_emb(positions)
        return self.encoder(x, key_padding)

    def decode(self, dense_values: torch.Tensor, enc_out: torch.Tensor, enc_index: torch.Tensor) -> torch.Tensor:
        """Gene-level states [B, seq_len, Dd] (after the second LayerNorm).

        ``dense_values`` [B, seq_len]: all values (zeros included); ``enc_out`` [B, n, D] with ``enc_index``
        [B, n] the positions it replaces (``-1`` for padding: ignored).
        """
        b, L = dense_values.shape
        x = self.value_emb(dense_values)
        valid = enc_index >= 0
        rows = torch.arange(b, device=x.device)[:, None].expand_as(enc_index)[valid]
        x[rows, enc_index[valid]] = enc_out[valid].to(x.dtype)
        x = x + self.pos_emb.weight[:L].to(x.dtype)
        return self.norm(self.decoder(self.decoder_embed(x)))


# ---- official state dict → this module -------------------------------------------------------------------------

_RULES: tuple[tuple[str, str], ...] = (
    (r"token_emb\.mlp\.(weight|bias)", r"value_emb.mlp.\1"),
    (r"token_emb\.mlp2\.(weight|bias)", r"value_emb.mlp2.\1"),
    (r"token_emb\.emb\.weight", "value_emb.bins"),
    (r"token_emb\.emb_mask\.weight", "value_emb.mask_vector"),
    (r"token_emb\.emb_pad\.weight", "value_emb.pad_vector"),
    (r"pos_emb\.weight", "pos_emb.weight"),
    (r"encoder\.transformer_encoder\.(\d+)\.self_attn\.in_proj_(weight|bias)", r"encoder.layers.\1.qkv.\2"),
    (r"encoder\.transformer_encoder\.(\d+)\.self_attn\.out_proj\.(weight|bias)", r"encoder.layers.\1.out.\2"),
    (r"encoder\.transformer_encoder\.(\d+)\.linear1\.(weight|bias)", r"encoder.layers.\1.ff1.\2"),
    (r"encoder\.transformer_encoder\.(\d+)\.linear2\.(weight|bias)", r"encoder.layers.\1.ff2.\2"),
    (r"encoder\.transformer_encoder\.(\d+)\.norm([12])\.(weight|bias)", r"encoder.layers.\1.norm\2.\3"),
    (r"encoder\.norm\.(weight|bias)", r"encoder.norm.\1"),
    (r"decoder_embed\.(weight|bias)", r"decoder_embed.\1"),
    (r"decoder\.performer\.net\.layers\.(\d+)\.0\.norm\.(weight|bias)", r"decoder.layers.\1.attn_norm.\2"),
    (r"decoder\.performer\.net\.layers\.(\d+)\.0\.fn\.fast_attention\.projection_matrix",
     r"decoder.layers.\1.projection"),
    (r"decoder\.performer\.net\.layers\.(\d+)\.0\.fn\.(to_q|to_k|to_v|to_out)\.(weight|bias)",
     r"decoder.layers.\1.\2.\3"),
    (r"decoder\.performer\.net\.layers\.(\d+)\.1\.norm\.(weight|bias)", r"decoder.layers.\1.ff_norm.\2"),
    (r"decoder\.performer\.net\.layers\.(\d+)\.1\.fn\.fn\.w([12])\.(weight|bias)", r"decoder.layers.\1.ff\2.\3"),
    (r"decoder\.norm\.(weight|bias)", r"decoder.norm.\1"),
    (r"norm\.(weight|bias)", r"norm.\1"),
    (r"to_final\.(weight|bias)", r"to_final.\1"),
)
# Training-only state with no effect in eval mode: the Performer's feature-redraw counter.
_IGNORED = (re.compile(r"decoder\.performer\.calls_since_last_redraw"),)
_COMPILED = tuple((re.compile(p), r) for p, r in _RULES)


def translate_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official names (with or without the ``model.`` prefix) → this module's names; errors on unknown keys."""
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in state_dict.items():
        name = str(key)
        # convertconfig keeps what follows the first 'model.'
        name = name.split("model.", 1)[1] if "model." in name else name
        if any(p.fullmatch(name) for p in _IGNORED):
            continue
        for pat, repl in _COMPILED:
            if pat.fullmatch(name):
                out[pat.sub(repl, name)] = value
                break
        else:
            unknown.append(str(key))
    if unknown:
        raise ValueError(
            f"The scFoundation checkpoint has {len(unknown)} weights scfm cannot place (refusing to skip them): "
            f"{unknown[:10]}{' ...' if len(unknown) > 10 else ''}"
        )
    return out


def build_from_checkpoint(variant: dict[str, Any]) -> MaeAutobin:
    """A :class:`MaeAutobin` in eval mode holding one checkpoint variant's weights (strict, shape-checked)."""
    config = official_config(variant)
    sd = translate_state_dict(variant["state_dict"])
    proj = [v for k, v in sd.items() if k.endswith(".projection")]
    nb = int(proj[0].shape[0]) if proj else None
    pos = sd.get("pos_emb.weight")
    if pos is not None and pos.shape[0] != config.seq_len + 1:
        raise ValueError(
            f"pos_emb has {pos.shape[0]} rows but the config's seq_len is {config.seq_len} (expected seq_len + 1)."
        )
    with torch.device("meta"):
        model = MaeAutobin(config, nb_features=nb)
    missing = sorted(set(model.state_dict()) - set(sd))
    if missing:
        raise ValueError(f"The scFoundation checkpoint lacks {len(missing)} weights: {missing[:10]}")
    model.load_state_dict(sd, strict=True, assign=True)
    model.float()
    return model.eval().requires_grad_(False)
