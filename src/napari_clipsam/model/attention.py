"""SAM's image-encoder attention through ``scaled_dot_product_attention``, with SAM's results.

SAM adds a decomposed relative-position term to its attention scores; here it is given
to ``torch.nn.functional.scaled_dot_product_attention`` as an additive float bias, so
that fused kernels (memory-efficient on CUDA, flash on CPU) compute softmax and the
weighted sum without writing the scores. The bias of query (r, w) on key (k, l) is the
sum of two small terms over key rows and key columns, built in the query's dtype.

Global attention (every token to every token) differs per device, chosen per call from
the input (``x.is_cuda``) because the model is built on CPU and moved afterwards:

- CUDA: all queries in one call. The bias is (B, heads, N, N), 403 MB for one vit_b
  image at 1024 px in bf16, and one fused call replaces the dozens of small kernels a
  band loop launches (a GPU pass of vit_b is bound by launches).
- elsewhere: bands of 256 queries, which keep the bias at (heads, 256, N), about
  50 MB, in one buffer the bands share, instead of SAM's three (heads, N, N) maps of
  805 MB each. On a 2-core CPU (quiet, 2 threads) one vit_b global attention at 1024 px
  takes 0.49 s and adds 122 MiB with 256 queries per band, as fast as 512 (174 MiB),
  0.52 s with 128 (88 MiB), and 0.61 s and 863 MiB in one call
  (``python benchmarks/bench_attention.py``).
  Before the bias was written in its own layout into a buffer the bands share, bands of
  512 took 2.0 s, most of it copying and faulting in a fresh bias per band.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention, get_rel_pos
from torch import nn

from .memory import in_parts

# Queries per band: 256 keeps the (heads x band x N) bias near 50 MB for vit_b, at no cost in speed.
QUERIES_PER_BAND = 256


def _qkv(attn: Attention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries, keys and values (B, heads, N, head_dim) of tokens ``x`` (B, H, W, C), as SAM splits them."""
    batch, height, width, _ = x.shape
    qkv = attn.qkv(x).reshape(batch, height * width, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    return qkv.unbind(0)


def _merge_heads(out: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, heads, N, head_dim) -> (B, H, W, heads * head_dim), SAM's order of channels."""
    batch, heads = out.shape[:2]
    return out.reshape(batch, heads, height, width, -1).permute(0, 2, 3, 1, 4).reshape(batch, height, width, -1)


def rel_pos_tables(attn: Attention, height: int, width: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's relative-position embeddings for an (H, W) grid: (H, H, head_dim) over rows, (W, W, head_dim) over columns."""
    return (get_rel_pos(height, height, attn.rel_pos_h).to(dtype),
            get_rel_pos(width, width, attn.rel_pos_w).to(dtype))


def rel_pos_bias(attn: Attention, q: torch.Tensor, height: int, width: int, top: int = 0,
                 tables: tuple[torch.Tensor, torch.Tensor] | None = None, out: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """SAM's relative-position term as an additive attention bias, in q's dtype.

    Args:
        q: (B, heads, R * W, head_dim) unscaled queries of the grid rows ``top..top+R``
            of an (H, W) token grid.
        tables: :func:`rel_pos_tables` of this grid, when a caller computes them once for all bands.
        out: a flat buffer of at least the bias's size to write it into (bands reuse one:
            a new 100 MB buffer per band cost more in page faults than the sum itself).

    Returns:
        (B, heads, R * W, H * W): the bias of query (r, w) on key (k, l) is the sum of a
        term over key rows, [r, w, k], and one over key columns, [r, w, l], as in
        segment_anything's ``add_decomposed_rel_pos``.
    """
    rows = q.shape[-2] // width
    q_grid = q.reshape(*q.shape[:-2], rows, width, q.shape[-1])
    rel_h, rel_w = rel_pos_tables(attn, height, width, q.dtype) if tables is None else tables
    # Both terms small and contiguous, so that their sum is written once, in the bias's own
    # layout (einsum's outputs are permuted views: a sum of those takes their layout, and
    # the reshape below then copied the whole bias again).
    over_rows = torch.einsum("...hwc,hkc->...hwk", q_grid, rel_h[top : top + rows]).contiguous()  # (B, heads, R, W, H)
    over_columns = torch.einsum("...hwc,wkc->...hwk", q_grid, rel_w).contiguous()  # (B, heads, R, W, W)
    shape = (*q.shape[:-1], height * width)
    if out is not None:
        out = out[: math.prod(shape)].view(*over_rows.shape, width)
    bias = torch.add(over_rows[..., None], over_columns[..., None, :], out=out)  # (B, heads, R, W, H, W)
    return bias.view(shape)


def _sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
                    scale: float) -> torch.Tensor:
    # One name for the fused call, looked up at each forward: tests count the calls here.
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)


def _project(attn: Attention, tokens: torch.Tensor, part: int) -> torch.Tensor:
    """Queries (0), keys (1) or values (2), (B, heads, n, head_dim), of tokens (B, n, C): one third of SAM's qkv."""
    width = attn.qkv.out_features // 3
    rows = slice(part * width, (part + 1) * width)
    bias = None if attn.qkv.bias is None else attn.qkv.bias[rows]
    return F.linear(tokens, attn.qkv.weight[rows], bias).unflatten(-1, (attn.num_heads, -1)).transpose(1, 2)


def sdpa_forward(attn: Attention, x: torch.Tensor, queries_per_band: int | None = None) -> torch.Tensor:
    """SAM's attention through ``scaled_dot_product_attention``, the relative positions as a bias.

    ``queries_per_band`` None: all queries in one call (CUDA); a number: bands of query
    rows. Keys and values are projected once; each band's queries, bias and output in
    turn, its output written into place, so that no (heads, N, N) map nor the queries of
    all tokens are held at once.
    """
    batch, height, width, channels = x.shape
    rows_per_band = height if queries_per_band is None else max(1, queries_per_band // width)
    if rows_per_band >= height:
        q, k, v = _qkv(attn, x)
        bias = rel_pos_bias(attn, q, height, width) if attn.use_rel_pos else None
        return attn.proj(_merge_heads(_sdpa_attention(q, k, v, bias, attn.scale), height, width))
    tokens = x.reshape(batch, height * width, channels)
    k, v = _project(attn, tokens, 1), _project(attn, tokens, 2)
    merged = x.new_empty(batch, height * width, k.shape[1] * k.shape[-1])  # SAM's order: head, then channel
    if attn.use_rel_pos:
        tables = rel_pos_tables(attn, height, width, k.dtype)
        # Bands share one bias buffer, except where autograd keeps each band's bias for backward.
        buffer = None if torch.is_grad_enabled() else k.new_empty(
            batch * k.shape[1] * rows_per_band * width * height * width)
    for top in range(0, height, rows_per_band):
        band = slice(top * width, min(height, top + rows_per_band) * width)
        q_band = _project(attn, tokens[:, band], 0)
        bias = rel_pos_bias(attn, q_band, height, width, top, tables, buffer) if attn.use_rel_pos else None
        merged[:, band] = _sdpa_attention(q_band, k, v, bias, attn.scale).transpose(1, 2).flatten(2)
    return attn.proj(merged.view(batch, height, width, -1))


# Windows per call on CPU: about this many query tokens (5 of SAM's 14 x 14 windows), so
# that the queries, keys, values and bias of all 25 windows of a vit_b image (90 MB) are
# never held at once. On CUDA all windows go in one call (launch-bound).
WINDOW_TOKENS_PER_CALL = 1024


def _windowed_forward(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    per_call = max(1, WINDOW_TOKENS_PER_CALL // (x.shape[1] * x.shape[2]))
    return sdpa_forward(attn, x) if x.is_cuda else in_parts(partial(sdpa_forward, attn), x, 0, per_call)


def _global_forward(attn: Attention, x: torch.Tensor, queries_per_band: int) -> torch.Tensor:
    return sdpa_forward(attn, x, None if x.is_cuda else queries_per_band)


def use_banded_global_attention(encoder: nn.Module, queries_per_band: int = QUERIES_PER_BAND) -> int:
    """Make the encoder's global-attention blocks use :func:`sdpa_forward`: one call on CUDA,
    bands of ``queries_per_band`` queries elsewhere (bounded memory).

    Windowed blocks are left as they are (see :func:`use_fused_windowed_attention`).
    Returns how many blocks changed.
    """
    changed = 0
    for block in encoder.blocks:
        if block.window_size == 0 and isinstance(block.attn, Attention):
            # An instance attribute shadows Attention.forward; hooks still run around it.
            block.attn.forward = partial(_global_forward, block.attn, queries_per_band=queries_per_band)
            changed += 1
    return changed


def use_fused_windowed_attention(encoder: nn.Module) -> int:
    """Make the encoder's windowed-attention blocks use :func:`sdpa_forward`, on every device.

    Their maps are small ((heads, 196, 196) per window for SAM), so memory is no concern;
    the fused kernel is faster on CPU too (0.30 s against 0.33-0.36 s for vit_b's 25
    windows at 1024 px, one thread). Returns how many blocks changed.
    """
    changed = 0
    for block in encoder.blocks:
        if block.window_size > 0 and isinstance(block.attn, Attention):
            block.attn.forward = partial(_windowed_forward, block.attn)
            changed += 1
    return changed


__all__ = ["QUERIES_PER_BAND", "rel_pos_bias", "rel_pos_tables", "sdpa_forward", "use_banded_global_attention",
           "use_fused_windowed_attention"]
