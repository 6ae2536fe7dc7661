"""The job runner both dock widgets use: status order under napari's progress bar, Cancel, late results.

Tests hold the GUI thread while the worker runs to its end, so that every event of the
job is waiting when the first handler runs: the order napari's progress bar (which
processes events inside each update) then produces is the same on every machine.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import pytest

from napari_clipsam._qt.jobs import JobRunner
from tests._qt.widget_helpers import TIMEOUT_MS, TIMEOUT_S


@dataclass(frozen=True)
class _Event:
    stage: str
    done: int = 0
    total: int | None = None


class _Recorder:
    """Collects what a runner reports."""

    def __init__(self) -> None:
        self.statuses: list[str] = []
        self.busy: list[bool] = []
        self.results: list = []
        self.after_calls = 0

    def status(self, text: str) -> None:
        self.statuses.append(text)

    def after(self) -> None:
        self.after_calls += 1


def _wait_for_the_worker_to_end() -> None:
    """Block the GUI thread (no events processed) until every worker thread has finished."""
    from qtpy.QtCore import QThreadPool

    assert QThreadPool.globalInstance().waitForDone(TIMEOUT_MS)


@pytest.fixture
def recorder(make_napari_viewer):
    make_napari_viewer()  # napari's activity dialog: progress bars with their processEvents()
    return _Recorder()


def test_the_status_ends_on_the_result_when_events_pile_up(qtbot, recorder):
    """Every stage, then the result, in order: a handler interrupted by the bar's processEvents()
    once wrote its older stage over the newer ones and over the result."""
    stages = ["preparing image", "CLIP", "image encoder", "decoding masks"]

    def job():
        for done, stage in enumerate(stages, start=1):
            yield _Event(stage, done, len(stages))
        return "labels"

    runner = JobRunner(recorder.status, recorder.busy.append)

    def on_result(value):
        recorder.results.append(value)
        recorder.status(f"result: {value}")

    runner.start("Segmenting", job, on_result=on_result)
    _wait_for_the_worker_to_end()
    qtbot.waitUntil(lambda: not runner.busy, timeout=TIMEOUT_MS)
    assert recorder.results == ["labels"]
    assert recorder.statuses == ["Segmenting...", *stages, "result: labels"]
    assert recorder.busy == [True, False]


def test_thousands_of_piled_up_events_do_not_nest_the_progress_bar(qtbot, recorder, monkeypatch):
    """A job yielding faster than the GUI shows (a loaded machine): each bar update processes the
    next waiting event inside it, and once nested one handler per event until Python's recursion
    limit (a RecursionError under CI's load). The bar is brought up to date by one handler at a time."""
    from napari_clipsam._qt import jobs

    depth, deepest = [0], [0]
    set_done = jobs._set_done

    def counting(bar, event):
        depth[0] += 1
        deepest[0] = max(deepest[0], depth[0])
        try:
            set_done(bar, event)
        finally:
            depth[0] -= 1

    monkeypatch.setattr(jobs, "_set_done", counting)
    count = 3000

    def job():
        for done in range(1, count + 1):
            yield _Event(f"step {done}", done, count)
        return "done"

    runner = JobRunner(recorder.status, recorder.busy.append)
    runner.start("Working", job, on_result=recorder.results.append)
    _wait_for_the_worker_to_end()  # all 3000 events wait for the GUI thread
    qtbot.waitUntil(lambda: not runner.busy, timeout=TIMEOUT_MS)
    assert recorder.results == ["done"]
    assert recorder.statuses[-1] == f"step {count}"
    assert deepest[0] == 1


def test_a_cancel_closes_the_job_in_its_worker_before_the_widget_hears_of_it(qtbot, recorder):
    """The job's clean-up (a training run removing its files) has run when the status is written."""
    started, cleaned = threading.Event(), []

    def job():
        try:
            yield _Event("first")
            started.set()
            while True:
                yield _Event("more")
        finally:
            cleaned.append(threading.current_thread())

    runner = JobRunner(recorder.status, recorder.busy.append)

    def cancelled_status() -> str:
        return f"Cancelled; cleaned up: {bool(cleaned)}"

    runner.start("Working", job, on_result=recorder.results.append, after=recorder.after,
                 on_cancelled=cancelled_status)
    assert started.wait(TIMEOUT_S)
    runner.cancel()
    qtbot.waitUntil(lambda: not runner.busy, timeout=TIMEOUT_MS)
    assert cleaned and cleaned[0] is not threading.main_thread()
    assert recorder.statuses[-1] == "Cancelled; cleaned up: True"
    assert recorder.results == [] and recorder.after_calls == 1


@pytest.mark.parametrize("keep", [True, False])
def test_a_job_that_ends_before_the_cancel_reaches_a_yield(qtbot, recorder, keep):
    """A Cancel during the last stretch (a training run's final save): the work is done. Jobs
    whose result stands for what they did (a saved file) report it; others drop it."""
    saving, release = threading.Event(), threading.Event()

    def job():
        yield _Event("saving")
        saving.set()
        assert release.wait(TIMEOUT_S)
        return "saved"

    runner = JobRunner(recorder.status, recorder.busy.append)
    runner.start("Training", job, on_result=recorder.results.append, keep_late_result=keep,
                 on_cancelled=lambda: "Cancelled: nothing saved.")
    assert saving.wait(TIMEOUT_S)
    runner.cancel()
    assert runner.cancel_requested
    release.set()
    qtbot.waitUntil(lambda: not runner.busy, timeout=TIMEOUT_MS)
    if keep:
        assert recorder.results == ["saved"] and recorder.statuses[-1] == "Cancelling..."
    else:
        assert recorder.results == [] and recorder.statuses[-1] == "Cancelled: nothing saved."


def test_a_failed_job_is_reported_once_and_runs_after(qtbot, recorder, monkeypatch):
    messages, errors = [], []
    monkeypatch.setattr("napari.utils.notifications.show_error", messages.append)

    def job():
        yield _Event("loading")
        raise OSError("disk full")

    runner = JobRunner(recorder.status, recorder.busy.append)
    runner.start("Saving", job, on_result=recorder.results.append, on_error=errors.append, after=recorder.after)
    qtbot.waitUntil(lambda: not runner.busy, timeout=TIMEOUT_MS)
    assert messages == ["napari-clipsam: disk full"] and [str(e) for e in errors] == ["disk full"]
    assert recorder.statuses[-1] == "Error: disk full"
    assert recorder.results == [] and recorder.after_calls == 1
