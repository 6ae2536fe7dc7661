"""Segmentation requests run one at a time, each with the model it needs (loaded on demand).

The jobs are the pipeline's generators for napari layers (:func:`iter_segment_plane`, which
tiles large planes and reads multiscale levels, and :func:`iter_segment_layer_stack`) and
:func:`iter_load_model`, run by :class:`JobRunner` in a worker thread; a request
made while one runs waits, and a newer one replaces it. Each request's
:class:`~.requests.Outcome` records how it ended, for :meth:`SegmentJobs.wait`.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any, Callable

from .._jobs import Progress, iter_load_model
from ..inference.layers import iter_segment_layer_stack, iter_segment_plane
from .jobs import JobRunner
from .requests import STACK, Outcome, SegmentRequest

# The model key of a model handed over with use_model(): kept whatever the fields say.
_GIVEN_MODEL = "given"
CANCELLED = "Cancelled: no layer was changed."


class SegmentJobs:
    """The model, its predictor, and the requests: one running, at most one queued (the newest).

    Args:
        runner: runs the jobs in a worker thread.
        model_arguments: the :func:`load_model` arguments the widget's fields say now.
        image_size: the SAM input side the fields say now (None: the model's preferred size).
        on_result: called on the main thread with ``(request, result)`` of each segmentation.
        on_model: called on the main thread with each model loaded here.
        set_status: the widget's status line.
    """

    def __init__(self, runner: JobRunner, model_arguments: Callable[[], dict[str, Any]],
                 image_size: Callable[[], int | None], on_result: Callable[[SegmentRequest, Any], None],
                 on_model: Callable[[Any], None], set_status: Callable[[str], None]) -> None:
        self._runner = runner
        self._model_arguments = model_arguments
        self._image_size = image_size
        self._on_result = on_result
        self._on_model = on_model
        self._set_status = set_status
        self.model = None
        self.predictor = None
        self._model_key: Any = None
        self._queued: SegmentRequest | None = None
        self.outcome: Outcome | None = None  # of the newest request

    @property
    def busy(self) -> bool:
        return self._runner.busy

    def use_model(self, model, key: Any = _GIVEN_MODEL) -> None:
        from ..inference.predictor import ClipSamPredictor

        self.model, self._model_key = model, key
        self.predictor = ClipSamPredictor(model)

    def submit(self, request: SegmentRequest) -> None:
        """Run now, or queue behind the running job; a newer request replaces a queued one."""
        self.outcome = request.outcome
        if not self._runner.busy and self._queued is None:
            self._run(request)
            return
        self._queue(request)
        self._set_status("Queued: waiting for the running job to finish...")

    def load(self) -> bool:
        """Load the model the fields say (again); False when a job is running."""
        if self._runner.busy:
            return False
        self._load(self._model_arguments(), None)
        return True

    def cancel(self) -> None:
        if self._queued is not None:
            self._queued.outcome.fail(RuntimeError("Cancelled before it started."))
            self._queued = None
            if not self._runner.busy:
                self._set_status(CANCELLED)
        self._runner.cancel()

    def wait(self, timeout: float) -> Any:
        """Process Qt events until the newest request has ended and its worker has finished;
        its result, or its error raised."""
        from qtpy.QtCore import QEventLoop, QTimer
        from qtpy.QtWidgets import QApplication

        outcome = self.outcome
        if outcome is None:
            raise RuntimeError("Nothing to wait for: call segment() first.")
        deadline = time.monotonic() + timeout
        wake = QTimer()  # so that the blocking wait below checks the deadline now and then
        wake.start(50)
        try:
            while not outcome.done or self._runner.busy:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"The segmentation did not finish within {timeout} s.")
                QApplication.processEvents(QEventLoop.ProcessEventsFlag.WaitForMoreEvents)
        finally:
            wake.stop()
        if outcome.error is not None:
            raise outcome.error
        return outcome.result

    def _queue(self, request: SegmentRequest) -> None:
        if self._queued is not None:
            self._queued.outcome.fail(RuntimeError("Replaced by a newer request."))
        self._queued = request

    def _run(self, request: SegmentRequest) -> None:
        arguments = self._model_arguments()
        if self.model is not None and self._model_key in (_GIVEN_MODEL, _model_key(arguments)):
            self._segment(request)
        else:
            self._load(arguments, request)

    def _load(self, arguments: dict[str, Any], request: SegmentRequest | None) -> None:
        self._runner.start(
            "Loading model", iter_load_model, kwargs=arguments, on_event=self._on_progress,
            on_result=partial(self._on_loaded, arguments, request), after=partial(self._after, request),
            on_error=None if request is None else request.outcome.fail, on_cancelled=lambda: CANCELLED,
        )

    def _on_loaded(self, arguments: dict[str, Any], request: SegmentRequest | None, model) -> None:
        self.use_model(model, _model_key(arguments))
        self._on_model(model)
        if request is not None and self._queued is None:
            self._queued = request  # starts as soon as the loading worker has finished
        elif request is not None:
            request.outcome.fail(RuntimeError("Replaced by a newer request."))

    def _segment(self, request: SegmentRequest) -> None:
        # Set here, between jobs: a new size drops the predictor's features (none is running).
        self.predictor.image_size = self._image_size()
        handlers = dict(on_result=partial(self._on_result, request), on_event=self._on_progress,
                        after=partial(self._after, request), on_error=request.outcome.fail,
                        on_cancelled=lambda: CANCELLED)
        if request.kind == STACK:
            self._runner.start(
                "Segmenting all slices", iter_segment_layer_stack,
                args=(self.predictor, request.data, request.concept, request.options),
                kwargs=dict(rgb=request.rgb, multiscale=request.multiscale, level=request.level), **handlers,
            )
        else:
            self._runner.start(
                "Segmenting", iter_segment_plane, args=(self.predictor, request.image_plane(), request.concept),
                kwargs=dict(request.prompts, options=request.options), **handlers,
            )

    def _on_progress(self, event: Progress) -> None:
        if event.stage == "downloading weights" and event.total:
            self._set_status(f"Downloading weights: {event.done / 1e6:.0f} of {event.total / 1e6:.0f} MB")

    def _after(self, request: SegmentRequest | None) -> None:
        """A job's worker has finished: settle its request, start the queued one."""
        if request is not None and not request.outcome.done and request is not self._queued:
            request.outcome.fail(RuntimeError(CANCELLED))
        if self._runner.busy:  # a job started meanwhile (events processed in a handler): it runs the queue
            return
        queued, self._queued = self._queued, None
        if queued is not None:
            self._run(queued)


def _model_key(arguments: dict[str, Any]) -> tuple:
    return tuple(arguments.items())
