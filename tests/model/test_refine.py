"""The mask refiner (model/refine.py): the identity when added, refined logits everywhere masks are made,
trained and saved with the decoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import napari_clipsam as nc
from napari_clipsam.model.grow import add_mask_refiner
from napari_clipsam.model.refine import (
    ACTIVATION_BUDGET,
    MAX_CHUNK,
    MaskRefiner,
    has_refiner,
    masks_per_chunk,
    refine_logits,
)
from napari_clipsam.synthetic import generate_scene
from napari_clipsam.training.config import TrainingConfig
from napari_clipsam.training.data import ConceptDataset
from napari_clipsam.training.engine import train
from tests.helpers import demo_without_refiner, load_tiny, two_kinds_image


def _predictor(model, image, concept):
    predictor = nc.ClipSamPredictor(model)
    predictor.set_image(image)
    predictor.set_concept(concept)
    return predictor


@pytest.fixture(scope="module")
def refined():
    """The demo model (less its own refiner, if it has one), and the same with a refiner of width 8 added."""
    source = demo_without_refiner()
    torch.manual_seed(5)
    target = nc.load_model(sam="demo", clip="demo", sam_checkpoint=None, clip_pretrained=None, device="cpu",
                           precision="fp32", config=source.config.replace(mask_refiner=8))
    add_mask_refiner(source, target)
    return source, target


def test_an_added_refiner_gives_the_models_masks_at_the_inputs_resolution(refined):
    source, target = refined
    assert not has_refiner(source) and has_refiner(target)
    assert target.concepts == source.concepts and target.is_demo
    assert target.count_parameters()["sam_mask_decoder"] > source.count_parameters()["sam_mask_decoder"]
    scene = generate_scene(2_000_000, kind="nuclei")
    ys, xs = np.nonzero(scene.labels["nucleus"] == 1)
    click = {"point_coords": np.array([[xs[len(xs) // 2], ys[len(ys) // 2]]], float), "point_labels": np.array([1])}
    for prompt in ({}, click):
        masks, scores, logits = _predictor(source, scene.image, "nucleus").predict(**prompt)
        new_masks, new_scores, new_logits = _predictor(target, scene.image, "nucleus").predict(**prompt)
        assert masks.any() and logits.shape == (1, 128, 128) and new_logits.shape == (1, 256, 256)
        upsampled = F.interpolate(torch.as_tensor(logits)[None], size=(256, 256), mode="bilinear",
                                  align_corners=False)[0].numpy()
        np.testing.assert_allclose(new_logits, upsampled, atol=1e-4)
        np.testing.assert_allclose(new_scores, scores, atol=1e-5)
        assert (new_masks != masks).sum() <= 2  # only rounding at the threshold may differ
    # The text mode's objects, seeds and all, come out the same.
    labels = nc.segment(scene.image, "nucleus", source, instances=True, augment=False)
    new_labels = nc.segment(scene.image, "nucleus", target, instances=True, augment=False)
    assert labels.max() > 10
    assert (labels > 0).sum() == pytest.approx((new_labels > 0).sum(), abs=20)
    assert new_labels.max() == pytest.approx(labels.max(), abs=1)


def test_refined_logits_go_back_as_the_mask_prompt(refined):
    _, target = refined
    scene = generate_scene(2_000_001, kind="nuclei")
    predictor = _predictor(target, scene.image, "nucleus")
    masks, _, logits = predictor.predict()
    again, _, _ = predictor.predict(mask_input=logits)  # (1, 256, 256) averaged down to the prompt's 128
    assert again.shape == masks.shape == (1, *scene.image.shape) and again.any()
    small = F.adaptive_avg_pool2d(torch.as_tensor(logits)[None], (128, 128))[0].numpy()
    same, _, _ = predictor.predict(mask_input=small)
    np.testing.assert_array_equal(same, again)
    with pytest.raises(ValueError, match=r"\(1, 128, 128\) or \(1, 256, 256\)"):
        predictor.predict(mask_input=np.zeros((1, 64, 64)))


def test_the_refiner_corrects_each_mask_with_its_own_image():
    torch.manual_seed(0)
    refiner = MaskRefiner(4)
    torch.nn.init.normal_(refiner.out.weight, std=0.1)  # not the identity
    logits, images = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)
    together = refiner(logits, images)
    for i in range(2):
        for c in range(3):
            alone = refiner(logits[i : i + 1, c : c + 1], images[i : i + 1])
            torch.testing.assert_close(together[i : i + 1, c : c + 1], alone, atol=1e-5, rtol=1e-5)
    # One image for a batch of prompts (the predictor's case) is that image for each.
    torch.testing.assert_close(refiner(logits, images[:1]), refiner(logits, images[:1].expand(2, -1, -1, -1)))
    with pytest.raises(ValueError, match="one image per mask's batch"):
        refiner(logits, torch.randn(3, 3, 16, 16))


def test_refining_in_chunks_is_refining_at_once():
    model = load_tiny(config=nc.ClipSamConfig(clip_image_size=64, surgery_blocks=1, mask_refiner=4))
    torch.nn.init.normal_(model.sam.mask_decoder.refiner.out.weight, std=0.1)
    frame = model.image_size
    low_res, image = torch.randn(20, 1, frame // 4, frame // 4), torch.randn(20, 3, frame, frame)
    chunked = refine_logits(model, low_res, image)  # in chunks
    at_once = model.sam.mask_decoder.refiner(F.interpolate(low_res, size=(frame, frame), mode="bilinear",
                                                           align_corners=False), image)
    torch.testing.assert_close(chunked, at_once, atol=1e-5, rtol=1e-5)
    assert refine_logits(load_tiny(), low_res, image) is low_res  # no refiner: as they are
    # Several masks per prompt and one image for all (the predictor's case), in chunks across both.
    multi = torch.randn(5, 3, frame // 4, frame // 4)
    up = F.interpolate(multi, size=(frame, frame), mode="bilinear", align_corners=False)
    torch.testing.assert_close(refine_logits(model, multi, image[:1]),
                               model.sam.mask_decoder.refiner(up, image[:1]), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="one image, or one per mask's batch"):
        refine_logits(model, multi, image[:2])


def test_wide_refiners_on_large_frames_refine_fewer_masks_at_a_time():
    assert masks_per_chunk(16, (256, 256)) == MAX_CHUNK  # the demo model
    assert masks_per_chunk(16, (1024, 1024)) == 4  # published SAM's frame
    assert masks_per_chunk(256, (1024, 1024)) == 1  # never none
    for width, side in ((4, 64), (16, 256), (64, 512), (16, 1024), (256, 1024)):
        per_mask = width * side * side
        chunk = masks_per_chunk(width, (side, side))
        assert chunk == 1 or chunk * per_mask <= ACTIVATION_BUDGET


def test_the_refiner_trains_at_its_own_rate_and_is_saved_with_the_decoder(tmp_path):
    config = nc.ClipSamConfig(clip_image_size=64, surgery_blocks=1, mask_refiner=4)
    torch.manual_seed(0)
    model = load_tiny(config=config)
    names = [name for name, _ in model.trainable_parameters() if ".refiner." in name]
    assert names and all(name.startswith("sam.mask_decoder.refiner.") for name in names)
    data = ConceptDataset.from_arrays([(*two_kinds_image(seed), {1: "disc", 2: "square"}) for seed in range(3)])
    before = {name: p.detach().clone() for name, p in model.trainable_parameters()}
    result = train(model, data, None, TrainingConfig(mode="text", steps=3, batch_size=2, learning_rate=1e-6,
                                                     refiner_learning_rate=1e-2, seed=0),
                   output=tmp_path / "refined.safetensors")
    after = dict(model.trainable_parameters())
    refiner_change = max(float((after[n] - before[n]).detach().abs().max()) for n in names)
    other_change = max(float((after[n] - before[n]).detach().abs().max()) for n in before if n not in names)
    assert refiner_change > 1e-3 > 10 * other_change  # the refiner's own, higher rate
    assert model.sam.mask_decoder.refiner.out.weight.abs().sum() > 0  # no longer the identity
    reloaded = load_tiny(adapters=result.output)  # the file's configuration brings the refiner
    assert reloaded.config.mask_refiner == 4
    # Loaded into channels-last weights (twice as fast on CPU), as built.
    assert reloaded.sam.mask_decoder.refiner.body[2].weight.is_contiguous(memory_format=torch.channels_last)
    for name in names:
        torch.testing.assert_close(dict(reloaded.trainable_parameters())[name], after[name])
    image = two_kinds_image(50)[0]
    outputs = [_predictor(m, image, "disc").predict() for m in (model, reloaded)]
    np.testing.assert_array_equal(outputs[0][0], outputs[1][0])
    np.testing.assert_allclose(outputs[0][2], outputs[1][2], atol=1e-4)


def test_refiner_settings_are_checked():
    for bad in (-1, 1000, 2.5, True, "8"):
        with pytest.raises(ValueError, match="mask_refiner must be a whole number from 0 to 256"):
            nc.ClipSamConfig(mask_refiner=bad)
    assert nc.ClipSamConfig.from_json(nc.ClipSamConfig(mask_refiner=8).to_json()).mask_refiner == 8
    assert nc.ClipSamConfig.from_dict({}).mask_refiner == 0  # files written before the refiner have none
    for bad in (-1e-3, float("nan")):
        with pytest.raises(ValueError, match="refiner_learning_rate must be None or a finite number"):
            TrainingConfig(refiner_learning_rate=bad)


def test_add_mask_refiner_refuses_models_that_differ_otherwise():
    config = nc.ClipSamConfig(clip_image_size=64, surgery_blocks=1)
    plain, with_refiner = load_tiny(config=config), load_tiny(config=config.replace(mask_refiner=4))
    with pytest.raises(ValueError, match="a source without a mask refiner and a target with one"):
        add_mask_refiner(plain, plain)
    with pytest.raises(ValueError, match="a source without a mask refiner and a target with one"):
        add_mask_refiner(with_refiner, with_refiner)
    other = load_tiny(config=config.replace(mask_refiner=4, num_points=3))
    with pytest.raises(ValueError, match="same SAM, CLIP and configuration apart from the refiner"):
        add_mask_refiner(plain, other)
    add_mask_refiner(plain, with_refiner)  # the same model with a refiner: fine
