"""The CLIP-guided SAM model: architecture, parameter counts, zero-init equivalence, adapters files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from segment_anything import SamPredictor, sam_model_registry
from segment_anything.modeling.image_encoder import window_partition, window_unpartition

import napari_clipsam as nc
from napari_clipsam.model.adapters import ADAPTER_KEY, adapter_keys
from napari_clipsam.model.attention import use_banded_global_attention
from napari_clipsam.model.build_sam import build_sam
from napari_clipsam.model.decoder import run_decoder
from tests.helpers import load_tiny, randomize_adapters


@pytest.fixture(scope="module")
def vit_b_model():
    """The real vit_b + ViT-B-16 architecture with random weights (a few seconds to build)."""
    torch.manual_seed(0)
    return nc.load_model(
        sam="vit_b",
        clip="ViT-B-16",
        sam_checkpoint=None,
        clip_pretrained=None,
        device="cpu",
        precision="fp32",
        config=nc.ClipSamConfig(train_clip_attention=True),
    )


@pytest.mark.slow
def test_parameter_counts_match_the_paper(vit_b_model):
    counts = vit_b_model.count_parameters()
    assert counts["adapters_per_block"] == [1_379_712] * 12
    assert counts["adapters"] == 16_556_544
    assert counts["clip_vision_attention"] == 28_348_416
    # Paper, Table 1: image encoder 106.2 M in all (16.6 M trainable), mask decoder 4.1 M.
    assert round((counts["sam_image_encoder"] + counts["adapters"]) / 1e6, 1) == 106.2
    assert round(counts["sam_mask_decoder"] / 1e6, 1) == 4.1
    assert counts["trainable"] == (
        counts["adapters"]
        + counts["sam_prompt_encoder"]
        + counts["sam_mask_decoder"]
        + counts["clip_vision_attention"]
    )


@pytest.mark.slow
def test_sam_state_dict_without_adapters_loads_into_vanilla_sam(vit_b_model):
    state_dict = vit_b_model.sam.state_dict()
    keys = adapter_keys(state_dict)
    # Per block: space and semantic bottlenecks (2 linears each), text and vision projections.
    assert len(keys) == 12 * 6 * 2
    vanilla = sam_model_registry["vit_b"]()
    result = vanilla.load_state_dict(
        {k: v for k, v in state_dict.items() if ADAPTER_KEY not in k}, strict=True
    )
    assert not result.missing_keys and not result.unexpected_keys


def test_trainable_set_is_adapters_prompt_encoder_decoder(tiny_model):
    names = [name for name, _ in tiny_model.trainable_parameters()]
    assert names
    for name in names:
        assert ADAPTER_KEY in name or name.startswith(("sam.prompt_encoder.", "sam.mask_decoder."))
    frozen_backbone = [
        p for n, p in tiny_model.sam.image_encoder.named_parameters() if ADAPTER_KEY.strip(".") not in n
    ]
    assert frozen_backbone and not any(p.requires_grad for p in frozen_backbone)
    assert not any(p.requires_grad for p in tiny_model.clip.parameters())


def test_clip_attention_trainable_only_when_configured():
    model = load_tiny(config=nc.ClipSamConfig(train_clip_attention=True),
    )
    clip_trainable = [n for n, p in model.clip.named_parameters() if p.requires_grad]
    assert clip_trainable and all(".attn." in n and n.startswith("visual.") for n in clip_trainable)


def _sam_input(model, image):
    tensor, _ = model.sam_input(nc.to_rgb_uint8(image))
    return tensor


def test_untrained_model_equals_vanilla_sam(tiny_model, blobs_image):
    """Zero-initialised adapters: same embedding and same masks as segment_anything's SamPredictor."""
    rgb = nc.to_rgb_uint8(blobs_image)
    vanilla = build_sam("tiny")  # no adapters, no banded attention: SAM as published
    vanilla.load_state_dict(
        {k: v for k, v in tiny_model.sam.state_dict().items() if ADAPTER_KEY not in k}, strict=True
    )
    reference = SamPredictor(vanilla)
    reference.set_image(rgb)

    predictor = nc.ClipSamPredictor(tiny_model)
    predictor.set_image(blobs_image)
    # Equal up to float rounding: our attention runs through fused SDPA kernels (model/attention.py).
    plain = predictor.image_embedding
    torch.testing.assert_close(plain, reference.features, rtol=1e-5, atol=1e-5)

    points, labels, box = np.array([[30.0, 25.0], [90.0, 80.0]]), np.array([1, 0]), np.array([10, 10, 60, 50])
    ours = predictor.predict(points, labels, box=box, multimask_output=True)
    theirs = reference.predict(points, labels, box=box, multimask_output=True)
    # Masks identical; scores and logits equal up to float rounding, since our decoder
    # runs its upscaling convolutions in channels-last layout (a CPU speed-up).
    np.testing.assert_array_equal(ours[0], theirs[0])
    for a, b in zip(ours[1:], theirs[1:]):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)

    # With a concept the encoder input changes, but zero-initialised adapters add exactly nothing.
    predictor.set_concept("nucleus")
    assert torch.equal(predictor.image_embedding, plain)


def test_adapters_change_the_embedding_once_trained(tiny_model, blobs_image):
    randomize_adapters(tiny_model)
    predictor = nc.ClipSamPredictor(tiny_model)
    predictor.set_image(blobs_image)
    plain = load_tiny()
    plain.sam.load_state_dict(
        {k: v for k, v in tiny_model.sam.state_dict().items() if ADAPTER_KEY not in k}, strict=False
    )
    # plain: the same SAM weights with untrained adapters, i.e. vanilla SAM.
    no_concept = predictor.image_embedding
    assert not torch.allclose(no_concept, plain.encode_image(_sam_input(plain, blobs_image), None))
    predictor.set_concept("nucleus")
    nucleus = predictor.image_embedding
    predictor.set_concept("background")
    background = predictor.image_embedding
    assert not torch.allclose(nucleus, no_concept)
    assert not torch.allclose(nucleus, background)


def test_prefix_and_suffix_equal_the_full_encoder(blobs_image):
    """Splitting the encoder at the first semantic block changes nothing."""
    model = load_tiny(config=nc.ClipSamConfig(semantic_blocks=(-1,)),
    )
    randomize_adapters(model)
    assert model.first_semantic_block == 1
    assert model.adapters[0].semantic is None and model.adapters[1].semantic is not None
    sam_input = _sam_input(model, blobs_image)
    _, patches = model.clip_features(model.clip_input(nc.to_rgb_uint8(blobs_image)))
    text = model.text_embedding("nucleus")
    conditioning = model.conditioning(text, patches, model.similarity(patches, text[None]))
    split = model.encoder_suffix(model.encoder_prefix(sam_input), conditioning)
    encoder = model.sam.image_encoder
    with torch.no_grad():
        tokens = encoder.patch_embed(sam_input) + encoder.pos_embed
        for block in encoder.blocks:  # every block given the concept, as one unsplit pass
            tokens = block(tokens, *conditioning.signals())
        full = encoder.neck(tokens.permute(0, 3, 1, 2))
    torch.testing.assert_close(split, full)


def _sam_attention_branch(block, x):
    """SAM's attention on normalised tokens x (B, H, W, C), within windows where the block has them."""
    if block.window_size == 0:
        return block.attn(x)
    windows, padded_size = window_partition(x, block.window_size)
    return window_unpartition(block.attn(windows), block.window_size, padded_size, x.shape[1:3])


@pytest.mark.parametrize("index", [0, 1], ids=["windowed", "global"])
def test_adapted_block_formula(tiny_model, index):
    """x' = x + A + s * Ad_s(A), A = Attn(LN1(x)); out = x' + MLP(h) + s * Ad_m(h + GELU(W_t t) +
    resize(W_v (V + s_map))), h = LN2(x'); checked by hand. The space adapter acts per token, so after
    window unpartition equals on the windows when, as here, the grid needs no padding."""
    randomize_adapters(tiny_model)
    block = tiny_model.sam.image_encoder.blocks[index]
    adapter = block.clipsam
    assert block.window_size == (8 if index == 0 else 0)
    torch.manual_seed(3)
    x = torch.randn(1, 16, 16, adapter.space.up.out_features)
    text, patches, sim = torch.randn(1, 64), torch.randn(1, 32, 32, 64), torch.rand(1, 32, 32)
    with torch.no_grad():
        got = block(x, text, patches, sim)
        attention = _sam_attention_branch(block, block.norm1(x))
        x = x + attention + 0.5 * adapter.space(attention)
        h = block.norm2(x)
        u = adapter.vision_proj(patches + sim[..., None]).permute(0, 3, 1, 2)
        u = F.interpolate(u, size=(16, 16), mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
        t = F.gelu(adapter.text_proj(text))[:, None, None, :]
        block_mlp = block.mlp.lin2(block.mlp.act(block.mlp.lin1(h)))
        expected = x + block_mlp + 0.5 * adapter.semantic(h + t + u)
    torch.testing.assert_close(got, expected)


def test_modalities_decide_which_projections_exist():
    model = load_tiny(config=nc.ClipSamConfig(modalities=("similarity",)),
    )
    adapter = model.adapters[0]
    assert adapter.text_proj is None and adapter.vision_proj is not None
    conditioning = model.conditioning(torch.ones(64), torch.ones(1, 32, 32, 64), torch.ones(1, 32, 32))
    assert conditioning.text is None and conditioning.patches is None and conditioning.similarity is not None
    with pytest.raises(ValueError, match="Unknown modalities"):
        nc.ClipSamConfig(modalities=("sound",))


def test_surgery_features_follow_the_method(tiny_model):
    """CLS from the ordinary path; patches from accumulated value-value attention, computed by hand."""
    visual = tiny_model.clip.visual
    torch.manual_seed(0)
    images = torch.randn(1, 3, 64, 64)  # the tower's native size: no position interpolation
    with torch.no_grad():
        cls, patches = tiny_model.surgery(images)
        torch.testing.assert_close(cls, visual(images))

        x = visual.conv1(images).flatten(2).transpose(1, 2)
        x = torch.cat([visual.class_embedding.expand(1, 1, -1), x], dim=1) + visual.positional_embedding
        x = visual.ln_pre(x)
        blocks = visual.transformer.resblocks
        surgery = None
        for index, block in enumerate(blocks):
            if index >= len(blocks) - min(6, len(blocks)):
                surgery = x.clone() if surgery is None else surgery
                h = block.ln_1(x)
                width, heads = block.attn.embed_dim, block.attn.num_heads
                v = h @ block.attn.in_proj_weight[2 * width :].T + block.attn.in_proj_bias[2 * width :]
                v = v.reshape(1, -1, heads, width // heads).permute(0, 2, 1, 3)
                weights = torch.softmax(v @ v.transpose(-1, -2) / (width // heads) ** 0.5, dim=-1)
                out = (weights @ v).permute(0, 2, 1, 3).reshape(1, -1, width)
                surgery = surgery + block.attn.out_proj(out)
            x = block(x)
        expected = (visual.ln_post(surgery[:, 1:]) @ visual.proj).reshape(1, 4, 4, -1)
    torch.testing.assert_close(patches, expected, rtol=1e-4, atol=1e-5)
    plain = (visual.ln_post(x[:, 1:]) @ visual.proj).reshape(1, 4, 4, -1)
    assert not torch.allclose(patches, plain)


def test_clip_input_uses_the_configured_size(tiny_model):
    image = np.zeros((50, 70, 3), dtype=np.uint8)
    assert tiny_model.clip_input(image).shape == (1, 3, 512, 512)
    _, patches = tiny_model.clip_features(tiny_model.clip_input(image))
    assert patches.shape == (1, 32, 32, 64)


def test_text_embedding_is_the_template_ensemble_minus_the_empty_concept(tiny_model, monkeypatch):
    templates = tiny_model.config.template_list()
    tokenizer = tiny_model.text_embedder.tokenizer

    def ensemble(concept):
        with torch.no_grad():
            e = tiny_model.clip.encode_text(tokenizer([t.format(concept) for t in templates]))
        return F.normalize(F.normalize(e, dim=-1).mean(0), dim=-1)

    expected = F.normalize(ensemble("nucleus") - ensemble(""), dim=-1)
    got = tiny_model.text_embedding("nucleus")
    torch.testing.assert_close(got, expected)
    assert got.dtype == torch.float32 and abs(float(got.norm()) - 1) < 1e-5

    calls = []
    monkeypatch.setattr(tiny_model.clip, "encode_text", lambda *a, **k: calls.append(1))
    assert tiny_model.text_embedding("nucleus") is got  # cached: the text tower is not run
    assert not calls


def test_similarity_is_min_max_normalised(tiny_model):
    torch.manual_seed(0)
    sim = tiny_model.similarity(torch.randn(2, 8, 8, 64), torch.randn(2, 64))
    assert sim.shape == (2, 8, 8)
    assert torch.allclose(sim.amin(dim=(1, 2)), torch.zeros(2))
    assert torch.allclose(sim.amax(dim=(1, 2)), torch.ones(2))


def test_adapters_round_trip_to_identical_predictions(tiny_model, blobs_image, tmp_path):
    randomize_adapters(tiny_model)
    with torch.no_grad():
        tiny_model.sam.mask_decoder.iou_prediction_head.layers[0].bias.add_(0.3)
    path = tiny_model.save_adapters(tmp_path / "nuclei.safetensors", concepts=["nucleus"])

    reloaded = load_tiny(adapters=path
    )
    # The base weights are random: copy the frozen ones, as a shared checkpoint would provide.
    frozen = {k: v for k, v in tiny_model.state_dict().items() if k not in dict(tiny_model.trainable_parameters())}
    reloaded.load_state_dict(frozen, strict=False)

    results = []
    for model in (tiny_model, reloaded):
        predictor = nc.ClipSamPredictor(model)
        predictor.set_image(blobs_image)
        predictor.set_concept("nucleus")
        results.append(predictor.predict(point_coords=[[30, 25]]))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)

    metadata = nc.read_adapters_metadata(path)
    assert metadata["sam"] == "tiny" and metadata["clip"] == "tiny"
    assert metadata["concepts"] == '["nucleus"]'
    assert nc.ClipSamConfig.from_json(metadata["config"]) == tiny_model.config
    assert metadata["napari_clipsam_version"] == nc.__version__


def test_load_model_takes_the_configuration_from_the_adapters_file(tmp_path):
    config = nc.ClipSamConfig(semantic_blocks=(-1,), modalities=("text", "similarity"))
    model = load_tiny(config=config)
    path = model.save_adapters(tmp_path / "a.safetensors")
    reloaded = load_tiny(adapters=path)
    assert reloaded.config == config
    with pytest.raises(nc.AdaptersMismatchError, match="configuration"):
        load_tiny(adapters=path, config=nc.ClipSamConfig(),
        )


def test_adapters_for_another_base_model_are_refused(tiny_model, tmp_path):
    path = tiny_model.save_adapters(tmp_path / "a.safetensors")
    other = load_tiny()
    other.sam_name = "vit_b"  # what a vit_b model would report
    with pytest.raises(nc.AdaptersMismatchError, match="SAM 'tiny' in the file, 'vit_b' in the model"):
        other.load_adapters(path)
    before = {k: v.clone() for k, v in other.trainable_state_dict().items()}
    assert all(torch.equal(before[k], v) for k, v in other.trainable_state_dict().items())


def test_saving_adapters_never_damages_the_previous_file(tiny_model, tmp_path, monkeypatch):
    path = tiny_model.save_adapters(tmp_path / "a.safetensors", concepts=["old"])
    original = path.read_bytes()

    import safetensors.torch

    def failing_save(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        tiny_model.save_adapters(path, concepts=["new"])
    assert path.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]


def test_not_an_adapters_file_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "weights.safetensors"
    save_file({"x": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="not a napari-clipsam adapters file"):
        nc.read_adapters_metadata(path)
    with pytest.raises(FileNotFoundError):
        nc.read_adapters_metadata(tmp_path / "missing.safetensors")


def test_bf16_precision_runs_and_returns_float32(blobs_image):
    model = load_tiny(precision="bf16"
    )
    assert model.precision == "bf16"
    predictor = nc.ClipSamPredictor(model)
    predictor.set_image(blobs_image)
    predictor.set_concept("nucleus")
    assert predictor.image_embedding.dtype == torch.float32
    masks, scores, _ = predictor.predict()
    assert masks.dtype == bool and scores.dtype == np.float32


def test_auto_precision_follows_the_hardware(monkeypatch):
    from napari_clipsam.model import device as _device

    cpu = torch.device("cpu")
    monkeypatch.setattr(_device, "cpu_has_native_bf16", lambda: True)
    assert nc.resolve_precision("auto", cpu) == "bf16"
    monkeypatch.setattr(_device, "cpu_has_native_bf16", lambda: False)
    assert nc.resolve_precision("auto", cpu) == "fp32"
    assert nc.resolve_precision("fp32", cpu) == "fp32"
    with pytest.raises(ValueError, match="Unknown precision"):
        nc.resolve_precision("fp16", cpu)
    assert nc.resolve_device("auto").type in {"cuda", "mps", "cpu"}
    if not torch.cuda.is_available():
        assert nc.resolve_device("auto") == cpu or nc.resolve_device("auto").type == "mps"
        with pytest.raises(ValueError, match="CUDA is not available"):
            nc.resolve_device("cuda")


def test_banded_global_attention_equals_sams_attention():
    torch.manual_seed(0)
    sam = build_sam("tiny")
    block = sam.image_encoder.blocks[1]
    assert block.window_size == 0
    with torch.no_grad():
        block.attn.rel_pos_h.normal_(std=0.2)
        block.attn.rel_pos_w.normal_(std=0.2)
        x = torch.randn(2, 16, 16, 32)
        expected = block.attn(x)
        # 40 queries per band: 2 grid rows a band, so 8 bands over the 16-row grid.
        assert use_banded_global_attention(sam.image_encoder, queries_per_band=40) == 1
        got = block.attn(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert "forward" not in sam.image_encoder.blocks[0].attn.__dict__  # windowed block untouched


@pytest.mark.slow
def test_compiled_decoder_gives_the_eager_results(tiny_model, blobs_image):
    randomize_adapters(tiny_model)
    predictor = nc.ClipSamPredictor(tiny_model)
    predictor.set_image(blobs_image)
    predictor.set_concept("nucleus")
    prompts = [dict(point_coords=[[30, 25]]), dict(point_coords=[[30, 25], [90, 70]], point_labels=[1, 0]),
               dict(box=[5, 5, 60, 50]), dict()]
    eager = [predictor.predict(**p) for p in prompts]
    keys = list(tiny_model.state_dict())
    assert tiny_model.compile_decoder(warm_up=True)
    assert tiny_model.decoder_runner is not run_decoder  # clicks go through the compiled runner
    compiled = [predictor.predict(**p) for p in prompts]
    for before, after in zip(eager, compiled):
        np.testing.assert_allclose(after[2], before[2], rtol=1e-4, atol=1e-4)
        assert (after[0] == before[0]).mean() > 0.999
    assert list(tiny_model.state_dict()) == keys
