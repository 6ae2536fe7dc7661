"""Several images through the encoders at once, for a predictor to pick up one by one.

A GPU encodes a batch of images for much less than as many single passes (on an H200,
vit_b in bf16: 12 ms per image at batch 8 against 32 ms alone, docs/benchmarks.md); a
CPU gains nothing, the work being the same. :func:`encode_ahead` runs the predictor's
stages (SAM input, CLIP features, similarity, encoder prefix and guided encoder) for a
list of images with one call of each encoder, and leaves each image's features where
the predictor keeps recent images: ``set_image`` of each then finds them and
``prepare`` has nothing left to do. The pipeline uses it for tiles and for the planes of
a stack (``SegmentOptions.encoder_batch``, through :func:`iter_read_ahead`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from .._jobs import Job, Progress
from .image import to_rgb_uint8

if TYPE_CHECKING:
    from .predictor import ClipSamPredictor

# ``encoder_batch="auto"``: images per encoder call on each kind of device.
AUTO_BATCH = {"cuda": 8}


def encoder_batch_for(predictor: ClipSamPredictor, encoder_batch) -> int:
    """Images per encoder call: ``encoder_batch``, or for "auto" 8 on CUDA and 1 elsewhere.

    At most one more than the images the predictor keeps besides its current one.
    """
    if encoder_batch == "auto":
        encoder_batch = AUTO_BATCH.get(predictor.model.device.type, 1)
    return max(1, min(int(encoder_batch), predictor._recent.size + 1))


def check_encoder_batch(encoder_batch) -> None:
    if encoder_batch == "auto":
        return
    if isinstance(encoder_batch, bool) or not isinstance(encoder_batch, (int, np.integer)) or encoder_batch < 1:
        raise ValueError(f"encoder_batch must be 'auto' or a whole number of images of 1 or more, "
                         f"got {encoder_batch!r}.")


def encode_ahead(predictor: ClipSamPredictor, images: Sequence, concept: str | None, channel: int | None = None
                 ) -> int:
    """Compute the features of ``images`` for ``concept`` in one pass of each encoder.

    Images whose features the predictor already keeps (in memory or in its embedding
    store) are left out. Afterwards the predictor's current image is the last one
    encoded, its concept ``concept``; the others wait among its recent images (at most
    ``images_kept`` of them: pass no more than :func:`encoder_batch_for` allows).
    Returns how many images were encoded.
    """
    import torch

    model = predictor.model
    with predictor, torch.no_grad():
        predictor.set_concept(concept)
        concept = predictor.concept
        pending = []
        for image in images:
            rgb = to_rgb_uint8(image, channel=channel)
            predictor.set_image(rgb)
            if predictor.pending_stages():
                pending.append(rgb)
        if len(pending) < 2:
            return 0  # nothing to share: the predictor's own stages do the one left
        with model.at_resolution(predictor.image_size):
            inputs = [model.sam_input(rgb) for rgb in pending]
            prefix = model.encoder_prefix(torch.cat([sam_input for sam_input, _ in inputs]))
            conditioning = patches = similarity = None
            if concept is not None:
                _, patches = model.clip_features(torch.cat([model.clip_input(rgb) for rgb in pending]))
                text = model.text_embedding(concept)
                similarity = model.similarity(patches, text)  # per image, as one by one
                conditioning = model.conditioning(text, patches, similarity)
            embeddings = model.encoder_suffix(prefix, conditioning)
        for index, rgb in enumerate(pending):
            predictor.set_image(rgb)  # the one before goes to the recent images, with its features
            one = slice(index, index + 1)
            predictor._sam_input, predictor.input_size = inputs[index]
            predictor._prefix = prefix[one]
            predictor._embeddings[concept] = embeddings[one]
            if concept is not None:
                predictor._clip_patches, predictor._similarity[concept] = patches[one], similarity[one]
            predictor._recent.persist(predictor, predictor._image_key)
        return len(pending)


def iter_read_ahead(predictor: ClipSamPredictor, number: int, count: int, read: Callable[[int], np.ndarray],
                    concept: str | None, options, kept: dict, what: str) -> Job[np.ndarray]:
    """Item ``number`` of ``count`` (tiles, planes) as ``read(number)`` gives it, encoded ahead in groups.

    At the first item of each group of ``options.encoder_batch`` items, the group is read
    into ``kept`` and encoded together (:func:`encode_ahead`), with a progress event; each
    item is then taken from ``kept``. With a batch of 1 it is just ``read(number)``.
    """
    batch = encoder_batch_for(predictor, options.encoder_batch)
    if batch > 1 and number % batch == 0:
        group = range(number, min(count, number + batch))
        yield Progress(f"{what} {number + 1}-{group[-1] + 1}/{count}: encoding together", number, count)
        kept.update({item: read(item) for item in group})
        encode_ahead(predictor, [kept[item] for item in group], concept, options.channel)
    return kept.pop(number) if number in kept else read(number)


__all__ = ["AUTO_BATCH", "check_encoder_batch", "encode_ahead", "encoder_batch_for", "iter_read_ahead"]
