"""Space and semantic adapters attached to the blocks of a frozen SAM image encoder.

Adapters are registered as a submodule named ``clipsam`` on each SAM ``Block`` and
act through forward hooks on the block's ``attn`` and ``mlp``, so SAM's own modules,
forward code and parameter names stay exactly as ``segment_anything`` made them.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .config import ClipSamConfig

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


# The CLIP signals in force for each adapter in this thread or asyncio task. A
# context variable, not an attribute of the adapter: threads sharing one model each
# condition their own encoder pass, and no lock makes one thread wait for another's.
_CONDITIONING: ContextVar[dict[BlockAdapter, Conditioning | None]] = ContextVar("clipsam_conditioning", default={})


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

    @property
    def conditioning(self) -> Conditioning | None:
        """The signals set by :func:`conditioned` in this thread; None outside it."""
        return _CONDITIONING.get().get(self)

    def after_attention(self, attention_out: torch.Tensor) -> torch.Tensor:
        return attention_out + self.scale * self.space(attention_out)

    def _semantic_input(self, h: torch.Tensor) -> torch.Tensor:
        """``h + T + U`` for h of shape (B, H, W, C)."""
        cond = self.conditioning
        if cond is None:
            return h
        if self.text_proj is not None and cond.text is not None:
            text = F.gelu(self.text_proj(cond.text.to(h.dtype)))
            h = h + text[:, None, None, :]
        if self.vision_proj is not None:
            grid = None
            if self.use_vision and cond.patches is not None:
                grid = cond.patches.to(h.dtype)
            if self.use_similarity and cond.similarity is not None:
                sim = cond.similarity.to(h.dtype)[..., None]
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

    def after_mlp(self, h: torch.Tensor, mlp_out: torch.Tensor) -> torch.Tensor:
        if self.semantic is None:
            return mlp_out
        return mlp_out + self.scale * self.semantic(self._semantic_input(h))


def _attention_hook(module: nn.Module, args, output):
    return module._clipsam_adapter.after_attention(output)


def _mlp_hook(module: nn.Module, args, output):
    return module._clipsam_adapter.after_mlp(args[0], output)


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
        # Plain attributes (not submodules) so the adapter is not registered twice.
        object.__setattr__(block.attn, "_clipsam_adapter", adapter)
        object.__setattr__(block.mlp, "_clipsam_adapter", adapter)
        block.attn.register_forward_hook(_attention_hook)
        block.mlp.register_forward_hook(_mlp_hook)
        adapters.append(adapter)
    return adapters


def first_semantic_block(adapters: list[BlockAdapter]) -> int:
    """Index of the first block whose output depends on the concept."""
    for index, adapter in enumerate(adapters):
        if adapter.semantic is not None:
            return index
    return len(adapters)


@contextmanager
def conditioned(adapters: list[BlockAdapter], conditioning: Conditioning | None) -> Iterator[None]:
    """Give every adapter the CLIP signals for the encoder passes inside the block, in this thread.

    Other threads (and asyncio tasks) keep theirs. Nested uses restore the outer
    conditioning on exit.
    """
    # A new dict each time: the one in force may be the outer block's, or the default.
    inner = {**_CONDITIONING.get(), **dict.fromkeys(adapters, conditioning)}
    token = _CONDITIONING.set(inner)
    try:
        yield
    finally:
        _CONDITIONING.reset(token)


def run_blocks(
    blocks: Iterable[nn.Module],
    tokens: torch.Tensor,
    adapters: list[BlockAdapter],
    conditioning: Conditioning | None,
    checkpointing: bool = False,
) -> torch.Tensor:
    """Run encoder blocks on tokens (B, H, W, C) with ``conditioning`` in force for ``adapters``.

    With ``checkpointing`` only block inputs are kept for backward, and each block is run
    again there. Each block takes its conditioning along into that recomputation, because
    autograd may run it in another thread (its own, on a GPU), where the caller's
    conditioning is not in force.
    """
    from torch.utils.checkpoint import checkpoint

    def run(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        with conditioned(adapters, conditioning):
            return block(x)

    for block in blocks:
        tokens = checkpoint(run, block, tokens, use_reentrant=False) if checkpointing else run(block, tokens)
    return tokens


def adapter_keys(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Keys of a SAM state dict that belong to our adapters."""
    return [key for key in state_dict if ADAPTER_KEY in key]
