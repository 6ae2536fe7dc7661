"""Several images through the encoders at once give each image what its own pass gives (inference/encode_ahead.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_clipsam as nc
from napari_clipsam._jobs import run
from napari_clipsam.inference import encode_ahead as encode_ahead_module
from napari_clipsam.inference.encode_ahead import encode_ahead, encoder_batch_for
from napari_clipsam.inference.pipeline import SegmentOptions, iter_segment_stack
from tests.helpers import randomize_adapters


def _images():
    rng = np.random.default_rng(7)
    # Different sizes (SAM pads each to its square input) and kinds (gray, RGB).
    return [rng.integers(0, 4000, size=(96, 128)).astype(np.uint16), rng.integers(0, 255, size=(70, 50, 3)).astype(
        np.uint8), rng.normal(100, 20, size=(128, 96)).astype(np.float32)]


def _alone(model, image, concept):
    predictor = nc.ClipSamPredictor(model)
    predictor.set_image(image)
    predictor.set_concept(concept)
    predictor.prepare()
    return predictor


@pytest.mark.parametrize("concept", ["nucleus", None])
def test_each_image_gets_what_its_own_pass_gives(tiny_model, concept):
    randomize_adapters(tiny_model)
    images = _images()
    predictor = nc.ClipSamPredictor(tiny_model)
    assert encode_ahead(predictor, images, concept) == 3
    for image in images:
        predictor.set_image(image)
        predictor.set_concept(concept)
        assert predictor.pending_stages() == []  # nothing left to compute
        alone = _alone(tiny_model, image, concept)
        torch.testing.assert_close(predictor.image_embedding, alone.image_embedding, rtol=1e-5, atol=1e-5)
        assert predictor.input_size == alone.input_size
        if concept is not None:
            np.testing.assert_allclose(predictor.similarity_map(), alone.similarity_map(), atol=1e-5)
        masks, _, _ = predictor.predict(point_coords=[[20, 30]], point_labels=[1])
        expected, _, _ = alone.predict(point_coords=[[20, 30]], point_labels=[1])
        np.testing.assert_array_equal(masks, expected)


def test_images_already_kept_are_not_encoded_again(tiny_model):
    images = _images()
    predictor = nc.ClipSamPredictor(tiny_model)
    predictor.set_image(images[0])
    predictor.set_concept("spot")
    predictor.prepare()
    assert encode_ahead(predictor, images, "spot") == 2
    assert encode_ahead(predictor, images, "spot") == 0  # all three kept now


def test_an_image_given_twice_is_encoded_once(tiny_model):
    images = _images()
    predictor = nc.ClipSamPredictor(tiny_model)
    assert encode_ahead(predictor, [images[0], images[1], images[0].copy()], None) == 2


def test_images_in_the_embedding_store_are_not_encoded_again(tiny_model, tmp_path):
    images = _images()
    assert encode_ahead(nc.ClipSamPredictor(tiny_model, embedding_cache=tmp_path), images, "spot") == 3
    later = nc.ClipSamPredictor(tiny_model, embedding_cache=tmp_path)  # another session: nothing in memory
    assert encode_ahead(later, images, "spot") == 0
    later.set_image(images[0])
    assert later.pending_stages() == [later.STAGE_IMAGE]  # SAM's input only: never stored, recomputed


def test_a_failed_batch_leaves_the_predictor_usable(tiny_model, monkeypatch):
    images = _images()
    predictor = nc.ClipSamPredictor(tiny_model)

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory")

    with monkeypatch.context() as patched:
        patched.setattr(tiny_model, "encoder_suffix", out_of_memory)
        with pytest.raises(RuntimeError, match="out of memory"):
            encode_ahead(predictor, images, "spot")
    for image in images:
        predictor.set_image(image)
        predictor.set_concept("spot")
        torch.testing.assert_close(predictor.image_embedding, _alone(tiny_model, image, "spot").image_embedding)


def _events_and_labels(predictor, stack, encoder_batch):
    events = []
    job = iter_segment_stack(predictor, stack, "nucleus", options=SegmentOptions(encoder_batch=encoder_batch))
    return events, run(job, events.append)


def test_the_images_kept_are_raised_for_a_group_then_put_back(tiny_model):
    stack = np.random.default_rng(5).normal(200, 30, size=(4, 40, 50)).astype(np.float32)
    predictor = nc.ClipSamPredictor(tiny_model, images_kept=1)
    events, _ = _events_and_labels(predictor, stack, 4)
    stages = [event.stage for event in events]
    assert stages[0] == "planes 1-4/4: encoding together"
    assert not [stage for stage in stages if predictor.STAGE_PREFIX in stage]  # each plane found its features
    assert predictor.recent_images.size == 1
    assert encoder_batch_for(predictor, "auto") == 1  # a CPU: batches gain nothing
    with pytest.raises(ValueError, match="encoder_batch must be 'auto' or a whole number"):
        SegmentOptions(encoder_batch=0)


def test_a_job_closed_before_a_group_is_encoded_stops_there(tiny_model):
    stack = np.random.default_rng(6).normal(200, 30, size=(3, 40, 50)).astype(np.float32)
    predictor = nc.ClipSamPredictor(tiny_model, images_kept=0)
    job = iter_segment_stack(predictor, stack, "nucleus", options=SegmentOptions(encoder_batch=3))
    assert next(job).stage == "planes 1-3/3: encoding together"
    job.close()  # a Cancel
    assert predictor.recent_images.size == 0 and not predictor.is_image_set  # nothing encoded, nothing kept
    _, labels = _events_and_labels(predictor, stack, 3)
    _, expected = _events_and_labels(nc.ClipSamPredictor(tiny_model), stack, 1)
    np.testing.assert_array_equal(labels, expected)


def test_tiles_encoded_together_give_the_labels_of_tiles_one_by_one(tiny_model, monkeypatch):
    randomize_adapters(tiny_model)
    rng = np.random.default_rng(3)
    image = rng.normal(200, 30, size=(150, 170)).astype(np.float32)
    yy, xx = np.mgrid[:150, :170]
    for cy, cx in ((30, 40), (90, 120), (120, 30)):
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < 15**2] += 400
    options = dict(model=tiny_model, tile_shape=(48, 48), halo=8)
    one_by_one = nc.segment(image, "nucleus", encoder_batch=1, **options)
    encoded = []
    monkeypatch.setattr(encode_ahead_module, "encode_ahead", lambda *args: encoded.append(encode_ahead(*args)))
    together = nc.segment(image, "nucleus", encoder_batch=3, **options)
    assert encoded == [3, 3, 3, 3, 3]  # 16 tiles: five groups of three, and one left for its own pass
    np.testing.assert_array_equal(together, one_by_one)
    assert one_by_one.any()


def test_planes_encoded_together_give_the_labels_of_planes_one_by_one(tiny_model, monkeypatch):
    randomize_adapters(tiny_model)
    rng = np.random.default_rng(4)
    stack = rng.normal(200, 30, size=(5, 60, 70)).astype(np.float32)
    stack[:, 20:40, 25:45] += 400
    one_by_one = nc.segment(stack, "nucleus", model=tiny_model, encoder_batch=1)
    encoded = []
    monkeypatch.setattr(encode_ahead_module, "encode_ahead", lambda *args: encoded.append(encode_ahead(*args)))
    together = nc.segment(stack, "nucleus", model=tiny_model, encoder_batch=4)
    assert encoded == [4]  # planes 1-4, and the fifth on its own pass
    np.testing.assert_array_equal(together, one_by_one)
    assert one_by_one.any()
