"""Long work as generators that yield progress and return a result.

Scripts drain them with :func:`run`; the napari widget wraps the same generators in
``thread_worker`` and maps each yielded :class:`Progress` to a progress bar, so a
Cancel stops the work at the next stage boundary. No Qt here.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable, Generator, TypeVar

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
    from .model.build import load_model

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
