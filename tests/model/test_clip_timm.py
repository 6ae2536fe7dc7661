"""CLIP-Surgery features on timm ViT image towers (open_clip's TimmModel, as in BiomedCLIP)."""

from __future__ import annotations

import functools
import sys

import open_clip
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from napari_clipsam.errors import MissingDependencyError
from napari_clipsam.model.clip import build_clip, get_tokenizer
from napari_clipsam.model.surgery import SurgeryVisionEncoder

EMBED_DIM = 64
SMALL_TEXT_CFG = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}
# BiomedCLIP's vision_cfg, on ViT-tiny instead of ViT-base.
BIOMEDCLIP_LIKE_VISION_CFG = {
    "timm_model_name": "vit_tiny_patch16_224",
    "timm_model_pretrained": False,
    "timm_pool": "",
    "timm_proj": "linear",
    "image_size": 224,
}


@pytest.fixture(autouse=True)
def _no_hub(monkeypatch):
    """Nothing here may reach the Hugging Face hub."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args} {kwargs}")

    monkeypatch.setattr(open_clip.pretrained, "download_pretrained_from_hf", refuse)
    monkeypatch.setattr(open_clip.factory, "download_pretrained_from_hf", refuse)


def _token_pooled_clip() -> nn.Module:
    """BiomedCLIP's image tower layout: class-token pooling, linear projection to the embed dim."""
    torch.manual_seed(0)
    model_cfg = {"embed_dim": EMBED_DIM, "vision_cfg": BIOMEDCLIP_LIKE_VISION_CFG, "text_cfg": SMALL_TEXT_CFG}
    preprocess_cfg = {"mean": [0.5] * 3, "std": [0.25] * 3}
    return build_clip("biomedclip-like", model_cfg=model_cfg, preprocess_cfg=preprocess_cfg)


def _registers_clip() -> nn.Module:
    """Four register tokens, position embeddings for the patches only, layer scale, a pre-norm."""
    clip = _token_pooled_clip()  # a fresh one: its trunk is replaced
    torch.manual_seed(1)
    clip.visual.trunk = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        num_classes=0,
        reg_tokens=4,
        no_embed_class=True,
        init_values=0.1,
        pre_norm=True,
    ).eval()
    return clip


def _average_pooled_clip() -> nn.Module:
    """Average pooling with the norm after the pool (fc_norm) and timm's own head as projection."""
    torch.manual_seed(2)
    vision_cfg = {**BIOMEDCLIP_LIKE_VISION_CFG, "timm_pool": "avg", "timm_proj": ""}
    model_cfg = {"embed_dim": EMBED_DIM, "vision_cfg": vision_cfg, "text_cfg": SMALL_TEXT_CFG}
    return build_clip("avg-pooled", model_cfg=model_cfg)


TOWERS = {"token": _token_pooled_clip, "registers": _registers_clip, "avg": _average_pooled_clip}


@pytest.fixture(scope="module")
def built():
    """``built(tower)``: each tower built once, for the tests that only read it."""
    return functools.cache(lambda tower: TOWERS[tower]())


def _layer_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(norm, nn.Identity):
        return x
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def _linear(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(layer, nn.Identity):
        return x
    return x @ layer.weight.T + (layer.bias if layer.bias is not None else 0)


def _hand_features(visual: nn.Module, images: torch.Tensor, surgery_blocks: int):
    """The method written out with explicit tensor ops: (ordinary tokens, plain patches, surgery patches)."""
    trunk = visual.trunk
    batch, patch = images.shape[0], trunk.patch_embed.patch_size[0]
    conv = trunk.patch_embed.proj
    x = F.conv2d(images, conv.weight, conv.bias, stride=patch)
    grid_h, grid_w = x.shape[-2:]
    x = x.flatten(2).transpose(1, 2)

    prefix_count = trunk.num_prefix_tokens
    prefix = [t for t in (trunk.cls_token, trunk.reg_token) if t is not None]
    prefix = torch.cat(prefix, dim=1).expand(batch, -1, -1)
    pos = trunk.pos_embed[0]
    if not trunk.no_embed_class:
        prefix = prefix + pos[:prefix_count]
        pos = pos[prefix_count:]
    native_h, native_w = trunk.patch_embed.grid_size
    pos = pos.reshape(1, native_h, native_w, -1).permute(0, 3, 1, 2)
    pos = F.interpolate(pos, size=(grid_h, grid_w), mode="bilinear", align_corners=False)
    x = x + pos.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)
    x = _layer_norm(trunk.norm_pre, torch.cat([prefix, x], dim=1))

    blocks = list(trunk.blocks)
    surgery = None
    for index, block in enumerate(blocks):
        if index >= len(blocks) - surgery_blocks:
            surgery = x.clone() if surgery is None else surgery
            attn = block.attn
            heads, width = attn.num_heads, attn.num_heads * attn.head_dim
            h = _layer_norm(block.norm1, x)
            v = h @ attn.qkv.weight[2 * width :].T + attn.qkv.bias[2 * width :]
            v = v.reshape(batch, -1, heads, width // heads).permute(0, 2, 1, 3)
            weights = torch.softmax(v @ v.transpose(-1, -2) / (width // heads) ** 0.5, dim=-1)
            out = (weights @ v).permute(0, 2, 1, 3).reshape(batch, -1, width)
            out = _linear(attn.proj, out)
            if not isinstance(block.ls1, nn.Identity):
                out = out * block.ls1.gamma
            surgery = surgery + out
        x = block(x)

    def embed(tokens):
        tokens = _layer_norm(trunk.fc_norm, _layer_norm(trunk.norm, tokens))
        tokens = _linear(trunk.head, tokens)
        if hasattr(visual.head, "proj"):
            tokens = _linear(visual.head.proj, tokens)
        return tokens.reshape(batch, grid_h, grid_w, -1)

    return x, embed(x[:, prefix_count:]), embed(surgery[:, prefix_count:])


@pytest.mark.parametrize("tower", sorted(TOWERS))
def test_cls_is_the_towers_own_embedding_at_its_native_size(built, tower):
    clip = built(tower)
    encoder = SurgeryVisionEncoder(clip.visual, surgery_blocks=6)
    torch.manual_seed(0)
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        cls, patches = encoder(images)
        expected = clip.visual(images)
    assert cls.shape == (2, EMBED_DIM) and patches.shape == (2, 14, 14, EMBED_DIM)
    torch.testing.assert_close(cls, expected)


@pytest.mark.parametrize("size", [224, 512])
@pytest.mark.parametrize("tower", sorted(TOWERS))
def test_surgery_patches_follow_the_method(built, tower, size):
    """Patches from accumulated value-value attention, computed by hand; 512 interpolates positions."""
    clip = built(tower)
    encoder = SurgeryVisionEncoder(clip.visual, surgery_blocks=6)
    torch.manual_seed(0)
    images = torch.randn(1, 3, size, size)
    with torch.no_grad():
        cls, patches = encoder(images)
        tokens, plain, expected = _hand_features(clip.visual, images, surgery_blocks=6)
    grid = size // 16
    assert patches.shape == (1, grid, grid, EMBED_DIM)
    torch.testing.assert_close(patches, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(patches, plain, rtol=1e-3, atol=1e-3)
    if tower == "token":
        torch.testing.assert_close(cls, clip.visual.head.proj(clip.visual.trunk.norm(tokens[:, 0])))


def test_surgery_in_every_block_and_more_blocks_than_the_tower_has(built):
    clip = built("token")
    depth = len(clip.visual.trunk.blocks)
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        _, every = SurgeryVisionEncoder(clip.visual, surgery_blocks=depth)(images)
        _, more = SurgeryVisionEncoder(clip.visual, surgery_blocks=depth + 5)(images)
        _, _, expected = _hand_features(clip.visual, images, surgery_blocks=depth)
    torch.testing.assert_close(every, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(more, every)


def test_encoder_reports_the_towers_sizes_and_preprocessing(built):
    clip = built("token")
    encoder = SurgeryVisionEncoder(clip.visual)
    assert encoder.patch_size == 16 and encoder.output_dim == EMBED_DIM
    assert list(clip.visual.image_mean) == [0.5] * 3 and list(clip.visual.image_std) == [0.25] * 3
    assert encoder.attention_modules() == [block.attn for block in clip.visual.trunk.blocks]
    assert SurgeryVisionEncoder(built("avg").visual).output_dim == EMBED_DIM


def test_the_weights_preprocessing_reaches_any_tower():
    """resolve_clip_checkpoint's cfg (mean, std and unrelated keys) sets the tower's normalisation."""
    cfg = {"mean": (0.1, 0.2, 0.3), "std": (0.4, 0.5, 0.6), "quick_gelu": False, "hf_hub": "org/repo/"}
    clip = build_clip("tiny", preprocess_cfg=cfg)
    assert tuple(clip.visual.image_mean) == cfg["mean"] and tuple(clip.visual.image_std) == cfg["std"]
    assert tuple(build_clip("tiny").visual.image_mean) == open_clip.OPENAI_DATASET_MEAN


def test_towers_without_a_per_patch_path_are_refused_clearly():
    resnet = open_clip.model.ModifiedResNet(
        layers=[1, 1, 1, 1], output_dim=EMBED_DIM, heads=2, image_size=64, width=8
    )
    with pytest.raises(TypeError, match="VisionTransformer.*TimmModel.*ModifiedResNet"):
        SurgeryVisionEncoder(resnet)

    clip = _token_pooled_clip()
    clip.visual.trunk = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=0, global_pool="map"
    )
    with pytest.raises(TypeError, match="'map'"):
        SurgeryVisionEncoder(clip.visual)


def test_a_hugging_face_text_tower_asks_for_transformers(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed
    text_cfg = {
        "hf_model_name": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
        "hf_tokenizer_name": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
        "hf_proj_type": "mlp",
        "hf_pooler_type": "cls_last_hidden_state_pooler",
        "context_length": 256,
    }
    model_cfg = {"embed_dim": 512, "vision_cfg": BIOMEDCLIP_LIKE_VISION_CFG, "text_cfg": text_cfg}
    name = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
    with pytest.raises(MissingDependencyError, match="pip install transformers"):
        build_clip(name, model_cfg=model_cfg)
    with pytest.raises(ImportError, match="pip install transformers"):
        get_tokenizer(name, model_cfg=model_cfg)
