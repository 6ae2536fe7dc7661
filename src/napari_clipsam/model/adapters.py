"""Space and semantic adapters attached to the blocks of a frozen SAM image encoder.

Adapters are registered as a submodule named ``clipsam`` on each SAM ``Block``, whose
forward becomes :func:`~.guided_block.guided_block_forward`: SAM's own modules and
parameter names stay exactly as ``segment_anything`` made them, and the CLIP signals
reach the adapters as arguments of the block's call (:func:`run_blocks`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .config import ClipSamConfig
from .guided_block import add_into, guided_block_forward
from .memory import release_free_memory

ADAPTER_NAME = "clipsam"
# Substring that identifies adapter entries in a SAM state dict.
ADAPTER_KEY = f".{ADAPTER_NAME}."


class Bottleneck(nn.Module):
    """``Linear(C, r*C) -> GELU -> Linear(r*C, C)`` with a zero-initialised output layer."""

    def __init__(self, width: int, ratio: float) -> None:
        super().__init__()
        hidden = max(1, int(round(width * ratio)))
        self.down = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.up = nn.Linear(hidden, width)
        # Zero output: an untrained adapter leaves SAM exactly as it was.
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(x)))


@dataclass
class Conditioning:
    """CLIP signals for one encoder pass; any field may be None.

    Attributes:
        text: (B, D) text embeddings.
        patches: (B, g, g, D) CLIP surgery patch features.
        similarity: (B, g, g) similarity map in [0, 1].
    """

    text: torch.Tensor | None = None
    patches: torch.Tensor | None = None
    similarity: torch.Tensor | None = None

    @classmethod
    def of_modalities(
        cls,
        modalities: Iterable[str],
        text: torch.Tensor,
        patches: torch.Tensor | None,
        similarity: torch.Tensor | None,
    ) -> Conditioning:
        """The signals ``modalities`` inject (a subset of text, vision, similarity), the others None.

        ``text`` may be one (D,) embedding or a batch (B, D).
        """
        return cls(
            text=(text[None] if text.ndim == 1 else text) if "text" in modalities else None,
            patches=patches if "vision" in modalities else None,
            similarity=similarity if "similarity" in modalities else None,
        )

    def signals(self) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """``(text, patches, similarity)``, the arguments :func:`guided_block_forward` takes after the tokens."""
        return self.text, self.patches, self.similarity


class BlockAdapter(nn.Module):
    """The adapters of one SAM block: space adapter, optional semantic adapter and projections."""

    def __init__(
        self,
        width: int,
        clip_dim: int,
        config: ClipSamConfig,
        semantic: bool,
    ) -> None:
        super().__init__()
        self.scale = config.adapter_scale
        self.space = Bottleneck(width, config.bottleneck_ratio)
        self.semantic = Bottleneck(width, config.bottleneck_ratio) if semantic else None
        uses_text = semantic and "text" in config.modalities
        uses_grid = semantic and bool({"vision", "similarity"} & set(config.modalities))
        self.use_vision = "vision" in config.modalities
        self.use_similarity = "similarity" in config.modalities
        self.text_proj = nn.Linear(clip_dim, width) if uses_text else None
        self.vision_proj = nn.Linear(clip_dim, width) if uses_grid else None

    def after_attention(self, attention_out: torch.Tensor) -> torch.Tensor:
        return add_into(self.space(attention_out), attention_out, self.scale)

    def _semantic_input(
        self,
        h: torch.Tensor,
        text: torch.Tensor | None,
        patches: torch.Tensor | None,
        similarity: torch.Tensor | None,
    ) -> torch.Tensor:
        """``h + T + U`` for h of shape (B, H, W, C); signals as in :func:`guided_block_forward`."""
        if self.text_proj is not None and text is not None:
            projected_text = F.gelu(self.text_proj(text.to(h.dtype)))
            h = h + projected_text[:, None, None, :]
        if self.vision_proj is not None:
            grid = None
            if self.use_vision and patches is not None:
                grid = patches.to(h.dtype)
            if self.use_similarity and similarity is not None:
                sim = similarity.to(h.dtype)[..., None]
                grid = sim if grid is None else grid + sim
            if grid is not None:
                if grid.shape[-1] == 1:
                    grid = grid.expand(*grid.shape[:-1], self.vision_proj.in_features)
                projected = self.vision_proj(grid).permute(0, 3, 1, 2)
                projected = F.interpolate(
                    projected, size=h.shape[1:3], mode="bilinear", align_corners=False
                )
                h = h + projected.permute(0, 2, 3, 1)
        return h

    def after_mlp(
        self,
        h: torch.Tensor,
        mlp_out: torch.Tensor,
        text: torch.Tensor | None = None,
        patches: torch.Tensor | None = None,
        similarity: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The MLP branch's output for the MLP's input ``h`` and output ``mlp_out``, both (B, H, W, C)."""
        if self.semantic is None:
            return mlp_out
        return add_into(self.semantic(self._semantic_input(h, text, patches, similarity)), mlp_out, self.scale)


def attach_adapters(sam: nn.Module, clip_dim: int, config: ClipSamConfig) -> list[BlockAdapter]:
    """Attach a ``BlockAdapter`` to every block of ``sam.image_encoder``.

    Returns the adapters in block order. SAM's modules are kept; the adapter of block i
    is ``sam.image_encoder.blocks[i].clipsam``.
    """
    blocks = sam.image_encoder.blocks
    semantic = set(config.semantic_block_indices(len(blocks)))
    adapters = []
    for index, block in enumerate(blocks):
        if hasattr(block, ADAPTER_NAME):
            raise RuntimeError("This SAM already has CLIP-guided adapters attached.")
        width = block.norm1.normalized_shape[0]
        adapter = BlockAdapter(width, clip_dim, config, semantic=index in semantic)
        block.add_module(ADAPTER_NAME, adapter)
        # An instance attribute shadows Block.forward; the block's hooks still run around it.
        block.forward = partial(guided_block_forward, block)
        adapters.append(adapter)
    return adapters


def first_semantic_block(adapters: list[BlockAdapter]) -> int:
    """Index of the first block whose output depends on the concept."""
    for index, adapter in enumerate(adapters):
        if adapter.semantic is not None:
            return index
    return len(adapters)


def run_blocks(
    blocks: Iterable[nn.Module],
    tokens: torch.Tensor,
    conditioning: Conditioning | None,
    checkpointing: bool = False,
) -> torch.Tensor:
    """Run guided encoder blocks on tokens (B, H, W, C), each given ``conditioning``'s signals.

    With ``checkpointing`` only block inputs are kept for backward, and each block is run
    again there, with the same signals: they are arguments of the call that autograd
    recomputes, wherever (in whichever thread) it does.
    """
    from torch.utils.checkpoint import checkpoint

    signals = () if conditioning is None else conditioning.signals()
    # On a CPU, what each block freed goes back to the system before the next (model/memory.py).
    release = not (tokens.is_cuda or torch.is_grad_enabled())
    for block in blocks:
        tokens = checkpoint(block, tokens, *signals, use_reentrant=False) if checkpointing else block(tokens, *signals)
        if release:
            release_free_memory()
    return tokens


def adapter_keys(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Keys of a SAM state dict that belong to our adapters."""
    return [key for key in state_dict if ADAPTER_KEY in key]
