"""Running a job generator in napari's thread_worker: progress bar, status, cancel, errors.

Shared by the dock widgets. Results reach ``on_result`` on the main thread, so layers
are only touched there. Jobs start in the worker thread, which prepares the process for
torch (``model.device.avoid_triton_on_cpu_only_machines``) before the job imports the
model stack: opening a widget imports no torch.

Two things shape this module:

- napari's progress bar calls ``QApplication.processEvents()`` on each update, so the
  handlers of a job's later events, and of its end, can run inside an earlier event's
  handler. Each handler therefore updates the widget first and the bar last, and the bar
  always shows the newest event, whichever handler drives it.
- A Cancel stops the job at its next yield and closes it there, in the worker thread,
  so that the job's own clean-up (``finally`` blocks, e.g. removing what a cancelled
  training run wrote) has run before the widget reports what happened.
"""

from __future__ import annotations

import inspect
import logging
import threading
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Generator

# What the worker returns for a job that was stopped at a yield.
_STOPPED = object()

logger = logging.getLogger(__name__)


def _driven(job: Generator, stop: threading.Event):
    """Run ``job`` (a generator) after the process is ready for torch, until it ends or ``stop`` is set."""
    from ..model.device import avoid_triton_on_cpu_only_machines

    avoid_triton_on_cpu_only_machines()
    while not stop.is_set():
        try:
            event = next(job)
        except StopIteration as end:
            return end.value
        yield event
    job.close()
    return _STOPPED


def _ignore(*_: Any) -> None:
    """A callback of a widget that is gone."""


def _close(job: Generator) -> None:
    """Run the clean-up of a job suspended at a yield (not running, not ended); its errors are logged:
    no one is left to report them to, and one raised out of a Qt slot would end the process."""
    if inspect.getgeneratorstate(job) != inspect.GEN_SUSPENDED:
        return
    try:
        job.close()
    except Exception:
        logger.exception("napari-clipsam: the clean-up of a stopped job failed")


@dataclass(eq=False)
class _Job:
    """One started job: its worker, its callbacks, and how it ended."""

    title: str
    generator: Generator
    stop: threading.Event
    on_result: Callable[[Any], None] | None
    on_event: Callable[[Any], None] | None
    on_error: Callable[[BaseException], None] | None
    after: Callable[[], None] | None
    on_cancelled: Callable[[], str] | None
    keep_late_result: bool
    worker: Any = None
    progress: Any = None
    last_event: Any = None
    showing: bool = False  # a handler is bringing the progress bar up to date
    ended: str = ""  # "returned", "stopped" or "failed" once the worker says so
    result: Any = None

    def forget_callbacks(self) -> None:
        self.on_result = self.on_event = self.on_error = self.after = self.on_cancelled = None


class JobRunner:
    """One job at a time, in a worker thread, mirrored in a napari progress bar."""

    def __init__(self, on_status: Callable[[str], None], on_busy: Callable[[bool], None]) -> None:
        self._on_status = on_status
        self._on_busy = on_busy
        self._job: _Job | None = None
        self._detached = False

    @property
    def busy(self) -> bool:
        return self._job is not None

    @property
    def cancel_requested(self) -> bool:
        """Whether the running job was asked to stop (it may still finish, see ``keep_late_result``)."""
        return self._job is not None and self._job.stop.is_set()

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
        on_cancelled: Callable[[], str] | None = None,
        keep_late_result: bool = False,
    ) -> None:
        """Run ``job(*args, **kwargs)`` (a generator function) in a worker thread.

        Args:
            on_event: sees each yielded event (before the progress bar).
            on_result: gets the return value, once the worker has finished.
            on_error: gets the exception of a failed job (after the notification).
            after: runs once the worker has finished, whatever happened.
            on_cancelled: after a Cancel, returns the status line (what was kept);
                default "Cancelled.".
            keep_late_result: a job that finished before a Cancel reached a yield still
                hands its result to ``on_result`` (its work is done: e.g. a file was saved);
                otherwise such a result is dropped, as if the Cancel had stopped it.

        Raises:
            RuntimeError: a job is running (check :attr:`busy` first).
        """
        from napari.qt.threading import create_worker
        from napari.utils import progress
        from qtpy.QtCore import Qt

        if self._job is not None:
            raise RuntimeError("A job is already running.")
        record = _Job(title, job(*args, **(kwargs or {})), threading.Event(), on_result, on_event, on_error, after,
                      on_cancelled, keep_late_result)
        # Errors are reported here as notifications; napari would re-raise them otherwise.
        worker = create_worker(_driven, record.generator, record.stop, _start_thread=False, _ignore_errors=True)
        record.worker = worker
        self._job = record
        self._on_status(f"{title}...")
        self._on_busy(True)
        worker.yielded.connect(partial(self._yielded, record))
        worker.returned.connect(partial(self._returned, record))
        worker.errored.connect(partial(self._errored, record))
        worker.finished.connect(partial(self._finished, record))
        # napari quits every worker when its window closes: superqt then leaves the job
        # suspended at its yield. Close it there, in the worker thread, as a Cancel does.
        worker.aborted.connect(partial(_close, record.generator), Qt.ConnectionType.DirectConnection)
        # Last: making the bar processes events, and what runs then must find this job set up.
        record.progress = progress(total=0, desc=title)
        worker.start()

    def detach(self) -> None:
        """The widget is gone (its Qt object deleted): stop the job at its next yield and
        call none of the widget's callbacks again, whenever the worker finishes."""
        self._detached = True
        self._on_status = self._on_busy = _ignore
        if self._job is not None:
            self._job.forget_callbacks()
            self._job.stop.set()

    def cancel(self) -> None:
        """Ask the job to stop at its next yield; its result, if any, is discarded."""
        record = self._job
        if record is None or record.stop.is_set():
            return
        record.stop.set()
        self._on_status("Cancelling...")

    def _yielded(self, record: _Job, event: Any) -> None:
        if record is not self._job:
            return
        # Events of work done before a Cancel are still shown (a training step that was
        # taken), but the status keeps saying "Cancelling...".
        record.last_event = event
        if not record.stop.is_set():
            self._on_status(event.stage)
        if record.on_event is not None:
            record.on_event(event)
        self._show_progress(record)

    def _show_progress(self, record: _Job) -> None:
        """Bring the bar to the newest event; each step may run later handlers (processEvents).

        One call at a time: a later event's handler, run inside a step, leaves the bar to
        this call, which goes on until no newer event came. (Each handler updating the
        bar itself nested one handler per waiting event, past Python's recursion limit
        when a job yielded faster than the GUI showed.)
        """
        if record.showing:
            return
        record.showing = True
        try:
            shown = None
            while record.last_event is not shown:
                shown = record.last_event
                for step in (_set_total, _set_done, _set_description):
                    bar = record.progress
                    if bar is None:
                        return  # the job ended meanwhile and closed its bar
                    step(bar, shown)
        finally:
            record.showing = False

    def _returned(self, record: _Job, value: Any) -> None:
        record.ended, record.result = ("stopped", None) if value is _STOPPED else ("returned", value)

    def _errored(self, record: _Job, error: Exception) -> None:
        from napari.utils.notifications import show_error

        record.ended = "failed"
        if self._detached:
            logger.warning("napari-clipsam: a job of a closed widget failed: %s", error)
            return
        self._on_status(f"Error: {error}")
        show_error(f"napari-clipsam: {error}")
        if record.on_error is not None:
            record.on_error(error)

    def _finished(self, record: _Job) -> None:
        if record is not self._job:
            return
        if not record.ended:  # someone else quit the worker (superqt's quit): no return value came
            record.ended = "stopped"
            _close(record.generator)  # normally done already, in the worker
        self._job = None
        bar, record.progress = record.progress, None
        late = record.ended == "returned" and record.stop.is_set()
        if record.ended == "returned" and (not late or record.keep_late_result):
            if record.on_result is not None:
                record.on_result(record.result)
        elif record.ended == "stopped" or late:
            self._on_status(record.on_cancelled() if record.on_cancelled is not None else "Cancelled.")
        self._on_busy(False)
        if record.after is not None:
            record.after()  # before closing the bar: a click handled in there must queue behind it
        if bar is not None:
            bar.close()


def _set_total(bar, event) -> None:
    total = getattr(event, "total", None)
    if total is not None and bar.total != total:
        bar.total = total


def _set_done(bar, event) -> None:
    done = getattr(event, "done", 0)
    if done > bar.n:
        bar.update(done - bar.n)


def _set_description(bar, event) -> None:
    bar.set_description(event.stage)
