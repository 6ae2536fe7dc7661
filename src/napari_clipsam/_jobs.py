"""Long work as generators that yield progress and return a result.

Scripts drain them with :func:`run`; the napari widget wraps the same generators in
``thread_worker`` and maps each yielded :class:`Progress` to a progress bar, so a
Cancel stops the work at the next stage boundary. No Qt here.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Generator, TypeVar

import numpy as np

from ._predictor import ClipSamPredictor
from ._segment import masks_to_instances, refine_instances

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """One progress event: a named stage, and how far the job is (``done`` of ``total``)."""

    stage: str
    done: int = 0
    total: int | None = None


Job = Generator[Progress, None, T]


def run(job: Job[T], on_event: Callable[[Any], None] | None = None) -> T:
    """Drain a job and return its result (for scripts and tests); ``on_event`` sees each event."""
    while True:
        try:
            event = next(job)
        except StopIteration as stop:
            return stop.value
        if on_event is not None:
            on_event(event)


def relay(job: Generator[Any, None, T], transform: Callable[[Any], Any]) -> Generator[Any, None, T]:
    """Re-yield a sub-job's events through ``transform`` and return its result.

    For a job made of smaller jobs: ``result = yield from relay(sub_job, rename)``.
    """
    while True:
        try:
            event = next(job)
        except StopIteration as stop:
            return stop.value
        yield transform(event)


def iter_load_model(poll_seconds: float = 0.2, **load_model_kwargs: Any) -> Job:
    """:func:`napari_clipsam.load_model` as a job: yields download progress, returns the model.

    The loading runs in a helper thread so that download progress reaches the caller
    while it waits. Abandoning the job (a Cancel) stops the progress reports; a
    download already under way finishes in the background into the cache.
    """
    from ._model import load_model

    events: queue.Queue[Progress] = queue.Queue()
    outcome: dict[str, Any] = {}

    def report(done: int, total: int | None) -> None:
        events.put(Progress("downloading weights", done, total))

    def target() -> None:
        try:
            outcome["model"] = load_model(progress=report, **load_model_kwargs)
        except BaseException as err:  # re-raised in the caller's thread below
            outcome["error"] = err

    loader = threading.Thread(target=target, name="napari-clipsam-load-model", daemon=True)
    yield Progress("loading model")
    loader.start()
    while loader.is_alive():
        loader.join(poll_seconds)
        latest = None
        while not events.empty():
            latest = events.get_nowait()
        if latest is not None:
            yield latest
    if "error" in outcome:
        raise outcome["error"]
    return outcome["model"]


@dataclass
class SegmentResult:
    """What one segmentation produced, and for which inputs.

    Attributes:
        mask: (H, W) bool mask of the best prediction.
        labels: (H, W) int32 instance labels (1..N) when instances were asked for,
            else None.
        score: SAM's predicted IoU of the mask.
        points: (N, 2) XY points that prompted SAM (CLIP's in the text-only mode).
        logits: (256, 256) low-resolution logits, for a follow-up prompt.
    """

    mask: np.ndarray
    labels: np.ndarray | None
    score: float
    points: np.ndarray | None
    logits: np.ndarray
    extras: dict[str, Any] = field(default_factory=dict)


def iter_segment(
    predictor: ClipSamPredictor,
    image: np.ndarray,
    concept: str | None,
    point_coords: np.ndarray | None = None,
    point_labels: np.ndarray | None = None,
    box: np.ndarray | None = None,
    instances: bool = False,
    refine: bool = False,
    min_area: int = 0,
    channel: int | None = None,
    with_similarity: bool = False,
) -> Job[SegmentResult]:
    """Segment one 2-D image: yields each stage, returns a :class:`SegmentResult`."""
    predictor.set_image(image, channel=channel)
    predictor.set_concept(concept)
    stages = predictor.pending_stages()
    for index, stage in enumerate(predictor.iter_prepare()):
        yield Progress(stage, index, len(stages) + 1)
    yield Progress("decoding masks", len(stages), len(stages) + 1)
    masks, scores, logits = predictor.predict(point_coords=point_coords, point_labels=point_labels, box=box)
    mask = masks[0]
    labels = None
    if instances:
        labels = masks_to_instances(mask, min_area=min_area)
        if refine:
            yield Progress("refining objects", len(stages), len(stages) + 1)
            labels = refine_instances(predictor, labels)
    extras = {}
    if with_similarity and predictor.concept is not None:
        extras["similarity"] = predictor.similarity_map()
    return SegmentResult(mask, labels, float(scores[0]), predictor.last_points, logits[0], extras)


def iter_segment_planes(
    predictor: ClipSamPredictor,
    planes: np.ndarray,
    concept: str,
    **segment_kwargs: Any,
) -> Job[list[SegmentResult]]:
    """Segment each 2-D plane of a stack (text-only): yields per plane, returns the results."""
    results = []
    total = len(planes)
    for index, plane in enumerate(planes):
        job = iter_segment(predictor, np.asarray(plane), concept, **segment_kwargs)
        result = yield from relay(
            job, lambda event, index=index: Progress(f"plane {index + 1}/{total}: {event.stage}", index, total)
        )
        results.append(result)
    yield Progress("done", total, total)
    return results
