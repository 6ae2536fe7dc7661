"""CLIP through open_clip: model building, CLIP-Surgery dense features, text embeddings.

Nothing here copies CLIP's code: the surgery path is composed from the modules of
open_clip's own ``VisionTransformer`` (its convolution, embeddings, blocks, final
LayerNorm and projection).
"""

from __future__ import annotations

from importlib.resources import files
from typing import Sequence

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

# Our name for the small test architecture, and the name it is registered under in
# open_clip's model-config registry (so that it is built by open_clip's own factory).
TINY_CLIP = "tiny"
_TINY_OPEN_CLIP_NAME = "clipsam-tiny"


def _open_clip_name(name: str) -> str:
    if name == TINY_CLIP:
        if _TINY_OPEN_CLIP_NAME not in open_clip.list_models():
            config_path = files("napari_clipsam") / "model_configs" / f"{_TINY_OPEN_CLIP_NAME}.json"
            open_clip.add_model_config(str(config_path))
        return _TINY_OPEN_CLIP_NAME
    return name


def list_clip_models() -> list[str]:
    """CLIP architectures that can be built (open_clip's names, plus ``"tiny"``)."""
    return [TINY_CLIP, *open_clip.list_models()]


def build_clip(name: str, quick_gelu: bool = False) -> nn.Module:
    """Build a randomly initialised open_clip model by name (weights are loaded apart).

    ``hf-hub:`` names fetch only their small JSON config here.
    """
    open_clip_name = _open_clip_name(name)
    if not open_clip_name.startswith(("hf-hub:", "local-dir:")) and (
        open_clip_name not in open_clip.list_models()
    ):
        raise ValueError(
            f"Unknown CLIP model {name!r}. Use one of open_clip.list_models() "
            "(for example 'ViT-B-16'), an 'hf-hub:' name, or 'tiny'."
        )
    model = open_clip.create_model(
        open_clip_name,
        pretrained=None,
        load_weights=False,
        force_quick_gelu=quick_gelu,
        precision="fp32",
        device="cpu",
    )
    model.eval()
    return model


def get_tokenizer(name: str):
    return open_clip.get_tokenizer(_open_clip_name(name))


class SurgeryVisionEncoder(nn.Module):
    """Dense CLIP features with the CLIP-Surgery path, on an open_clip ViT.

    The ordinary path runs the vision tower unchanged and gives the CLS token. In the
    last ``surgery_blocks`` blocks a second path accumulates value-value attention
    (the block's own value projection for queries, keys and values, no MLP) computed
    from the ordinary path's normalised hidden state; it gives the patch tokens.
    Both go through the tower's final LayerNorm and projection.
    """

    def __init__(self, visual: nn.Module, surgery_blocks: int = 6) -> None:
        super().__init__()
        if not isinstance(visual, open_clip.transformer.VisionTransformer):
            raise TypeError(
                "CLIP-Surgery features need open_clip's VisionTransformer image tower; "
                f"this CLIP model has a {type(visual).__name__}. Choose a ViT CLIP such as "
                "'ViT-B-16'."
            )
        blocks = visual.transformer.resblocks
        for block in blocks:
            if not isinstance(getattr(block, "attn", None), nn.MultiheadAttention):
                raise TypeError(
                    "CLIP-Surgery features need blocks with torch MultiheadAttention; "
                    f"found {type(block).__name__}."
                )
        self.visual = visual
        self.surgery_blocks = min(surgery_blocks, len(blocks))

    @property
    def output_dim(self) -> int:
        return self.visual.output_dim

    @property
    def patch_size(self) -> int:
        return self.visual.patch_size[0]

    def _positional_embedding(self, grid: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
        pos = self.visual.positional_embedding
        native = self.visual.grid_size
        if tuple(grid) == tuple(native):
            return pos.to(dtype)
        cls_pos, patch_pos = pos[:1], pos[1:]
        patch_pos = patch_pos.reshape(1, native[0], native[1], -1).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(patch_pos, size=grid, mode="bilinear", align_corners=False)
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)
        return torch.cat([cls_pos, patch_pos], dim=0).to(dtype)

    @staticmethod
    def _value_value_attention(attn: nn.MultiheadAttention, h: torch.Tensor) -> torch.Tensor:
        """Attention with queries and keys replaced by the values. h: (B, N, C)."""
        width = attn.embed_dim
        bias = attn.in_proj_bias[2 * width :] if attn.in_proj_bias is not None else None
        v = F.linear(h, attn.in_proj_weight[2 * width :], bias)
        batch, tokens, _ = v.shape
        v = v.reshape(batch, tokens, attn.num_heads, width // attn.num_heads).transpose(1, 2)
        out = F.scaled_dot_product_attention(v, v, v)
        out = out.transpose(1, 2).reshape(batch, tokens, width)
        return attn.out_proj(out)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense features of normalised images.

        Args:
            images: (B, 3, S, S) float, normalised with CLIP's mean and std; S a
                multiple of the patch size.

        Returns:
            cls: (B, D) image embedding (not normalised).
            patches: (B, S/p, S/p, D) surgery patch embeddings (not normalised).
        """
        visual = self.visual
        x = visual.conv1(images)
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self._positional_embedding(grid, x.dtype)
        x = visual.ln_pre(x)

        transformer = visual.transformer
        batch_first = getattr(transformer, "batch_first", True)
        first_surgery = len(transformer.resblocks) - self.surgery_blocks
        surgery = None
        for index, block in enumerate(transformer.resblocks):
            if index >= first_surgery:
                if surgery is None:
                    surgery = x
                h = block.ln_1(x)
                if not batch_first:
                    h = h.transpose(0, 1)
                vv = self._value_value_attention(block.attn, h) if batch_first else (
                    self._value_value_attention(block.attn, h.transpose(0, 1))
                )
                surgery = surgery + block.ls_1(vv)
            x = block(x) if batch_first else block(x.transpose(0, 1)).transpose(0, 1)

        cls_token = visual.ln_post(x[:, 0])
        patch_tokens = visual.ln_post(surgery[:, 1:])
        if visual.proj is not None:
            cls_token = cls_token @ visual.proj
            patch_tokens = patch_tokens @ visual.proj
        return cls_token, patch_tokens.reshape(x.shape[0], grid[0], grid[1], -1)


class TextEmbedder:
    """Prompt-ensemble text embeddings with the empty-concept ("redundant") part removed."""

    def __init__(self, clip_model: nn.Module, tokenizer, templates: Sequence[str]) -> None:
        self.clip_model = clip_model
        self.tokenizer = tokenizer
        self.templates = tuple(templates)
        self._empty: torch.Tensor | None = None

    @torch.no_grad()
    def _ensemble(self, concept: str, device: torch.device) -> torch.Tensor:
        texts = [template.format(concept) for template in self.templates]
        tokens = self.tokenizer(texts).to(device)
        # The text tower stays in fp32: bf16 was slower and less exact on CPU.
        with torch.autocast(device_type=device.type, enabled=False):
            embeddings = self.clip_model.encode_text(tokens).float()
        embeddings = F.normalize(embeddings, dim=-1).mean(dim=0)
        return F.normalize(embeddings, dim=-1)

    def __call__(self, concept: str, device: torch.device) -> torch.Tensor:
        """(D,) float32 unit vector for ``concept``."""
        if self._empty is None or self._empty.device != device:
            self._empty = self._ensemble("", device)
        return F.normalize(self._ensemble(concept, device) - self._empty, dim=-1)


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
