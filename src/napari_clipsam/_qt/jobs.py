"""Running a job generator in napari's thread_worker: progress bar, status, cancel, errors.

Shared by the dock widgets. Results reach ``on_result`` on the main thread, so layers
are only touched there; a cancelled job never calls it. Jobs start in the worker
thread, which prepares the process for torch (``model.device.avoid_triton_on_cpu_only_machines``)
before the job imports the model stack: opening a widget imports no torch.
"""

from __future__ import annotations

from typing import Any, Callable


def _prepared(job: Callable, *args: Any, **kwargs: Any):
    """``job(*args, **kwargs)``, a generator, run after the process is ready for torch."""
    from ..model.device import avoid_triton_on_cpu_only_machines

    avoid_triton_on_cpu_only_machines()
    return (yield from job(*args, **kwargs))


def _ignore(*_: Any) -> None:
    """A callback of a widget that is gone."""


class JobRunner:
    """One job at a time, in a worker thread, mirrored in a napari progress bar."""

    def __init__(self, on_status: Callable[[str], None], on_busy: Callable[[bool], None]) -> None:
        self._on_status = on_status
        self._on_busy = on_busy
        self._worker = None
        self._progress = None
        self._cancelled = False
        self._on_event: Callable[[Any], None] | None = None
        self._on_result: Callable[[Any], None] | None = None
        self._on_error: Callable[[BaseException], None] | None = None
        self._after: Callable[[], None] | None = None

    @property
    def busy(self) -> bool:
        return self._worker is not None

    def start(
        self,
        title: str,
        job: Callable,
        args: tuple = (),
        kwargs: dict | None = None,
        on_result: Callable[[Any], None] | None = None,
        on_event: Callable[[Any], None] | None = None,
        after: Callable[[], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        """Run ``job(*args, **kwargs)`` (a generator function) in a worker thread.

        ``on_event`` sees each yielded event (after the progress bar), ``on_result`` the
        return value, ``on_error`` the exception of a failed job (after the notification),
        ``after`` runs once the worker has finished, whatever happened.
        """
        from napari.qt.threading import create_worker
        from napari.utils import progress

        if self._worker is not None:
            raise RuntimeError("A job is already running.")
        # Errors are reported here as notifications; napari would re-raise them otherwise.
        worker = create_worker(_prepared, job, *args, _start_thread=False, _ignore_errors=True, **(kwargs or {}))
        self._worker, self._cancelled = worker, False
        self._on_event, self._after, self._on_error = on_event, after, on_error
        self._progress = progress(total=0, desc=title)
        self._on_status(f"{title}...")
        self._on_busy(True)
        self._on_result = on_result
        worker.yielded.connect(self._yielded)
        worker.returned.connect(self._returned)
        worker.errored.connect(self._errored)
        worker.finished.connect(self._finished)
        worker.start()

    def then(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once the current job's worker has finished (e.g. from ``on_result``)."""
        self._after = callback

    def detach(self) -> None:
        """The widget is gone (its Qt object deleted): stop the job at its next yield and
        call none of the widget's callbacks again, whenever the worker finishes."""
        self._on_status = self._on_busy = _ignore
        self._on_event = self._on_result = self._on_error = self._after = None
        self.cancel()

    def cancel(self) -> None:
        """Ask the job to stop at its next yield; its result, if any, is discarded."""
        if self._worker is not None:
            self._cancelled = True
            self._worker.quit()
            self._on_status("Cancelling...")

    def _yielded(self, event: Any) -> None:
        if self._cancelled:
            return
        bar = self._progress
        total, done = getattr(event, "total", None), getattr(event, "done", 0)
        if bar is not None:
            if total is not None and bar.total != total:
                bar.total = total
            if done > bar.n:
                bar.update(done - bar.n)
            bar.set_description(event.stage)
        self._on_status(event.stage)
        if self._on_event is not None:
            self._on_event(event)

    def _returned(self, value: Any) -> None:
        if not self._cancelled and self._on_result is not None:
            self._on_result(value)

    def _errored(self, error: Exception) -> None:
        from napari.utils.notifications import show_error

        self._on_status(f"Error: {error}")
        show_error(f"napari-clipsam: {error}")
        if self._on_error is not None:
            self._on_error(error)

    def _finished(self) -> None:
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        self._worker, self._on_error, self._on_result = None, None, None
        if self._cancelled:
            self._cancelled = False
            self._on_status("Cancelled: no layer or file was changed.")
        self._on_busy(False)
        after, self._after = self._after, None
        if after is not None:
            after()
