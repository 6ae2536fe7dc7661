"""Concepts that compete for pixels: a text-only mask gives up the regions another concept claims more.

Segmented from its text alone, one concept's mask can take objects of another: the demo
model's "cell membrane" mask covers bright spots inside the cells, its "bacterium" mask
touching nuclei (docs/quality.md). Where a model knows several concepts (the demo model;
adapters trained on labels that name several), the other concepts' own text-only masks say
whose those pixels are. With other concepts, the text-only mode also decodes each of them
on the same image (tile) in the same way, and each connected region of the concept's mask
stays only where the concept's logit is at least every other concept's on half of the
region's pixels or more: each region goes to the concept that claims most of it. A region
that another concept wins is dropped whole, never cut (:func:`keep_regions_won`).

Only the text-only mode competes: points or a box say which object is meant. The cost is one
concept-guided encoder pass and one decode per other concept and image, cached per (image,
concept) as the concept's own (``inference/features.py``). ``"auto"`` (the default) takes the
concepts the loaded weights list (``model.concepts``) and none for a model that lists none,
such as the published SAM and CLIP.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from .._jobs import Job, Progress
from .prompts import normalise_concept

if TYPE_CHECKING:
    from .predictor import ClipSamPredictor

AUTO = "auto"


def check_other_concepts(value) -> str | tuple[str, ...]:
    """``value`` as :class:`SegmentOptions` keeps it: ``"auto"``, or a tuple of concept names (maybe empty).

    None means none. A single string other than ``"auto"`` is refused: it could be one name
    or several; a list says which.
    """
    if value is None:
        return ()
    if isinstance(value, str):
        if value == AUTO:
            return AUTO
        raise ValueError(
            f"other_concepts must be 'auto', None or a list of concept names, got the string {value!r}: "
            f"for one concept write [{value!r}]."
        )
    if not isinstance(value, Sequence):
        raise ValueError(f"other_concepts must be 'auto', None or a list of concept names, got {value!r}.")
    names = []
    for concept in value:
        name = normalise_concept(concept) if isinstance(concept, str) else None
        if name is None:
            raise ValueError(f"other_concepts must name concepts (non-empty strings), got {concept!r} in {value!r}.")
        if name not in names:
            names.append(name)
    return tuple(names)


def resolve_other_concepts(model_concepts: Sequence[str], concept: str | None, value) -> tuple[str, ...]:
    """The concepts that compete with ``concept``: ``value`` (``"auto"``: ``model_concepts``) without it.

    None when there is no concept (plain SAM has no text-only mode).
    """
    concept = None if concept is None else normalise_concept(concept)
    if concept is None:
        return ()
    value = check_other_concepts(value)
    names = check_other_concepts(list(model_concepts)) if value == AUTO else value
    return tuple(name for name in names if name != concept)


def image_logits(predictor: ClipSamPredictor, low_res: np.ndarray) -> np.ndarray:
    """(H, W) float32 logits at the current image's size from (h, w) low-resolution logits, as masks are made."""
    import torch  # not at import: the pipeline's options load on napari's GUI thread

    from .sam_frame import logits_to_image

    model = predictor.model
    with model.at_resolution(predictor.image_size):
        frame = model.image_size
    logits = torch.as_tensor(low_res, dtype=torch.float32)[None, None]
    return logits_to_image(logits, frame, predictor.input_size, predictor.original_size)[0, 0].numpy()


def iter_keep_strongest(predictor: ClipSamPredictor, mask: np.ndarray, low_res: np.ndarray,
                        others: Sequence[str]) -> Job[np.ndarray]:
    """``mask`` (the current concept's text-only mask, from ``low_res`` logits) less the regions other concepts win.

    Each of ``others`` is set on the predictor in turn and decoded from its text alone (not
    at all when ``mask`` is empty);
    yields a progress event per encoder stage of each; the predictor's concept is set back
    at the end, also when the job is closed or fails.
    """
    if not mask.any():
        return mask  # nothing to contest: no other concept is encoded (a background tile)
    concept = predictor.concept
    own = image_logits(predictor, low_res)
    strongest = np.full(own.shape, -np.inf, dtype=np.float32)
    try:
        for number, other in enumerate(others):
            predictor.set_concept(other)
            for stage in predictor.iter_prepare():
                yield Progress(f"other concept {other!r}: {stage}", number, len(others))
            _, _, other_low_res = predictor.predict()
            np.maximum(strongest, image_logits(predictor, other_low_res[0]), out=strongest)
    finally:
        predictor.set_concept(concept)
    return keep_regions_won(mask, own >= strongest)


def keep_regions_won(mask: np.ndarray, won: np.ndarray) -> np.ndarray:
    """The connected regions of ``mask`` (4-connected, as ``masks_to_instances``) where ``won``
    holds on at least half of the pixels; the others are dropped.

    Whole regions stay or go: deciding pixel by pixel cut the demo model's nuclei into
    slivers where another concept's logit was higher on some of their pixels (a 640 px
    field in tiles: 83 specks under 20 px, seeded instance F1 0.85 -> 0.57).
    """
    labels, count = ndimage.label(mask)
    if count == 0:
        return np.zeros_like(mask, dtype=bool)
    share = np.asarray(ndimage.mean(won, labels, np.arange(1, count + 1)))
    keep = np.zeros(count + 1, dtype=bool)
    keep[1:] = share >= 0.5
    return keep[labels]


__all__ = ["AUTO", "check_other_concepts", "image_logits", "iter_keep_strongest", "keep_regions_won",
           "resolve_other_concepts"]
