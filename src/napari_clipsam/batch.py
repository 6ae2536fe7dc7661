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
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


def segment_file(source: str, output: str, concept: str | None, model_args: dict, options: SegmentOptions,
                 image_size: int | None = None, points=None, box=None, overwrite: bool = False,
                 threads: int | None = None) -> str:
    """Segment one file into ``output`` with this process's model; returns ``output`` (runs on a worker)."""
    from ._io import read_image, write_labels
    from ._jobs import run
    from .inference.pipeline import iter_segment_stack
    from .inference.predictor import ClipSamPredictor

    model = _worker_model(model_args, threads)
    image = read_image(source)
    predictor = ClipSamPredictor(model, image_size=image_size)
    with predictor:
        labels = run(iter_segment_stack(predictor, image, concept, points, None, box, options))
    write_labels(output, labels, replace=overwrite)
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
    overwrite: bool = False,
    client=None,
    workers: int | None = None,
    scheduler: str | None = None,
    threads_per_worker: int | None = 1,
    on_result: Callable[[str, str | None, str | None], None] | None = None,
) -> BatchReport:
    """Segment each ``(input, output)`` pair on dask.distributed; see the module's docstring.

    Args:
        model_args: arguments of :func:`napari_clipsam.load_model` (each worker loads its model
            with them: weights are read from each worker's cache or files).
        client: a ``distributed.Client`` to use (left open); else ``scheduler`` (an address,
            ``tcp://host:8786``) or, by default, a local cluster of ``workers`` processes
            (one thread each), closed at the end.
        threads_per_worker: torch threads per worker process (None: torch's default).
        on_result: called as each file ends: ``(input, output or None, error or None)``.

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
                          overwrite, threads_per_worker, key=f"napari-clipsam-{index}-{Path(source).name}",
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


__all__ = ["BatchReport", "segment_file", "segment_files"]
