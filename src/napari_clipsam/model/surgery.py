"""CLIP-Surgery dense features, text embeddings and the similarity map.

Nothing here copies CLIP's code: the surgery path is composed from the modules of the
image tower itself, either open_clip's own ``VisionTransformer`` or a timm
``VisionTransformer`` inside open_clip's ``TimmModel`` (BiomedCLIP): their patch
convolution, embeddings, blocks, final norm and projection.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from torch import nn

# CLIP's own normalisation constants, used when the tower does not carry its own.
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _resize_patch_positions(
    patch_pos: torch.Tensor, native: tuple[int, int], grid: tuple[int, int]
) -> torch.Tensor:
    """Bilinearly resize (native_h * native_w, C) patch position embeddings to (grid_h * grid_w, C)."""
    if tuple(grid) == tuple(native):
        return patch_pos
    patch_pos = patch_pos.reshape(1, native[0], native[1], -1).permute(0, 3, 1, 2)
    patch_pos = F.interpolate(patch_pos, size=tuple(grid), mode="bilinear", align_corners=False)
    return patch_pos.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)


def _value_value_attention(
    h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, heads: int, scale: float | None = None
) -> torch.Tensor:
    """Self-attention with queries and keys replaced by the values, before the output projection.

    Args:
        h: (B, N, C) normalised tokens.
        weight, bias: the attention's value projection, (H * d, C) and (H * d,).
        scale: attention logit scale; None for 1 / sqrt(d).

    Returns:
        (B, N, H * d) heads concatenated.
    """
    v = F.linear(h, weight, bias)
    batch, tokens, width = v.shape
    v = v.reshape(batch, tokens, heads, width // heads).transpose(1, 2)
    out = F.scaled_dot_product_attention(v, v, v, scale=scale)
    return out.transpose(1, 2).reshape(batch, tokens, width)


class _OpenClipViTTower:
    """Surgery interface to open_clip's ``VisionTransformer`` (class token, ``ln_post``, ``proj``)."""

    num_prefix_tokens = 1

    def __init__(self, visual: nn.Module) -> None:
        for block in visual.transformer.resblocks:
            if not isinstance(getattr(block, "attn", None), nn.MultiheadAttention):
                raise TypeError(
                    "CLIP-Surgery features need blocks with torch MultiheadAttention; "
                    f"found {type(block).__name__}."
                )
        self.visual = visual
        self.blocks = list(visual.transformer.resblocks)
        self.batch_first = getattr(visual.transformer, "batch_first", True)

    @property
    def patch_size(self) -> int:
        return self.visual.patch_size[0]

    @property
    def output_dim(self) -> int:
        return self.visual.output_dim

    def attention_modules(self) -> list[nn.Module]:
        return [block.attn for block in self.blocks]

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        visual = self.visual
        x = visual.conv1(images)
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        pos = visual.positional_embedding
        pos = torch.cat([pos[:1], _resize_patch_positions(pos[1:], visual.grid_size, grid)], dim=0)
        x = torch.cat([cls, x], dim=1) + pos.to(x.dtype)
        return visual.ln_pre(x), grid

    def run_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return block(x) if self.batch_first else block(x.transpose(0, 1)).transpose(0, 1)

    def surgery_step(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        attn = block.attn
        width = attn.embed_dim
        bias = attn.in_proj_bias[2 * width :] if attn.in_proj_bias is not None else None
        out = _value_value_attention(block.ln_1(x), attn.in_proj_weight[2 * width :], bias, attn.num_heads)
        return block.ls_1(attn.out_proj(out))

    def pooled_embedding(self, x: torch.Tensor) -> torch.Tensor:
        cls = self.visual.ln_post(x[:, 0])
        return cls @ self.visual.proj if self.visual.proj is not None else cls

    def token_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = self.visual.ln_post(tokens)
        return tokens @ self.visual.proj if self.visual.proj is not None else tokens


class _TimmViTTower:
    """Surgery interface to a timm ``VisionTransformer`` inside open_clip's ``TimmModel``.

    The image embedding is the tower's own pooled output (``trunk.forward_head`` then
    ``TimmModel.head``); each patch token goes through the same final norm and
    projections, without the pooling.
    """

    _POOLS = ("token", "avg", "avgmax", "max")

    def __init__(self, visual: nn.Module) -> None:
        from timm.layers import Attention
        from timm.models.vision_transformer import Block

        trunk = visual.trunk
        if getattr(trunk, "attn_pool", None) is not None or trunk.global_pool not in self._POOLS:
            raise TypeError(
                "CLIP-Surgery features need a timm ViT pooled by its class token or by "
                f"averaging ({', '.join(self._POOLS)}); this one pools by "
                f"{trunk.global_pool!r}, which has no per-patch counterpart."
            )
        if "pool" in dict(visual.head.named_children()):
            raise TypeError(
                "CLIP-Surgery features do not support open_clip's attention pooling of timm towers."
            )
        patch_size = tuple(trunk.patch_embed.patch_size)
        if patch_size[0] != patch_size[1]:
            raise TypeError(f"CLIP-Surgery features need square patches; this tower has {patch_size}.")
        for block in trunk.blocks:
            attn = getattr(block, "attn", None)
            if not isinstance(block, Block) or not isinstance(attn, Attention) or not isinstance(
                getattr(attn, "qkv", None), nn.Linear
            ):
                raise TypeError(
                    "CLIP-Surgery features need timm ViT blocks with the standard fused-qkv "
                    f"Attention; found {type(block).__name__} with {type(attn).__name__}."
                )
        self.visual = visual
        self.trunk = trunk
        self.blocks = list(trunk.blocks)
        self.num_prefix_tokens = trunk.num_prefix_tokens

    @property
    def patch_size(self) -> int:
        return self.trunk.patch_embed.patch_size[0]

    @property
    def output_dim(self) -> int:
        head = dict(self.visual.head.named_children())
        if "proj" in head:
            return head["proj"].out_features
        if "mlp" in head:
            return head["mlp"].fc2.out_features
        if isinstance(self.trunk.head, nn.Linear):
            return self.trunk.head.out_features
        return self.trunk.num_features

    def attention_modules(self) -> list[nn.Module]:
        return [block.attn for block in self.blocks]

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        trunk = self.trunk
        patch_embed = trunk.patch_embed
        # The patch convolution directly: timm's PatchEmbed insists on its native size.
        x = patch_embed.proj(images)
        grid = (x.shape[-2], x.shape[-1])
        x = patch_embed.norm(x.flatten(2).transpose(1, 2))
        prefix_tokens = [token for token in (trunk.cls_token, trunk.reg_token) if token is not None]
        prefix = torch.cat(prefix_tokens, dim=1).to(x.dtype) if prefix_tokens else x[:1, :0]
        if trunk.pos_embed is not None:
            pos = trunk.pos_embed[0]
            if not trunk.no_embed_class:  # the position embedding covers the prefix tokens too
                prefix = prefix + pos[: self.num_prefix_tokens].to(x.dtype)
                pos = pos[self.num_prefix_tokens :]
            x = x + _resize_patch_positions(pos, patch_embed.grid_size, grid).to(x.dtype)
        x = torch.cat([prefix.expand(x.shape[0], -1, -1), x], dim=1)
        # Patch dropout is left out: dropping tokens would break the grid.
        x = trunk.norm_pre(trunk.pos_drop(x))
        return x, grid

    def run_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return block(x)

    def surgery_step(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        attn = block.attn
        h = block.norm1(x)
        width = attn.num_heads * attn.head_dim
        bias = attn.qkv.bias[2 * width :] if attn.qkv.bias is not None else None
        # q_norm and k_norm belong to the queries and keys, which the values replace here.
        out = _value_value_attention(h, attn.qkv.weight[2 * width :], bias, attn.num_heads, attn.scale)
        out = getattr(attn, "norm", nn.Identity())(out)
        gate = getattr(attn, "gate", None)
        if gate is not None:
            out = out * gate(h).sigmoid()
        return block.ls1(attn.proj(out))

    def pooled_embedding(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual.head(self.trunk.forward_head(self.trunk.norm(x)))

    def token_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        trunk = self.trunk
        tokens = trunk.head(trunk.head_drop(trunk.fc_norm(trunk.norm(tokens))))
        return self.visual.head(tokens)


def _surgery_tower(visual: nn.Module) -> _OpenClipViTTower | _TimmViTTower:
    if isinstance(visual, open_clip.transformer.VisionTransformer):
        return _OpenClipViTTower(visual)
    if isinstance(visual, open_clip.timm_model.TimmModel):
        from timm.models.vision_transformer import VisionTransformer as TimmVisionTransformer

        if isinstance(visual.trunk, TimmVisionTransformer):
            return _TimmViTTower(visual)
        tower = f"a TimmModel around timm's {type(visual.trunk).__name__}"
    else:
        tower = f"a {type(visual).__name__}"
    raise TypeError(
        "CLIP-Surgery features need a ViT image tower: open_clip's VisionTransformer "
        "(for example 'ViT-B-16') or a timm VisionTransformer inside open_clip's TimmModel "
        f"(for example BiomedCLIP); this CLIP model has {tower}."
    )


class SurgeryVisionEncoder(nn.Module):
    """Dense CLIP features with the CLIP-Surgery path, on a ViT image tower.

    The ordinary path runs the vision tower unchanged and gives the image embedding. In
    the last ``surgery_blocks`` blocks a second path accumulates value-value attention
    (the block's own value projection for queries, keys and values, its output projection
    and layer scale, no MLP) computed from the ordinary path's normalised hidden state;
    it gives the patch tokens. Both go through the tower's final norm and projection.

    Works on open_clip's ``VisionTransformer`` and on a timm ``VisionTransformer`` in
    open_clip's ``TimmModel``; prefix tokens (class, registers) are left out of the grid.
    """

    def __init__(self, visual: nn.Module, surgery_blocks: int = 6) -> None:
        super().__init__()
        if surgery_blocks < 1:
            raise ValueError(f"surgery_blocks must be at least 1, got {surgery_blocks}.")
        self._tower = _surgery_tower(visual)
        self.visual = visual
        self.surgery_blocks = min(surgery_blocks, len(self._tower.blocks))

    @property
    def output_dim(self) -> int:
        return self._tower.output_dim

    @property
    def patch_size(self) -> int:
        return self._tower.patch_size

    def attention_modules(self) -> list[nn.Module]:
        """The self-attention module of every block of the tower, first to last."""
        return self._tower.attention_modules()

    def preprocess(self, image: np.ndarray, size: int, device: torch.device) -> torch.Tensor:
        """(1, 3, S, S) normalised input from (H, W, 3) uint8 RGB; S is ``size`` rounded down to whole patches."""
        patch = self.patch_size
        size = max(patch, size // patch * patch)
        tensor = torch.as_tensor(image, device=device).permute(2, 0, 1)[None].float() / 255.0
        tensor = F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        mean = getattr(self.visual, "image_mean", None) or _CLIP_MEAN
        std = getattr(self.visual, "image_std", None) or _CLIP_STD
        mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(std, device=device).view(1, 3, 1, 1)
        return (tensor - mean) / std

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense features of normalised images.

        Args:
            images: (B, 3, S, S) float, normalised with CLIP's mean and std; S a
                multiple of the patch size.

        Returns:
            cls: (B, D) image embedding (not normalised).
            patches: (B, S/p, S/p, D) surgery patch embeddings (not normalised).
        """
        tower = self._tower
        x, grid = tower.embed(images)
        first_surgery = len(tower.blocks) - self.surgery_blocks
        surgery = None
        for index, block in enumerate(tower.blocks):
            if index >= first_surgery:
                surgery = (x if surgery is None else surgery) + tower.surgery_step(block, x)
            x = tower.run_block(block, x)

        cls = tower.pooled_embedding(x)
        patches = tower.token_embeddings(surgery[:, tower.num_prefix_tokens :])
        return cls, patches.reshape(x.shape[0], grid[0], grid[1], -1)


class TextEmbedder:
    """Prompt-ensemble text embeddings with the empty-concept ("redundant") part removed."""

    def __init__(self, clip_model: nn.Module, tokenizer, templates: Sequence[str]) -> None:
        self.clip_model = clip_model
        self.tokenizer = tokenizer
        self.templates = tuple(templates)
        self._empty: torch.Tensor | None = None

    def _ensemble(self, concept: str, device: torch.device) -> torch.Tensor:
        texts = [template.format(concept) for template in self.templates]
        tokens = self.tokenizer(texts).to(device)
        # The text tower stays in fp32: bf16 was slower and less exact on CPU.
        with torch.autocast(device_type=device.type, enabled=False):
            embeddings = self.clip_model.encode_text(tokens).float()
        embeddings = F.normalize(embeddings, dim=-1).mean(dim=0)
        return F.normalize(embeddings, dim=-1)

    def __call__(self, concept: str, device: torch.device, grad: bool = False) -> torch.Tensor:
        """(D,) float32 unit vector for ``concept``.

        ``grad``: keep the graph through the text tower (training it, as for a model
        trained from scratch); the empty-concept part is then computed afresh too.
        """
        with torch.set_grad_enabled(grad):
            if grad:
                return F.normalize(self._ensemble(concept, device) - self._ensemble("", device), dim=-1)
            if self._empty is None or self._empty.device != device:
                self._empty = self._ensemble("", device)
            return F.normalize(self._ensemble(concept, device) - self._empty, dim=-1)

    def forget(self) -> None:
        """Drop the cached empty-concept embedding (the text tower's weights changed)."""
        self._empty = None


def similarity_map(patches: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each patch with the text, min-max normalised per image.

    Args:
        patches: (B, g, g, D) patch features.
        text: (B, D) or (D,) text embeddings.

    Returns:
        (B, g, g) float32 in [0, 1].
    """
    text = text.float()
    if text.ndim == 1:
        text = text.expand(patches.shape[0], -1)
    cosine = torch.einsum("bhwd,bd->bhw", F.normalize(patches.float(), dim=-1), F.normalize(text, dim=-1))
    low = cosine.amin(dim=(1, 2), keepdim=True)
    high = cosine.amax(dim=(1, 2), keepdim=True)
    return (cosine - low) / (high - low).clamp_min(1e-12)
