"""Memory-bounded global attention for SAM's image encoder.

SAM's global-attention blocks build the full (heads, N, N) attention map: for vit_b at
1024 px that is 12 x 4096 x 4096 floats, 805 MB, and the relative-position sum and
softmax each make another. Computing the same attention a band of query rows at a
time bounds that to a few hundred MB and gives the same result (the same operations
on fewer rows), so the encoder fits in a 3 GB budget on a CPU.
"""

from __future__ import annotations

from functools import partial

import torch
from segment_anything.modeling.image_encoder import Attention, get_rel_pos
from torch import nn

# Queries per band: 512 keeps each (heads x band x N) buffer near 100 MB for vit_b.
QUERIES_PER_BAND = 512


def _banded_forward(attn: Attention, x: torch.Tensor, queries_per_band: int) -> torch.Tensor:
    batch, height, width, _ = x.shape
    heads = attn.num_heads
    tokens = height * width
    qkv = attn.qkv(x).reshape(batch, tokens, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.reshape(3, batch * heads, tokens, -1).unbind(0)
    head_dim = q.shape[-1]
    rows_per_band = max(1, queries_per_band // width)
    if attn.use_rel_pos:
        rel_h = get_rel_pos(height, height, attn.rel_pos_h)  # (H, H, head_dim)
        rel_w = get_rel_pos(width, width, attn.rel_pos_w)  # (W, W, head_dim)
    key_t = k.transpose(-2, -1)
    out = torch.empty_like(q)
    for top in range(0, height, rows_per_band):
        bottom = min(height, top + rows_per_band)
        rows = slice(top * width, bottom * width)
        q_band = q[:, rows]
        scores = (q_band * attn.scale) @ key_t
        if attn.use_rel_pos:
            q_grid = q_band.reshape(batch * heads, bottom - top, width, head_dim)
            bias_h = torch.einsum("bhwc,hkc->bhwk", q_grid, rel_h[top:bottom])
            bias_w = torch.einsum("bhwc,wkc->bhwk", q_grid, rel_w)
            scores = scores.view(batch * heads, bottom - top, width, height, width)
            scores = (scores + bias_h[..., None] + bias_w[..., None, :]).view(
                batch * heads, (bottom - top) * width, tokens
            )
        out[:, rows] = scores.softmax(dim=-1) @ v
    out = out.view(batch, heads, height, width, -1).permute(0, 2, 3, 1, 4).reshape(batch, height, width, -1)
    return attn.proj(out)


def use_banded_global_attention(encoder: nn.Module, queries_per_band: int = QUERIES_PER_BAND) -> int:
    """Make the encoder's global-attention blocks compute attention in bands of queries.

    Windowed blocks (small maps) are left as they are. Returns how many blocks changed.
    """
    changed = 0
    for block in encoder.blocks:
        if block.window_size == 0 and isinstance(block.attn, Attention):
            # An instance attribute shadows Attention.forward; hooks still run around it.
            block.attn.forward = partial(_banded_forward, block.attn, queries_per_band=queries_per_band)
            changed += 1
    return changed
