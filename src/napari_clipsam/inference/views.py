"""The text-only mode's mask, with its logits averaged over the image's flips and rotations.

From text alone, a concept's mask is where its logits are positive. ``augment`` averages
those logits over the eight views of the image that flips and quarter turns make (the
image itself, mirrored left-right and up-down, turned, transposed...): each view is
encoded and decoded from its own text prompts, its logits are turned back onto the image,
and the mean decides. Errors that depend on how an object happens to lie in the image
average out; on held-out generated scenes the demo model's text-only IoU rose by 0.01 to
0.02 per concept (docs/quality.md). It costs seven more encoder passes per image and
concept (other concepts that compete included): ``"auto"`` turns it on only for models
whose encoder is cheap (the demo model, ``model.auto_augment``), and only for a 2-D image read
in one pass: not in tiles or the planes of a stack, where it would multiply every tile's or
plane's cost by 8 (``True`` averages them too); never for the published SAM, whose encoder
pass alone takes seconds on a CPU.

The other views are computed on a second predictor that shares the model (and the embedding
cache folder, if one is set), so the user's predictor keeps its image, concept and caches; the averaged logits are kept per concept
in the image's features (``ImageFeatures.view_logits``), so segmenting again costs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .._jobs import Job, Progress
from .other_concepts import image_logits, keep_regions_won

if TYPE_CHECKING:
    from .predictor import ClipSamPredictor

AUTO = "auto"
# The eight views: (transpose first, then flip rows, then flip columns).
VIEWS = tuple((transpose, rows, columns) for transpose in (False, True) for rows in (False, True)
              for columns in (False, True))


def check_augment(value) -> bool | str:
    """``value`` as :class:`SegmentOptions` keeps it: ``"auto"``, True or False."""
    if value == AUTO or isinstance(value, (bool, np.bool_)):
        return value if value == AUTO else bool(value)
    raise ValueError(f"augment must be 'auto', True or False, got {value!r}.")


# The words the CLI, the widget and the benchmarks use for the option's values.
AUGMENT_WORDS = {"auto": AUTO, "on": True, "off": False}


def augment_from_word(word: str) -> bool | str:
    """The option's value for one of :data:`AUGMENT_WORDS` (``"auto"``, ``"on"``, ``"off"``)."""
    try:
        return AUGMENT_WORDS[word]
    except KeyError:
        raise ValueError(f"augment must be one of {', '.join(AUGMENT_WORDS)}, got {word!r}.") from None


def resolve_augment(model, value) -> bool:
    """Whether to average views: ``value``, or for ``"auto"`` the model's ``auto_augment``."""
    value = check_augment(value)
    return bool(model.auto_augment) if value == AUTO else value


def to_view(array: np.ndarray, view: tuple[bool, bool, bool]) -> np.ndarray:
    """``array`` (H, W[, C]) as seen in ``view``: transposed, then rows and columns flipped as it says."""
    transpose, rows, columns = view
    if transpose:
        array = array.swapaxes(0, 1)
    if rows:
        array = array[::-1]
    if columns:
        array = array[:, ::-1]
    return np.ascontiguousarray(array)


def from_view(array: np.ndarray, view: tuple[bool, bool, bool]) -> np.ndarray:
    """The inverse of :func:`to_view`: an (H', W') array of ``view`` back on the image."""
    transpose, rows, columns = view
    if columns:
        array = array[:, ::-1]
    if rows:
        array = array[::-1]
    if transpose:
        array = array.swapaxes(0, 1)
    return np.ascontiguousarray(array)


def iter_view_logits(predictor: ClipSamPredictor, concepts: Sequence[str]) -> Job[dict[str, np.ndarray]]:
    """(H, W) float32 text-only logits of each of ``concepts`` on the predictor's image, averaged over :data:`VIEWS`.

    Yields a progress event per view. The image itself is decoded on the predictor (its
    concept set back at the end, also when the job is closed or fails; the concepts'
    embeddings stay in its caches), the other views on a second predictor sharing its model,
    so the predictor's image and its other features are left as they were.
    """
    from .predictor import ClipSamPredictor  # the predictor imports the pipeline's modules

    cache = predictor.features.view_logits
    missing = [concept for concept in concepts if concept not in cache]
    if missing:
        sums = {concept: np.zeros(predictor.original_size, dtype=np.float32) for concept in missing}
        image, own = predictor.image, predictor.concept
        # The user's embedding cache folder (if any) keeps the views too: a later run skips their encoders.
        views = ClipSamPredictor(predictor.model, image_size=predictor.image_size, images_kept=0,
                                 embedding_cache=predictor.recent_images.store)
        try:
            for number, view in enumerate(VIEWS):
                yield Progress(f"view {number + 1} of {len(VIEWS)}", number, len(VIEWS))
                # The image itself on the user's predictor: its embeddings are kept (or already there).
                source = predictor if number == 0 else views
                if number:
                    views.set_image(to_view(image, view))
                for concept in missing:
                    source.set_concept(concept)
                    _, _, low_res = source.predict()  # text only: the view's own prompts
                    sums[concept] += from_view(image_logits(source, low_res[0]), view)
        finally:
            predictor.set_concept(own)
        for concept in missing:
            cache[concept] = sums[concept] / len(VIEWS)
    return {concept: cache[concept] for concept in concepts}


def iter_text_mask(predictor: ClipSamPredictor, mask: np.ndarray, low_res: np.ndarray, others: Sequence[str],
                   augment: bool) -> Job[tuple[np.ndarray, np.ndarray | None]]:
    """The text-only mode's mask for the predictor's concept, and with ``augment`` its (H, W) logits.

    ``mask`` and ``low_res`` are the plain decode's; with ``augment`` the mask is where the
    logits averaged over the views are positive instead, and those logits are returned (else
    None: the plain ones are ``low_res``, upsampled only where needed). Then the regions
    ``others`` win leave it (``other_concepts.py``; their logits averaged alike).
    """
    from .other_concepts import iter_keep_strongest

    if not augment:
        if others:
            mask = yield from iter_keep_strongest(predictor, mask, low_res, others)
        return mask, None
    concept = predictor.concept
    own = (yield from iter_view_logits(predictor, [concept]))[concept]
    mask = own > predictor.model.sam.mask_threshold
    if others and mask.any():  # nothing to contest on a background tile: no other concept is encoded
        logits = yield from iter_view_logits(predictor, others)
        mask = keep_regions_won(mask, own >= np.max([logits[other] for other in others], axis=0))
    return mask, own


__all__ = ["AUGMENT_WORDS", "AUTO", "VIEWS", "augment_from_word", "check_augment", "from_view", "iter_text_mask", "iter_view_logits", "resolve_augment",
           "to_view"]
