"""The scGPT encoder (``TransformerModel._encode``) in plain PyTorch with scaled-dot-product attention.

Only the path that produces cell and gene embeddings: gene encoder (embedding + LayerNorm), continuous value
encoder, post-norm transformer encoder layers. Parameter names equal the official non-flash state dict, so
a mapped state dict loads with ``strict=True``. No flash-attn, no torchtext, no scgpt import.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._attention import attention, cell_spans
from ._checkpoint import ScGPTConfig

__all__ = ["ScGPTEncoder"]


class GeneEncoder(nn.Module):
    """``LayerNorm(Embedding(gene))``."""

    def __init__(self, ntoken: int, d_model: int):
        super().__init__()
        self.embedding = nn.Embedding(ntoken, d_model)
        self.enc_norm = nn.LayerNorm(d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.enc_norm(self.embedding(x))


class ContinuousValueEncoder(nn.Module):
    """``LayerNorm(Linear2(ReLU(Linear1(clamp(x, max=max_value)))))`` of each (binned) expression value."""

    def __init__(self, d_model: int, max_value: float = 512.0):
        super().__init__()
        self.linear1 = nn.Linear(1, d_model)
        self.linear2 = nn.Linear(d_model, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.max_value = max_value

    def forward(self, x: Tensor) -> Tensor:
        x = torch.clamp(x.unsqueeze(-1), max=self.max_value)
        return self.norm(self.linear2(F.relu(self.linear1(x))))


class SelfAttention(nn.Module):
    """Multi-head self-attention with packed ``in_proj`` weights (rows: query, key, value) and SDPA."""

    def __init__(self, d_model: int, nhead: int):
        super().__init__()
        self.nhead = nhead
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d_model))
        self.out_proj = nn.Linear(d_model, d_model)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: Tensor, attn_mask: Tensor | None, first_only: bool = False,
                spans: list[int] | None = None) -> Tensor:
        b, n, d = x.shape
        h = self.nhead
        w, bias = self.in_proj_weight, self.in_proj_bias
        if first_only:  # only the first query (the <cls> token) is needed
            q = F.linear(x[:, :1], w[:d], bias[:d])
            k, v = F.linear(x, w[d:], bias[d:]).chunk(2, dim=-1)
        else:
            q, k, v = F.linear(x, w, bias).chunk(3, dim=-1)
        q = q.unflatten(-1, (h, d // h)).transpose(1, 2)
        k = k.unflatten(-1, (h, d // h)).transpose(1, 2)
        v = v.unflatten(-1, (h, d // h)).transpose(1, 2)
        o = attention(q, k, v, mask=attn_mask, spans=spans)
        return self.out_proj(o.transpose(1, 2).flatten(-2))


class EncoderLayer(nn.Module):
    """Post-norm transformer layer (``nn.TransformerEncoderLayer`` defaults: ReLU, eps 1e-5), no dropout."""

    def __init__(self, d_model: int, nhead: int, d_hid: int):
        super().__init__()
        self.self_attn = SelfAttention(d_model, nhead)
        self.linear1 = nn.Linear(d_model, d_hid)
        self.linear2 = nn.Linear(d_hid, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, x: Tensor, attn_mask: Tensor | None, first_only: bool = False,
                spans: list[int] | None = None) -> Tensor:
        x = self.norm1(_add(self.self_attn(x, attn_mask, first_only, spans), x[:, :1] if first_only else x))
        return self.norm2(_add(self.linear2(F.relu(self.linear1(x), inplace=True)), x))


def _add(out: Tensor, residual: Tensor) -> Tensor:
    """``out + residual``, in place into the fresh ``out`` when the dtypes allow (inference only)."""
    if out.dtype == residual.dtype and not torch.is_grad_enabled():
        return out.add_(residual)
    return out + residual


class TransformerEncoder(nn.Module):
    def __init__(self, d_model: int, nhead: int, d_hid: int, nlayers: int):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(d_model, nhead, d_hid) for _ in range(nlayers))


class ScGPTEncoder(nn.Module):
    """The encoder of scGPT's ``TransformerModel`` (no positional encoding, no batch or domain norm)."""

    def __init__(self, config: ScGPTConfig, ntoken: int):
        super().__init__()
        self.config = config
        d = config.embsize
        self.encoder = GeneEncoder(ntoken, d)
        self.value_encoder = ContinuousValueEncoder(d, config.max_value)
        self.transformer_encoder = TransformerEncoder(d, config.nheads, config.d_hid, config.nlayers)
        nn.init.uniform_(self.encoder.embedding.weight, -0.1, 0.1)

    @staticmethod
    def attention_mask(key_padding: Tensor | None) -> Tensor | None:
        """SDPA boolean mask (True = attend) from a key padding mask (True = padding); None if nothing is padded."""
        if key_padding is None or not bool(key_padding.any()):
            return None
        return (~key_padding)[:, None, None, :]

    @staticmethod
    def cell_spans(key_padding: Tensor | None, device: torch.device) -> list[int] | None:
        """Per-cell lengths of a right-padded batch on CPU (attention then goes cell by cell), else ``None``."""
        return cell_spans(key_padding if device.type == "cpu" else None)

    def embed_inputs(self, genes: Tensor, values: Tensor) -> Tensor:
        """Input of the first layer: gene-token embedding + value embedding."""
        return self.encoder(genes) + self.value_encoder(values)

    def forward(self, genes: Tensor, values: Tensor, key_padding: Tensor | None = None) -> Tensor:
        """Raw (not normalised) ``<cls>`` output, shape ``(batch, embsize)``.

        The last layer computes only the ``<cls>`` query: the other positions of its output are not used, and
        keys/values of all positions are still computed, so the result equals the full layer's ``<cls>`` row.
        """
        x = self.embed_inputs(genes, values)
        mask = self.attention_mask(key_padding)
        spans = self.cell_spans(key_padding, x.device)
        layers = self.transformer_encoder.layers
        for i, layer in enumerate(layers):
            x = layer(x, mask, first_only=i == len(layers) - 1, spans=spans)
        return x[:, 0].float()

    def stages(self, genes: Tensor, values: Tensor, key_padding: Tensor | None = None) -> dict[str, Tensor]:
        """Every intermediate of the encoder (for parity checks): gene_emb, value_emb, total_emb, layer{i}_out."""
        out = {"gene_emb": self.encoder(genes), "value_emb": self.value_encoder(values)}
        x = out["total_emb"] = out["gene_emb"] + out["value_emb"]
        mask = self.attention_mask(key_padding)
        for i, layer in enumerate(self.transformer_encoder.layers):
            x = out[f"layer{i}_out"] = layer(x, mask)
        out["encode_out"] = x
        return out
