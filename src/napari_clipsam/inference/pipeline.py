"""The one segmentation pipeline: a 2-D image (or a stack of them) in, labels out.

:func:`iter_segment` is the single implementation for one plane; it yields a
:class:`~napari_clipsam._jobs.Progress` per stage and returns a :class:`SegmentResult`.
:func:`iter_segment_stack` runs it plane by plane over any leading axes (z, t, ...) and
keeps object labels distinct across planes. :func:`segment` (scripts), the CLI and the
napari widget all drain these generators, so the same inputs give the same labels
everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from .._jobs import Job, Progress, relay, run
from .encode_ahead import ReadAhead, check_encoder_batch
from .image import leading_ndim
from .instances import iter_refine_instances, masks_to_instances, remove_small_labels
from .linking import link_in_place, link_to_previous
from .neighbours import iter_prompted_object
from .other_concepts import AUTO as AUTO_OTHERS
from .other_concepts import check_other_concepts, image_logits, resolve_other_concepts
from .prompts import check_prompts
from .rescale import check_diameter_unit, check_diameter_use, check_scale, iter_segment_scaled, scale_for, seeded
from .seeds import DEFAULT_SCORE_THRESHOLD, iter_concept_instances
from .tiling import AUTO, PlaneView, check_tiling, iter_segment_tiled, tiling_for
from .views import check_augment, iter_text_mask, resolve_augment

if TYPE_CHECKING:
    from ..model.clipsam import ClipSamModel
    from .predictor import ClipSamPredictor

# How ``instances`` are made: seeds keep touching objects apart, components are the fast option.
INSTANCE_METHODS = ("seeds", "components")


@dataclass(frozen=True)
class SegmentOptions:
    """How SAM's mask becomes labels, and what else to return.

    Attributes:
        instances: one label per object (1..N) instead of one value for the concept.
        refine: with ``instances``, re-prompt SAM at each object (its box and an interior point).
        min_area: with ``instances``, drop objects smaller than this many pixels.
        channel: the channel to use in a multi-channel image (None: all, see ``to_rgb_uint8``).
        with_similarity: also return the concept's similarity map.
        instance_method: with ``instances``, ``"seeds"`` keeps touching objects apart (one
            SAM click per seed, see ``inference/seeds.py``; the user's positive points are
            the seeds when given); ``"components"`` labels the mask's connected regions (fast).
        diameter: the expected object diameter in pixels (an elongated object's length): the
            seeds' object size (None: estimated from the mask, :func:`.basins.estimate_diameter`)
            and, with ``scale="auto"``, what picks the scale, also without instances.
        diameter_unit: ``"px"``, or ``"um"``: micrometres, for files (the CLI, ``napari_clipsam.batch``),
            turned into each file's pixels by its pixel size (``rescale.diameter_in_pixels``).
        score_threshold: with ``"seeds"``, drop objects whose score (SAM's predicted IoU
            times the mask's stability, in [0, 1]) is lower; the user's clicks are kept.
        tile_shape, halo: images larger than SAM's input in overlapping tiles at native
            resolution (see ``inference/tiling.py``): ``"auto"`` tiles an image more than twice
            the input's size, None never tiles (the image is resized to the input), (h, w)
            is each tile's core; ``halo`` the context around it (``"auto"``: input / 4).
        scale: image pixels per pixel the model reads (``inference/rescale.py``): 2 reads the
            image at half its size, for objects larger than those the model was trained on;
            ``"auto"``: 1, or with ``diameter`` the scale that brings it into the diameters the
            model lists for the concept (``model.concept_diameters``: the demo model's).
        link_planes: with ``instances`` in a stack, one label per 3-D object: each plane's
            objects continue the previous plane's they overlap (``inference/linking.py``),
            along the last leading axis, and in a (T, Z, Y, X) stack each time point's 3-D
            objects continue the previous time point's; False: every object of every plane
            its own label.
        encoder_batch: tiles, or planes of a stack, per encoder call (``inference/encode_ahead.py``):
            ``"auto"`` is 8 on CUDA, where a batch costs far less per image, and 1 elsewhere.
        other_concepts: in the text-only mode, concepts that compete for pixels: a connected
            region of the mask stays only where no other concept's text-only logit is higher
            on half of it or more (``inference/other_concepts.py``). ``"auto"``: the concepts the model lists
            (``model.concepts``; none for the published weights); None or (): none.
        augment: in the text-only mode, average the logits over the image's 8 flips and quarter
            turns (``inference/views.py``; 8 encoder passes instead of 1); ``"auto"``: for models
            whose encoder is cheap (the demo model) on a 2-D image read in one pass, not in tiles or
            stacks (8 times each tile's or plane's cost), never for the published weights.
    """

    instances: bool = False
    refine: bool = False
    min_area: int = 0
    channel: int | None = None
    with_similarity: bool = False
    instance_method: str = "seeds"
    diameter: float | None = None
    diameter_unit: str = "px"
    score_threshold: float = DEFAULT_SCORE_THRESHOLD
    tile_shape: object = AUTO
    halo: object = AUTO
    scale: float | str = AUTO
    link_planes: bool = True
    encoder_batch: int | str = "auto"
    other_concepts: object = AUTO_OTHERS
    augment: bool | str = AUTO

    def __post_init__(self) -> None:
        check_tiling(self.tile_shape, self.halo)
        object.__setattr__(self, "scale", check_scale(self.scale))
        object.__setattr__(self, "diameter_unit", check_diameter_unit(self.diameter_unit))
        object.__setattr__(self, "augment", check_augment(self.augment))
        object.__setattr__(self, "other_concepts", check_other_concepts(self.other_concepts))
        check_encoder_batch(self.encoder_batch)
        if self.min_area < 0:
            raise ValueError(f"min_area must be 0 or more pixels, got {self.min_area}.")
        if self.instance_method not in INSTANCE_METHODS:
            raise ValueError(
                "instance_method must be 'seeds' (keep touching objects apart) or 'components' "
                f"(connected regions, fast), got {self.instance_method!r}."
            )
        if self.diameter is not None and not (np.isfinite(self.diameter) and self.diameter > 0):
            raise ValueError(
                f"diameter must be the expected object diameter in pixels (more than 0), or None to "
                f"estimate it, got {self.diameter}."
            )
        if not 0 <= self.score_threshold <= 1:
            raise ValueError(f"score_threshold must be in [0, 1], got {self.score_threshold}.")
        defaults = SegmentOptions.__dataclass_fields__
        changed = [name for name in ("refine", "min_area", "instance_method", "score_threshold", "link_planes")
                   if getattr(self, name) != defaults[name].default]
        if changed and not self.instances:
            raise ValueError(f"{' and '.join(changed)} apply to objects: set instances=True as well.")
        if "score_threshold" in changed and self.instance_method != "seeds":
            raise ValueError("score_threshold applies to instance_method='seeds', not to connected components.")
        check_diameter_use(self.diameter, self.scale, seeded(self))


@dataclass
class SegmentResult:
    """What one segmentation of a 2-D image produced.

    Attributes:
        mask: (H, W) bool mask of SAM's best prediction (less what other concepts claim more,
            see ``SegmentOptions.other_concepts``).
        labels: (H, W) int32: objects 1..N with ``instances``, else the mask as 0/1.
        score: SAM's predicted IoU of the mask.
        points: (N, 2) XY points that prompted SAM (CLIP's in the text-only mode), or None.
        point_labels: (N,) 1 positive, 0 negative, or None.
        logits: (256, 256) low-resolution logits, for a follow-up prompt.
        similarity: (H, W) float32 similarity map in [0, 1] when asked for, else None.
    """

    mask: np.ndarray
    labels: np.ndarray
    score: float
    points: np.ndarray | None
    point_labels: np.ndarray | None
    logits: np.ndarray
    similarity: np.ndarray | None = None


def iter_segment(
    predictor: ClipSamPredictor,
    image,
    concept: str | None,
    points: np.ndarray | None = None,
    point_labels: np.ndarray | None = None,
    box: np.ndarray | None = None,
    options: SegmentOptions = SegmentOptions(),
) -> Job[SegmentResult]:
    """Segment one 2-D image (H, W) or (H, W, C); yields each stage, returns a :class:`SegmentResult`.

    Without points or a box the prompts come from the concept (text-only mode);
    with them the concept still conditions the encoder (manual mode). Coordinates
    are XY pixels of ``image``; the box XYXY.
    """
    points, point_labels, box = check_prompts(points, point_labels, box)
    predictor.set_image(image, channel=options.channel)
    predictor.set_concept(concept)
    if points is None and box is None and predictor.concept is None:
        raise ValueError("Nothing to segment: type a concept (e.g. 'nucleus'), or give points or a box.")
    stages = predictor.pending_stages()
    total = len(stages) + 1
    for index, stage in enumerate(predictor.iter_prepare()):
        yield Progress(stage, index, total)
    yield Progress("decoding masks", len(stages), total)
    user_points, text_only = points, points is None and box is None
    if text_only:
        points, point_labels = predictor.text_prompts()
    masks, scores, logits = predictor.predict(point_coords=points, point_labels=point_labels, box=box)
    mask = masks[0]
    if not text_only:  # the prompted object alone; the seeded instances part the clicks' masks themselves
        mask = yield from iter_prompted_object(predictor, mask, user_points, point_labels, box,
                                               neighbours=not seeded(options))
    full_logits = None  # at the image's size: the views' average, else upsampled when the seeds need them
    if text_only:
        others = resolve_other_concepts(predictor.model.concepts, predictor.concept, options.other_concepts)
        augment = resolve_augment(predictor.model, options.augment)
        mask, full_logits = yield from iter_text_mask(predictor, mask, logits[0], others, augment)
    if options.instances:
        if options.instance_method == "seeds":
            labels = yield from iter_concept_instances(
                predictor, mask, user_points, point_labels if user_points is not None else None, box,
                diameter=options.diameter, min_area=options.min_area, score_threshold=options.score_threshold,
                logits=full_logits if full_logits is not None else image_logits(predictor, logits[0]),
            )  # objects part where their logits dip
        else:
            labels = masks_to_instances(mask, min_area=options.min_area)
        if options.refine:
            labels = yield from iter_refine_instances(predictor, labels)
            # Refined objects can shrink below the size; they are dropped, never merged.
            labels = remove_small_labels(labels, options.min_area)
    else:
        labels = mask.astype(np.int32)
    similarity = predictor.similarity_map() if options.with_similarity and predictor.concept is not None else None
    return SegmentResult(mask, labels, float(scores[0]), points, point_labels, logits[0], similarity)


def iter_segment_stack(
    predictor: ClipSamPredictor,
    stack,
    concept: str | None,
    points: np.ndarray | None = None,
    point_labels: np.ndarray | None = None,
    box: np.ndarray | None = None,
    options: SegmentOptions = SegmentOptions(),
    rgb: bool | None = None,
    out=None,
) -> Job[np.ndarray]:
    """Segment every 2-D plane of ``stack`` (*leading, H, W[, C]) with :func:`iter_segment`.

    Planes are read one at a time, so numpy, dask and zarr arrays all work without
    loading the whole stack. The same prompts apply to every plane. A 2-D image is a
    stack of one plane. Yields per stage of each plane.

    A plane larger than SAM's input is segmented in tiles as ``options.tile_shape`` says
    (:mod:`.tiling`), read tile by tile.

    Args:
        out: an integer array of shape (*leading, H, W) to write the labels into (numpy
            or zarr: with tiles, memory is then bounded by the tile); None: a new one.

    Returns:
        (*leading, H, W) int32 labels (``out`` when given); with ``instances`` one value per
        object linked across planes (``options.link_planes``), else per object of each plane.
    """
    scale = scale_for(options, predictor.model, concept)
    if scale != 1:  # read at another scale, then the same pipeline at scale 1
        return (yield from iter_segment_scaled(predictor, stack, concept, points, point_labels, box, options, rgb,
                                               out, scale))
    shape = tuple(stack.shape)
    leading = shape[: leading_ndim(shape, rgb)]
    planes = list(np.ndindex(*leading))
    spatial = shape[len(leading) : len(leading) + 2]
    if out is not None and tuple(out.shape) != (*leading, *spatial):
        raise ValueError(f"out has shape {tuple(out.shape)}; the labels of this image need {(*leading, *spatial)}.")
    labels = np.zeros((*leading, *spatial), dtype=np.int32) if out is None else out
    tiling = tiling_for(predictor, spatial, options)
    if options.augment == AUTO and (len(planes) > 1 or tiling is not None):  # 8 views per plane or tile: if asked
        options = replace(options, augment=False)
    next_label, previous, previous_index = 1, None, None
    volume_first_label, previous_volume = 1, None

    def read(number: int) -> np.ndarray:
        return np.asarray(stack[planes[number]])

    # Tiled planes are read tile by tile, their tiles encoded ahead instead (iter_segment_tiled).
    with ReadAhead(predictor, read, len(planes) if tiling is None else 0, concept, options, "planes") as ahead:
        for number, index in enumerate(planes):
            prefix = f"plane {number + 1}/{len(planes)}: " if leading else ""

            def rename(event, number=number, prefix=prefix):
                return Progress(f"{prefix}{event.stage}", number, len(planes)) if leading else event

            linked = (options.instances and options.link_planes and previous is not None
                      and index[:-1] == previous_index[:-1])
            if tiling is None:
                image = yield from ahead.iter_item(number)
                job = iter_segment(predictor, image, concept, points, point_labels, box, options)
                plane = (yield from relay(job, rename)).labels
                if options.instances:
                    plane, next_label = link_to_previous(plane, previous if linked else None, next_label)
                labels[index] = plane
            else:
                # Written tile by tile into the labels' plane, never held whole (a zarr ``out``).
                plane = PlaneView(labels, index)
                job = iter_segment_tiled(predictor, PlaneView(stack, index), concept, points, point_labels, box,
                                         options, tiling, out=plane, first_label=next_label)
                _, after = yield from relay(job, rename)
                if options.instances:
                    next_label = link_in_place(plane, previous, next_label) if linked else after
            if options.instances:
                previous, previous_index = plane, index
            volume_done = number + 1 == len(planes) or planes[number + 1][:-1] != index[:-1]
            if options.instances and options.link_planes and len(leading) >= 2 and volume_done:
                # A (T, Z, Y, X) stack: each time point's 3-D objects continue the previous time point's.
                volume = PlaneView(labels, index[:-1])
                if previous_volume is not None and previous_volume[:-1] == index[:-2]:
                    next_label = link_in_place(volume, PlaneView(labels, previous_volume), volume_first_label, rows=1)
                volume_first_label, previous_volume = next_label, index[:-1]
    return labels


def predictor_for(model: ClipSamModel | None, predictor: ClipSamPredictor | None,
                  image_size: int | None) -> ClipSamPredictor:
    """The predictor a one-call API runs: ``predictor`` (its size set), else a new one of ``model`` (default load_model())."""
    if predictor is None:
        if model is None:
            from ..model.build import load_model

            model = load_model()
        from .predictor import ClipSamPredictor

        return ClipSamPredictor(model, image_size=image_size)
    if image_size is not None:
        predictor.image_size = image_size
    return predictor


def segment(
    image,
    concept: str | None,
    model: ClipSamModel | None = None,
    instances: bool = False,
    refine: bool = False,
    min_area: int = 0,
    channel: int | None = None,
    predictor: ClipSamPredictor | None = None,
    *,
    points: np.ndarray | None = None,
    point_labels: np.ndarray | None = None,
    box: np.ndarray | None = None,
    image_size: int | None = None,
    rgb: bool | None = None,
    instance_method: str = "seeds",
    diameter: float | None = None,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    tile_shape=AUTO,
    halo=AUTO,
    scale=AUTO,
    out=None,
    link_planes: bool = True,
    encoder_batch: int | str = "auto",
    other_concepts=AUTO_OTHERS,
    augment=AUTO,
) -> np.ndarray:
    """Segment ``concept`` in an image, or in each plane of a stack, and return labels.

    Args:
        image: (H, W) or (H, W, C), or a stack (*leading, H, W[, C]); any numeric dtype;
            numpy, dask or zarr.
        concept: what to segment, e.g. ``"nucleus"``; None for plain SAM with prompts.
        model: a model from :func:`load_model`; default: ``load_model()`` (published
            weights, downloaded on first use).
        instances: one label per object.
        refine: with ``instances``, re-prompt SAM at each object (box + point).
        min_area: with ``instances``, drop objects smaller than this many pixels.
        channel: channel to use for multi-channel images.
        predictor: re-use a predictor (and its caches) instead of making one.
        points, point_labels, box: manual prompts (XY pixels, 1/0, XYXY), for every plane.
        image_size: SAM input side (None: the adapters' training size, else 1024).
        rgb: whether the last axis holds channels (None: guessed, see :func:`leading_ndim`).
        instance_method, diameter, score_threshold: with ``instances``, how objects are
            made: ``"seeds"`` keeps touching objects apart (objects of about ``diameter``
            pixels, None: estimated; less sure than ``score_threshold`` dropped),
            ``"components"`` labels connected regions (see :class:`SegmentOptions`).
        tile_shape, halo: tiles at native resolution for images larger than SAM's input
            (``"auto"``: when more than twice its size; None: never, the image is resized).
        scale: image pixels per pixel the model reads (2: at half size, for objects larger than
            the model knows); ``"auto"``: from ``diameter`` for models that list their concepts'
            diameters (the demo model), else 1. Labels come back at the image's size.
        out: an integer array (numpy, zarr) of the labels' shape to write into.
        link_planes: with ``instances`` in a stack, one label per 3-D object (linked by
            overlap between consecutive planes, and between time points of a (T, Z, Y, X)
            stack); False: per object of each plane.
        encoder_batch: tiles or planes per encoder call ("auto": 8 on CUDA, 1 elsewhere).
        other_concepts: from text alone, concepts that compete for pixels, each region of
            the mask going to the concept whose logit is highest on most of it (e.g.
            ``["bacterium", "spot"]``);
            ``"auto"``: those the model lists (the demo model's four, none for the published
            weights); None: none. Each costs one more encoder pass per image.
        augment: from text alone, average the logits over the image's 8 flips and quarter
            turns (8 encoder passes); ``"auto"``: for the demo model on one 2-D image read in one
            pass, not in tiles or stacks (see :class:`SegmentOptions`).

    Returns:
        int32 labels of the image's spatial shape (``out`` when given): 0 background, 1 the
        concept (semantic) or 1..N (instances; in a stack one value per linked 3-D object).
    """
    # Checked first: a mistake must not wait for a model to load (or download).
    options = SegmentOptions(instances=instances, refine=refine, min_area=min_area, channel=channel,
                             instance_method=instance_method, diameter=diameter, score_threshold=score_threshold,
                             tile_shape=tile_shape, halo=halo, scale=scale, link_planes=link_planes, encoder_batch=encoder_batch,
                             other_concepts=other_concepts, augment=augment)
    predictor = predictor_for(model, predictor, image_size)
    with predictor:  # one thread drains the whole job: other threads sharing the predictor wait
        return run(iter_segment_stack(predictor, image, concept, points, point_labels, box, options, rgb, out))


__all__ = [
    "INSTANCE_METHODS", "SegmentOptions", "SegmentResult", "iter_segment", "iter_segment_stack", "leading_ndim",
    "segment",
]
