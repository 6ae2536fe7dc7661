"""One SAM encoder block with its CLIP-guided adapters, the CLIP signals passed as arguments.

:func:`guided_block_forward` is the one way a guided block runs, eager, checkpointed or
compiled: ``attach_adapters`` makes it the forward of every block it adapts. It is
segment_anything's ``Block.forward`` (norm, attention over windows or the whole grid,
residual, norm, MLP, residual) with the space adapter on the attention output and the
semantic adapter beside the MLP. The conditioning arrives as arguments, not as state:
threads sharing one model each pass their own, a checkpointed block takes it along
into its recomputation in backward, and ``torch.compile`` traces a block as one graph.
"""

from __future__ import annotations

import torch
from segment_anything.modeling.image_encoder import window_partition, window_unpartition
from torch import nn

from .memory import in_parts


def guided_block_forward(
    block: nn.Module,
    x: torch.Tensor,
    text: torch.Tensor | None = None,
    patches: torch.Tensor | None = None,
    similarity: torch.Tensor | None = None,
) -> torch.Tensor:
    """Tokens (B, H, W, C) through a segment_anything ``Block`` and its adapter ``block.clipsam``.

    Args:
        text: (B, D) CLIP text embeddings, or None.
        patches: (B, g, g, D) CLIP surgery patch features, or None.
        similarity: (B, g, g) similarity map in [0, 1], or None.
    """
    adapter = block.clipsam
    shortcut = x
    x = block.norm1(x)
    windowed = block.window_size > 0
    if windowed:
        height, width = x.shape[1:3]
        x, padded_size = window_partition(x, block.window_size)
    # On the attention output itself (windows, padding included), where the method adds it.
    x = adapter.after_attention(block.attn(x))
    if windowed:
        x = window_unpartition(x, block.window_size, padded_size, (height, width))
    x = add_into(x, shortcut)
    normed = block.norm2(x)
    return add_into(adapter.after_mlp(normed, _mlp(block.mlp, normed), text, patches, similarity), x)


def add_into(branch: torch.Tensor, base: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``base + scale * branch``, written into ``branch`` where its dtype holds the sum.

    ``branch`` must be a fresh result no one else reads (autograd included: the outputs
    of linear layers, sums). Each in-place step spares one (B, H, W, C) temporary, 12 MB
    for vit_b at 1024 px; the values are the same as out of place.
    """
    if branch.dtype != torch.promote_types(branch.dtype, base.dtype):  # autocast: a bf16 branch, fp32 base
        return base + scale * branch
    if scale != 1.0:
        branch = branch.mul_(scale)
    return branch.add_(base)


# Grid rows per MLP call on CPU: the MLP's hidden layer is 4x the width (two 48 MB tensors
# for a whole vit_b grid at 1024 px); a few rows at a time keep it small at the same speed.
# On CUDA the whole grid goes in one call (launch-bound).
MLP_TOKENS_PER_CALL = 1024


def _mlp(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``mlp(x)`` for tokens (B, H, W, C), in bands of grid rows on CPU (each token on its own: the same values)."""
    rows = max(1, MLP_TOKENS_PER_CALL // (x.shape[0] * x.shape[2]))
    return mlp(x) if x.is_cuda else in_parts(mlp, x, 1, rows)
