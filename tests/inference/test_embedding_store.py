"""Features on disk: a later session with the same image, model and size skips the encoders."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import napari_clipsam as nc
from napari_clipsam.inference import embedding_store
from napari_clipsam.inference.embedding_store import EmbeddingStore, model_fingerprint
from tests.helpers import load_tiny, randomize_adapters

LOGGER = "napari_clipsam.inference.embedding_store"
ENCODERS = ("encoder_prefix", "encoder_suffix", "clip_features")


@pytest.fixture
def trained_model():
    """The tiny model with a concept-independent first block (so a stored prefix saves a block) and
    random adapters (zero ones would hide features computed without them)."""
    torch.manual_seed(0)
    model = load_tiny(config=nc.ClipSamConfig(semantic_blocks=(-1,)))
    randomize_adapters(model, seed=3)
    return model


def _same_weights(model):
    """Another model object with the same weights: what a later session loads."""
    twin = load_tiny(config=model.config)
    twin.load_state_dict(model.state_dict())
    return twin


def _count_encoder_calls(monkeypatch, model) -> list[str]:
    calls = []
    for name in ENCODERS:
        def wrapper(*args, _name=name, _original=getattr(model, name), **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(model, name, wrapper)
    return calls


def _segment(predictor, image, concept="nucleus"):
    """set_image + set_concept + text-only predict; the stages it ran, and masks, scores, logits."""
    predictor.set_image(image)
    predictor.set_concept(concept)
    stages = predictor.pending_stages()
    return stages, predictor.predict()


def _assert_same(result, expected):
    for got, want in zip(result, expected):
        np.testing.assert_array_equal(got, want)


def test_a_later_session_skips_the_encoders_and_gives_the_same_masks(trained_model, blobs_image, tmp_path,
                                                                      monkeypatch):
    _, first = _segment(nc.ClipSamPredictor(trained_model, embedding_cache=tmp_path / "cache"), blobs_image)
    # Nothing else was called (no stash, no flush): a process that exits here has stored its image.
    later = _same_weights(trained_model)
    calls = _count_encoder_calls(monkeypatch, later)
    predictor = nc.ClipSamPredictor(later, embedding_cache=EmbeddingStore(tmp_path / "cache"))
    stages, again = _segment(predictor, blobs_image)
    assert stages == [predictor.STAGE_IMAGE] and calls == []  # SAM's input only: it is not stored
    _assert_same(again, first)
    # A point prompt with no concept needs the no-concept embedding: computed from the stored prefix.
    predictor.set_concept(None)
    predictor.predict(point_coords=np.array([[30, 25]]))
    assert calls == ["encoder_suffix"]
    # A new concept: its text and embedding only, on the stored CLIP features and prefix.
    predictor.set_concept("cell")
    assert predictor.pending_stages() == [predictor.STAGE_TEXT, predictor.STAGE_CONDITIONED]


def test_a_prefix_that_runs_no_block_is_not_stored(tiny_model, blobs_image, tmp_path, monkeypatch):
    assert tiny_model.first_semantic_block == 0  # every block concept-conditioned: the default
    cache = tmp_path / "cache"
    _, first = _segment(nc.ClipSamPredictor(tiny_model, embedding_cache=cache), blobs_image)
    assert not list(cache.glob("*/base")) and len(list(cache.glob("*/concept-*"))) == 1
    later = _same_weights(tiny_model)
    calls = _count_encoder_calls(monkeypatch, later)
    predictor = nc.ClipSamPredictor(later, embedding_cache=cache)
    stages, again = _segment(predictor, blobs_image)
    assert stages == [predictor.STAGE_IMAGE] and calls == []
    _assert_same(again, first)
    predictor.set_concept("cell")  # the patch embedding again, cheap, and the encoder for the concept
    predictor.prepare()
    assert calls == ["encoder_prefix", "encoder_suffix"]


def test_images_that_left_memory_come_back_from_disk(trained_model, blobs_image, tmp_path, monkeypatch):
    predictor = nc.ClipSamPredictor(trained_model, images_kept=0, embedding_cache=tmp_path / "cache")
    flipped = np.ascontiguousarray(blobs_image[::-1])
    _, first = _segment(predictor, blobs_image)
    _segment(predictor, flipped)
    calls = _count_encoder_calls(monkeypatch, trained_model)
    stages, again = _segment(predictor, blobs_image)
    assert stages == [predictor.STAGE_IMAGE] and calls == []
    _assert_same(again, first)


def test_other_weights_or_another_size_are_a_miss(trained_model, blobs_image, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    _, first = _segment(nc.ClipSamPredictor(trained_model, embedding_cache=cache), blobs_image)
    other = _same_weights(trained_model)
    randomize_adapters(other, seed=4)
    calls = _count_encoder_calls(monkeypatch, other)
    stages, result = _segment(nc.ClipSamPredictor(other, embedding_cache=cache), blobs_image)
    assert "encoder_prefix" in calls and "encoder_suffix" in calls and "clip_features" in calls
    assert not np.array_equal(result[2], first[2])
    # The same model at another SAM input size.
    calls.clear()
    stages, _ = _segment(nc.ClipSamPredictor(other, image_size=128, embedding_cache=cache), blobs_image)
    assert "encoder_prefix" in calls and "encoder_suffix" in calls
    # Adapters replaced in the model a predictor uses: its features, and the stored ones, are stale.
    predictor = nc.ClipSamPredictor(trained_model, embedding_cache=cache)
    _segment(predictor, blobs_image)
    randomize_adapters(trained_model, seed=5)
    trained_model.weights_version += 1  # as loading or training adapters does
    stages, result = _segment(predictor, blobs_image)
    assert predictor.STAGE_PREFIX in stages and not np.array_equal(result[2], first[2])


def test_the_fingerprint_follows_the_weights_the_features_depend_on(trained_model, monkeypatch):
    hashes = []
    hash_weights = embedding_store._hash_weights
    monkeypatch.setattr(embedding_store, "_hash_weights", lambda model: hashes.append(1) or hash_weights(model))
    fingerprint = model_fingerprint(trained_model)
    assert model_fingerprint(trained_model) == fingerprint and len(hashes) == 1  # once per weights version
    twin = _same_weights(trained_model)
    assert model_fingerprint(twin) == fingerprint
    with torch.no_grad():
        twin.sam.mask_decoder.iou_prediction_head.layers[0].weight.add_(1.0)
    twin.weights_version += 1
    assert model_fingerprint(twin) == fingerprint  # the decoder makes no stored feature
    with torch.no_grad():
        next(twin.clip.visual.parameters()).add_(1.0)
    twin.weights_version += 1
    assert model_fingerprint(twin) != fingerprint
    assert model_fingerprint(load_tiny(precision="bf16")) != model_fingerprint(load_tiny())


def _stored_files(cache):
    return sorted(path for path in cache.rglob("*") if path.is_file() and ".writing" not in path.parts)


@pytest.mark.parametrize("damage", ["truncate", "flip", "no_metadata", "shape"])
def test_a_damaged_piece_is_recomputed_and_stored_again(trained_model, blobs_image, tmp_path, monkeypatch, caplog,
                                                        damage):
    cache = tmp_path / "cache"
    predictor = nc.ClipSamPredictor(trained_model, embedding_cache=cache)
    _, first = _segment(predictor, blobs_image)
    [prefix_chunk] = [path for path in _stored_files(cache)
                      if path.parent.name == "prefix" and not path.name.startswith(".")]
    if damage == "truncate":
        prefix_chunk.write_bytes(prefix_chunk.read_bytes()[:100])
    elif damage == "flip":
        data = bytearray(prefix_chunk.read_bytes())
        data[len(data) // 2] ^= 0xFF
        prefix_chunk.write_bytes(bytes(data))
    elif damage == "no_metadata":  # a piece as a non-atomic writer would leave it when killed
        (prefix_chunk.parent.parent / ".zattrs").unlink()
    else:  # whole and under the right key, but not what this model's encoder makes
        shutil.rmtree(prefix_chunk.parent.parent)
        entry = EmbeddingStore.entry(predictor.image_digest, model_fingerprint(trained_model), 256)
        assert EmbeddingStore(cache).write(entry, "base", {"prefix": torch.zeros(1, 16, 16, 8)})
    later = _same_weights(trained_model)
    calls = _count_encoder_calls(monkeypatch, later)
    predictor = nc.ClipSamPredictor(later, embedding_cache=cache)
    predictor.set_image(blobs_image)
    predictor.set_concept(None)  # the damaged prefix is needed for the no-concept embedding
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        predictor.predict(point_coords=np.array([[30, 25]]))
    assert calls == ["encoder_prefix", "encoder_suffix"]
    assert "damaged" in caplog.text
    # The prefix was stored again, whole: the next session reads it.
    predictor = nc.ClipSamPredictor(later, embedding_cache=cache)
    predictor.set_image(blobs_image)
    predictor.set_concept("cell")
    assert predictor.STAGE_PREFIX not in predictor.pending_stages()
    _, result = _segment(nc.ClipSamPredictor(later, embedding_cache=cache), blobs_image)
    _assert_same(result, first)


def test_a_store_that_cannot_be_written_warns_once_and_the_work_goes_on(trained_model, blobs_image, tmp_path,
                                                                        monkeypatch, caplog):
    flipped = np.ascontiguousarray(blobs_image[::-1])
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    expected = [_segment(nc.ClipSamPredictor(trained_model), image)[1] for image in (blobs_image, flipped)]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        predictor = nc.ClipSamPredictor(trained_model, embedding_cache=not_a_folder / "cache")
        for image, result in zip((blobs_image, flipped), expected):
            _assert_same(_segment(predictor, image)[1], result)
    assert len(caplog.records) == 1 and "will not be stored" in caplog.text
    # A read-only store (chmod does not bind root: writes are refused here as the system would).
    cache = tmp_path / "cache"
    _segment(nc.ClipSamPredictor(trained_model, embedding_cache=cache), blobs_image)
    before = _stored_files(cache)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(EmbeddingStore, "_write", staticmethod(refuse))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        predictor = nc.ClipSamPredictor(_same_weights(trained_model), embedding_cache=cache)
        stages, result = _segment(predictor, blobs_image)  # read from the store
        assert stages == [predictor.STAGE_IMAGE]
        _assert_same(result, expected[0])
        for concept in ("cell", "membrane"):  # new embeddings: their writes are refused
            _segment(predictor, flipped, concept)
    assert len(caplog.records) == 1 and not predictor.recent_images.store.writable
    assert _stored_files(cache) == before


def test_pieces_keep_dtype_shape_and_values_and_reject_others(tmp_path):
    store = EmbeddingStore(tmp_path / "cache")
    entry = store.entry("image", "model", 256)
    arrays = {"half": torch.randn(1, 4, 4, 8).to(torch.bfloat16), "full": torch.randn(1, 8, 2, 2)}
    assert store.write(entry, "base", arrays, {"note": [1, 2]})
    read, extra = store.read(entry, "base")
    assert extra == {"note": [1, 2]} and set(read) == set(arrays)
    for name, tensor in arrays.items():
        assert read[name].dtype == tensor.dtype and torch.equal(read[name], tensor)
    assert store.read(store.entry("image", "model", 512), "base") is None
    assert store.read(entry, "clip") is None
    # Metadata that no longer fits the array (another shape): the piece is removed, not read.
    import zarr

    group = zarr.open_group(str(next((tmp_path / "cache").glob("*/base"))), mode="r+")
    described = group.attrs["arrays"]
    described["full"]["shape"] = [1, 8, 4, 1]
    group.attrs["arrays"] = described
    assert store.read(entry, "base") is None and not store.has(entry, "base")


def _entries(cache) -> set:
    return {path for path in cache.iterdir() if not path.name.startswith(".")}


def test_the_least_recently_used_images_go_first_past_max_gb(trained_model, blobs_image, tmp_path):
    cache = tmp_path / "cache"
    images = [blobs_image, np.ascontiguousarray(blobs_image[::-1]), np.ascontiguousarray(blobs_image[:, ::-1])]
    _segment(nc.ClipSamPredictor(trained_model, embedding_cache=cache), images[0])
    [first] = _entries(cache)
    store = EmbeddingStore(cache, max_gb=2.5 * EmbeddingStore(cache).size_bytes() / 1e9)  # room for two images
    predictor = nc.ClipSamPredictor(trained_model, images_kept=0, embedding_cache=store)
    _segment(predictor, images[1])
    [second] = _entries(cache) - {first}
    os.utime(first, (1e9, 1e9))  # both used long ago, the first image longest ago
    os.utime(second, (1e9 + 1, 1e9 + 1))
    _segment(predictor, images[0])  # read: now the most recently used
    _segment(predictor, images[2])
    assert first in _entries(cache) and second not in _entries(cache) and len(_entries(cache)) == 2
    assert store.size_bytes() <= store.max_bytes
    store.clear()
    assert store.size_bytes() == 0 and not _entries(cache)
    with pytest.raises(ValueError, match="positive"):
        EmbeddingStore(cache, max_gb=0)


def test_a_killed_writers_leftovers_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftover = tmp_path / "cache" / ".writing" / f"{dead.pid}-0123"
    (leftover / "prefix").mkdir(parents=True)
    live = tmp_path / "cache" / ".writing" / f"{os.getpid()}-4567"
    live.mkdir()
    EmbeddingStore(tmp_path / "cache")
    assert not leftover.exists() and live.exists()
