"""Many files on dask.distributed: a local cluster or any scheduler, one model per worker.

    report = napari_clipsam.batch.segment_files(
        [("a.tif", "out/a_labels.tif"), ("b.tif", "out/b_labels.tif")], "nucleus",
        model_args={"preset": "demo"}, options=SegmentOptions(instances=True), workers=2)
    report.raise_for_failures()

Each file is one task: the worker reads it, segments it with the one pipeline
(:func:`~napari_clipsam.inference.pipeline.iter_segment_stack`) and writes its output
(atomically, never replacing a file unless ``overwrite``) as soon as it is done. A worker
process builds its model once, on its first file, and keeps it for the others. Outputs
that exist already are skipped (a re-run after an interruption does only what is left);
a file that fails is reported at the end with its error, without stopping the others.
A diameter in micrometres (``SegmentOptions(diameter=10, diameter_unit="um")``) becomes each
file's own pixels by its pixel size, so fields of several magnifications read alike.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ._jobs import run
from .inference.pipeline import SegmentOptions

# Worker processes: model arguments (as a sorted tuple) -> the model built from them.
_MODELS: dict[tuple, Any] = {}
_MODELS_LOCK = threading.Lock()


@dataclass
class BatchReport:
    """What a batch did: outputs written, outputs that existed (skipped), inputs that failed (-> error)."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed

    def raise_for_failures(self) -> None:
        if self.failed:
            lines = "\n".join(f"  {source}: {error}" for source, error in self.failed.items())
            raise RuntimeError(f"{len(self.failed)} of {len(self.failed) + len(self.written)} files failed "
                               f"(their outputs were not written; the others were):\n{lines}")


def _worker_model(model_args: dict, threads: int | None):
    """This process's model for ``model_args``: built on the first call, then reused."""
    key = tuple(sorted((name, repr(value)) for name, value in model_args.items()))
    with _MODELS_LOCK:
        if key not in _MODELS:
            import torch

            from .model.build import load_model

            if threads:
                torch.set_num_threads(threads)
            _MODELS[key] = load_model(**model_args)
        return _MODELS[key]


def _open(name: str, source, channel: int | str | None):
    """The input (a file, or an array) as an ``ImageSource`` (a context manager that closes its file)."""
    from ._image_files import from_array, open_image

    return open_image(Path(source), channel) if isinstance(source, (str, Path)) else from_array(source, name, channel)


def _chunks(image, predictor, options: SegmentOptions) -> tuple[int, ...]:
    """Zarr chunks of the labels: one tile where the planes are tiled, else one plane."""
    from .inference.tiling import tiling_for

    shape = image.labels_shape
    tiling = tiling_for(predictor, shape[-2:], options)
    plane = shape[-2:] if tiling is None else tuple(min(t, n) for t, n in zip(tiling[0], shape[-2:]))
    return (1,) * (len(shape) - 2) + tuple(plane)


def count_labels(labels, instances: bool) -> tuple[int, str]:
    """Objects (the largest label) or pixels, read plane by plane (a zarr output is never read whole)."""
    planes = (np.asarray(labels[index]) for index in np.ndindex(*labels.shape[:-2]))
    if instances:
        return max((int(plane.max(initial=0)) for plane in planes), default=0), "objects"
    return sum(int((plane > 0).sum()) for plane in planes), "pixels"


class FileResult(NamedTuple):
    """What :func:`segment_to_file` wrote: ``count`` objects or pixels (``unit``), and how the file
    was read where that is not its own pixels (``read``: the diameter in its pixels, the scale; or "")."""

    count: int
    unit: str
    read: str = ""


def _how_read(given: SegmentOptions, options: SegmentOptions, scale: float) -> str:
    parts = [f"diameter {given.diameter:g} µm = {options.diameter:.4g} px"] if given.diameter_unit == "um" \
        and given.diameter is not None else []
    return ", ".join(parts + ([f"read at scale {scale:.4g}"] if scale != 1 else []))


def segment_to_file(predictor, name: str, source, output, concept: str | None, options: SegmentOptions,
                    points=None, box=None, channel: int | str | None = None, overwrite: bool = False,
                    drain: Callable = run, point_labels=None) -> FileResult:
    """Read ``source`` (a file or an array) by its axes, segment it, write ``output``; returns a :class:`FileResult`.

    The one way the CLI and the batch workers segment a file: the image is opened lazily
    (``_image_files.open_image``), its planes and tiles go through
    :func:`~napari_clipsam.inference.pipeline.iter_segment_stack`, and the labels are
    written with the input's axes and pixel size (``.tif``), or tile by tile into a zarr
    folder (``.zarr``, renamed into place when complete). A diameter in micrometres
    (``options.diameter_unit``) is turned into the input's pixels by its pixel size. An existing output is replaced
    only with ``overwrite``. ``drain`` runs the job (the CLI's draws progress bars).
    ``point_labels`` (1 positive, 0 negative; None: all positive) go with ``points``.
    """
    from ._io import write_labels
    from ._zarr_files import zarr_labels
    from .inference.pipeline import iter_segment_stack
    from .inference.rescale import diameter_in_pixels, resolve_scale

    output = Path(output)
    with _open(name, source, channel) as image:
        given, options = options, diameter_in_pixels(options, image.pixel_size, name)  # µm: this file's pixels
        read = _how_read(given, options, resolve_scale(options.scale, options.diameter, predictor.model, concept))
        job = partial(iter_segment_stack, predictor, image.data, concept, points, point_labels, box,
                      replace(options, channel=image.channel), image.rgb)
        if output.suffix.lower() == ".zarr":
            with zarr_labels(output, image.labels_shape, chunks=_chunks(image, predictor, options),
                             replace=overwrite, ngff=image.ngff) as out:
                return FileResult(*count_labels(drain(job(out=out)), options.instances), read)
        labels = drain(job())
        write_labels(output, labels, replace=overwrite, axes=image.axes, pixel_size=image.pixel_size)
        return FileResult(*count_labels(labels, options.instances), read)


def segment_file(source: str, output: str, concept: str | None, model_args: dict, options: SegmentOptions,
                 image_size: int | None = None, points=None, box=None, overwrite: bool = False,
                 threads: int | None = None, channel: int | str | None = None,
                 embedding_cache: str | os.PathLike | None = None, point_labels=None) -> str:
    """Segment one file into ``output`` with this process's model; returns ``output`` (runs on a worker)."""
    from .inference.predictor import ClipSamPredictor

    predictor = ClipSamPredictor(_worker_model(model_args, threads), image_size=image_size,
                                 embedding_cache=embedding_cache)
    with predictor:
        segment_to_file(predictor, str(source), source, output, concept, options, points, box, channel, overwrite,
                        point_labels=point_labels)
    return output


def _client(client, workers: int | None, scheduler: str | None, threads: int | None):
    """(the client to use, what to close afterwards)."""
    if client is not None:
        return client, []
    from distributed import Client, LocalCluster

    if scheduler is not None:
        made = Client(scheduler)
        return made, [made]
    cluster = LocalCluster(n_workers=workers or 1, threads_per_worker=1, processes=True, dashboard_address=":0",
                           host="127.0.0.1")
    made = Client(cluster)
    return made, [made, cluster]


def segment_files(
    pairs: Sequence[tuple[str | os.PathLike, str | os.PathLike]],
    concept: str | None,
    *,
    model_args: dict,
    options: SegmentOptions = SegmentOptions(),
    image_size: int | None = None,
    points=None,
    box=None,
    point_labels=None,
    overwrite: bool = False,
    client=None,
    workers: int | None = None,
    scheduler: str | None = None,
    threads_per_worker: int | None = 1,
    channel: int | str | None = None,
    on_result: Callable[[str, str | None, str | None], None] | None = None,
    embedding_cache: str | os.PathLike | None = None,
) -> BatchReport:
    """Segment each ``(input, output)`` pair on dask.distributed; see the module's docstring.

    Args:
        model_args: arguments of :func:`napari_clipsam.load_model` (each worker loads its model
            with them: weights are read from each worker's cache or files).
        client: a ``distributed.Client`` to use (left open); else ``scheduler`` (an address,
            ``tcp://host:8786``) or, by default, a local cluster of ``workers`` processes
            (one thread each), closed at the end.
        points, box, point_labels: prompts for every file (XY, XYXY; labels 1 positive, 0 negative,
            None: all positive).
        threads_per_worker: torch threads per worker process (None: torch's default).
        on_result: called as each file ends: ``(input, output or None, error or None)``.
        embedding_cache: a folder every worker keeps image features in (``EmbeddingStore``):
            a re-run of a concept skips the encoders.

    Returns:
        A :class:`BatchReport`; call ``raise_for_failures()`` to turn failures into an error.
    """
    report = BatchReport()
    todo = []
    for source, output in pairs:
        source, output = str(source), str(output)
        if Path(output).exists() and not overwrite:
            report.skipped.append(output)
        else:
            todo.append((source, output))
    if not todo:
        return report
    from distributed import as_completed

    client, to_close = _client(client, workers, scheduler, threads_per_worker)
    try:
        futures = {
            client.submit(segment_file, source, output, concept, model_args, options, image_size, points, box,
                          overwrite, threads_per_worker, channel, embedding_cache, point_labels,
                          key=f"napari-clipsam-{index}-{Path(source).name}",
                          pure=False): (source, output)
            for index, (source, output) in enumerate(todo)
        }
        for future in as_completed(futures):
            source, output = futures[future]
            try:
                future.result()
            except Exception as err:  # reported with its input; the other files go on
                report.failed[source] = f"{type(err).__name__}: {err}"
                if on_result is not None:
                    on_result(source, None, report.failed[source])
            else:
                report.written.append(output)
                if on_result is not None:
                    on_result(source, output, None)
    finally:
        for resource in to_close:
            resource.close()
    return report


__all__ = ["BatchReport", "FileResult", "count_labels", "segment_file", "segment_files", "segment_to_file"]
