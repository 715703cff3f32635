"""Scaled-dot-product attention shared by the transformer adapters, with a cell-by-cell path for padded batches.

A masked batched call scores every query against ``L_max`` keys in every cell of the batch. On CPU it is faster
to let each cell of a right-padded batch attend over its own tokens only (same values: the masked keys add
nothing); on accelerators one batched call is faster, so the cell-by-cell path is used on CPU only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["attention", "cell_spans"]


def cell_spans(key_padding: Tensor | None) -> list[int] | None:
    """Per-cell lengths for :func:`attention`'s cell-by-cell path, or ``None`` for one batched call.

    Lengths are returned for a batch on CPU with some padding, all of it at the end of the rows
    (``key_padding`` True at padded positions).
    """
    import torch

    if key_padding is None or key_padding.device.type != "cpu" or not bool(key_padding.any()):
        return None
    lengths = (~key_padding).sum(1)
    if not torch.equal(key_padding, torch.arange(key_padding.shape[1]) >= lengths[:, None]):
        return None  # padding not only at the end: the mask is needed
    return lengths.tolist()


def attention(q: Tensor, k: Tensor, v: Tensor, *, mask: Tensor | None = None, spans: list[int] | None = None,
              scale: float | None = None) -> Tensor:
    """:func:`torch.nn.functional.scaled_dot_product_attention` of ``[B, heads, L_q, d]`` queries.

    With ``spans`` (from :func:`cell_spans`), cell ``i`` attends over its first ``spans[i]`` keys and ``mask``
    is not used; outputs at its padded query positions are zero (callers read positions ``< spans[i]`` only).
    """
    import torch.nn.functional as F

    if spans is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    out = q.new_zeros(q.shape)
    for i, n in enumerate(spans):
        nq = min(n, q.shape[2])
        out[i : i + 1, :, :nq] = F.scaled_dot_product_attention(
            q[i : i + 1, :, :nq], k[i : i + 1, :, :n], v[i : i + 1, :, :n], scale=scale
        )
    return out
