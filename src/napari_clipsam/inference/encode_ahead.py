"""Several images through the encoders at once, for a predictor to pick up one by one.

A GPU encodes a batch of images for much less than as many single passes (on an H200,
vit_b in bf16: 12 ms per image at batch 8 against 32 ms alone, docs/benchmarks.md); a
CPU gains nothing, the work being the same. :func:`encode_ahead` runs the predictor's
stages (SAM input, CLIP features, similarity, encoder prefix and guided encoder) for a
list of images with one call of each encoder, and leaves each image's features where
the predictor keeps recent images: ``set_image`` of each then finds them and
``prepare`` has nothing left to do. The pipeline uses it for tiles and for the planes of
a stack (``SegmentOptions.encoder_batch``, through :class:`ReadAhead`).
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
    """Images per encoder call: ``encoder_batch``, or for "auto" 8 on CUDA and 1 elsewhere."""
    if encoder_batch == "auto":
        encoder_batch = AUTO_BATCH.get(predictor.model.device.type, 1)
    return max(1, int(encoder_batch))


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
    store) are left out, and an image given twice (two blank tiles) is encoded once.
    Afterwards the predictor's current image is the last one encoded, its concept
    ``concept``; the others wait among its recent images, whose number is raised to hold
    them if it is smaller (:class:`ReadAhead` puts it back). Returns how many images were
    encoded. Should an encoder fail, nothing is kept of the batch and the predictor's
    current image is the last one given, still to prepare.
    """
    import torch

    model, recent = predictor.model, predictor.recent_images
    with predictor, torch.no_grad():
        recent.size = max(recent.size, len(images) - 1)  # room for the whole group: none pushes another out
        predictor.set_concept(concept)
        concept = predictor.concept
        pending: dict[str, np.ndarray] = {}  # by the predictor's digest of each image
        for image in images:
            rgb = to_rgb_uint8(image, channel=channel)
            predictor.set_image(rgb)
            # Only SAM's input left (features from the store): the predictor's own cheap stage.
            if set(predictor.pending_stages()) - {predictor.STAGE_IMAGE}:
                pending[predictor.image_digest] = rgb
        if len(pending) < 2:
            return 0  # nothing to share: the predictor's own stages do the one left
        pending_images = list(pending.values())
        with model.at_resolution(predictor.image_size):
            inputs = [model.sam_input(rgb) for rgb in pending_images]
            prefix = model.encoder_prefix(torch.cat([sam_input for sam_input, _ in inputs]))
            conditioning = patches = similarity = None
            if concept is not None:
                _, patches = model.clip_features(torch.cat([model.clip_input(rgb) for rgb in pending_images]))
                text = model.text_embedding(concept)
                similarity = model.similarity(patches, text)  # per image, as one by one
                conditioning = model.conditioning(text, patches, similarity)
            embeddings = model.encoder_suffix(prefix, conditioning)
        for index, rgb in enumerate(pending_images):
            predictor.set_image(rgb)  # the one before goes to the recent images, with its features
            features = predictor.features  # the image just set: empty, filled here from the batch
            features.sam_input, features.input_size = inputs[index]
            features.prefix = _one(prefix, index)
            features.add_embedding(concept, _one(embeddings, index))
            if concept is not None:
                features.clip_patches, features.similarity[concept] = _one(patches, index), _one(similarity, index)
            recent.persist(predictor, predictor.image_digest)
        return len(pending)


def _one(batched, index: int):
    """Image ``index`` of a batch, (1, ...), in memory of its own: a view would hold the whole batch's."""
    return batched[index : index + 1].clone()


class ReadAhead:
    """Items of a loop (tiles, planes) read a group at a time and sent through the encoders together.

    ``image = yield from ahead.iter_item(number)`` in a ``with ReadAhead(...) as ahead:``
    block gives item ``number`` as ``read(number)`` does. At the first item of each group of
    ``options.encoder_batch``, it reads the group and encodes it (:func:`encode_ahead`),
    after a progress event (a Cancel there stops before the encoders); the predictor then
    finds each item's features when it is set. Leaving the block (its end, an error, a
    closed job) gives the predictor back its own number of recent images. With a batch of
    1, or a last group of one, an item is just ``read(number)``.
    """

    def __init__(self, predictor: ClipSamPredictor, read: Callable[[int], np.ndarray], count: int,
                 concept: str | None, options, what: str) -> None:
        self.predictor, self.read, self.count = predictor, read, count
        self.concept, self.channel, self.what = concept, options.channel, what
        self.batch = encoder_batch_for(predictor, options.encoder_batch)
        self._kept: dict[int, np.ndarray] = {}

    def __enter__(self) -> ReadAhead:
        self._images_kept = self.predictor.recent_images.size
        return self

    def __exit__(self, *exc_info) -> None:
        self._kept.clear()
        with self.predictor:
            self.predictor.recent_images.size = self._images_kept

    def iter_item(self, number: int) -> Job[np.ndarray]:
        group = range(number, min(self.count, number + self.batch))
        if number % self.batch == 0 and len(group) > 1:
            yield Progress(f"{self.what} {number + 1}-{group[-1] + 1}/{self.count}: encoding together",
                           number, self.count)
            self._kept = {item: self.read(item) for item in group}
            encode_ahead(self.predictor, list(self._kept.values()), self.concept, self.channel)
        return self._kept.pop(number) if number in self._kept else self.read(number)


__all__ = ["AUTO_BATCH", "ReadAhead", "check_encoder_batch", "encode_ahead", "encoder_batch_for"]
