"""SAM builders: one explicit builder per variant, all feeding :func:`_build_sam`.

The models are plain ``segment_anything.modeling.Sam`` instances, built from
``segment_anything``'s own classes with every hyper-parameter written out, so that
official checkpoints load into them unchanged.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # imported where a model is built: listing the variants stays free
    from segment_anything.modeling import Sam

# SAM's own pixel statistics (ImageNet, in 0..255 units).
_PIXEL_MEAN = (123.675, 116.28, 103.53)
_PIXEL_STD = (58.395, 57.12, 57.375)


def _build_sam(
    *,
    image_size: int,
    patch_size: int,
    encoder_embed_dim: int,
    encoder_depth: int,
    encoder_num_heads: int,
    encoder_global_attn_indexes: tuple[int, ...],
    window_size: int,
    prompt_embed_dim: int,
    mask_in_chans: int,
    decoder_depth: int,
    decoder_mlp_dim: int,
    decoder_num_heads: int,
    iou_head_hidden_dim: int,
) -> Sam:
    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    image_embedding_size = image_size // patch_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=encoder_depth,
            embed_dim=encoder_embed_dim,
            img_size=image_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=encoder_num_heads,
            patch_size=patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=encoder_global_attn_indexes,
            window_size=window_size,
            out_chans=prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_embed_dim,
            image_embedding_size=(image_embedding_size, image_embedding_size),
            input_image_size=(image_size, image_size),
            mask_in_chans=mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=decoder_depth,
                embedding_dim=prompt_embed_dim,
                mlp_dim=decoder_mlp_dim,
                num_heads=decoder_num_heads,
            ),
            transformer_dim=prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=iou_head_hidden_dim,
        ),
        pixel_mean=list(_PIXEL_MEAN),
        pixel_std=list(_PIXEL_STD),
    )
    sam.eval()
    return sam


def _build_standard(
    embed_dim: int, depth: int, num_heads: int, global_attn_indexes: tuple[int, ...]
) -> Sam:
    """The published SAM family: 1024 input, 16 px patches, 256-channel embedding."""
    return _build_sam(
        image_size=1024,
        patch_size=16,
        encoder_embed_dim=embed_dim,
        encoder_depth=depth,
        encoder_num_heads=num_heads,
        encoder_global_attn_indexes=global_attn_indexes,
        window_size=14,
        prompt_embed_dim=256,
        mask_in_chans=16,
        decoder_depth=2,
        decoder_mlp_dim=2048,
        decoder_num_heads=8,
        iou_head_hidden_dim=256,
    )


def build_sam_vit_b() -> Sam:
    return _build_standard(768, 12, 12, (2, 5, 8, 11))


def build_sam_vit_l() -> Sam:
    return _build_standard(1024, 24, 16, (5, 11, 17, 23))


def build_sam_vit_h() -> Sam:
    return _build_standard(1280, 32, 16, (7, 15, 23, 31))


def build_sam_tiny() -> Sam:
    """A small SAM for tests and quick checks: 256 px input, 16x16 embedding grid.

    Same classes and code path as the published variants; only the sizes differ.
    """
    return _build_sam(
        image_size=256,
        patch_size=16,
        encoder_embed_dim=32,
        encoder_depth=2,
        encoder_num_heads=2,
        encoder_global_attn_indexes=(1,),
        window_size=8,
        prompt_embed_dim=32,
        mask_in_chans=4,
        decoder_depth=2,
        decoder_mlp_dim=64,
        decoder_num_heads=2,
        iou_head_hidden_dim=32,
    )


def _build_demo(encoder_depth: int, encoder_global_attn_indexes: tuple[int, ...]) -> Sam:
    return _build_sam(
        image_size=256,
        patch_size=8,
        encoder_embed_dim=64,
        encoder_depth=encoder_depth,
        encoder_num_heads=4,
        encoder_global_attn_indexes=encoder_global_attn_indexes,
        window_size=8,
        prompt_embed_dim=64,
        mask_in_chans=8,
        decoder_depth=2,
        decoder_mlp_dim=256,
        decoder_num_heads=4,
        iou_head_hidden_dim=64,
    )


def build_sam_demo() -> Sam:
    """The demo model's SAM: 256 px input, 8 px patches (a 32x32 grid, 128x128 mask logits).

    Small enough to train from scratch on a CPU and ship in the package; the finer patch
    grid than ``tiny`` keeps small objects (spots of 5 px) resolvable. 4 encoder blocks of
    width 64, global attention in blocks 1 and 3.
    """
    return _build_demo(4, (1, 3))


def build_sam_demo_deep() -> Sam:
    """The demo SAM with twice its encoder blocks (8, global attention in blocks 2 and 6).

    Made to be grown from a trained ``demo`` model (:func:`napari_clipsam.model.grow.deepen_encoder`):
    its block ``i`` becomes block ``2i`` here, and each block between starts as the identity.
    """
    return _build_demo(8, (2, 6))


SAM_BUILDERS: dict[str, Callable[[], Sam]] = {
    "vit_b": build_sam_vit_b,
    "vit_l": build_sam_vit_l,
    "vit_h": build_sam_vit_h,
    "tiny": build_sam_tiny,
    "demo": build_sam_demo,
    "demo-deep": build_sam_demo_deep,
}


# How many times "auto" may shrink an image to a variant's input before it tiles the image at
# native resolution instead (napari_clipsam.inference.tiling). The published SAM learned
# objects at every scale: up to 2x. The demo SAM learned only its generator's pixel sizes (its
# training crops are enlarged, never shrunk): the 512 px synthetic nuclei sample shrunk to its
# 256 px input gave text IoU 0.34, read in native-size tiles 0.87. So it never shrinks.
DEFAULT_AUTO_DOWNSCALE = 2.0
# The variants of the demo model (trained on generated scenes only; the widget says so).
DEMO_VARIANTS = ("demo", "demo-deep")
AUTO_DOWNSCALE: dict[str, float] = dict.fromkeys(DEMO_VARIANTS, 1.0)


def auto_downscale(variant: str) -> float:
    """How many times "auto" tiling may shrink an image to the input of SAM ``variant``."""
    return AUTO_DOWNSCALE.get(variant, DEFAULT_AUTO_DOWNSCALE)


def list_sam_variants() -> list[str]:
    """The SAM architectures :func:`build_sam` builds (``"tiny"`` is for tests, ``"demo"`` for the demo model)."""
    return list(SAM_BUILDERS)


def build_sam(variant: str) -> Sam:
    """Build a randomly initialised SAM of the named variant (weights are loaded apart)."""
    try:
        builder = SAM_BUILDERS[variant]
    except KeyError:
        raise ValueError(
            f"Unknown SAM variant {variant!r}; choose one of {', '.join(SAM_BUILDERS)}."
        ) from None
    return builder()
