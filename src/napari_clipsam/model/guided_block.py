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
    x = shortcut + x
    normed = block.norm2(x)
    return x + adapter.after_mlp(normed, block.mlp(normed), text, patches, similarity)
