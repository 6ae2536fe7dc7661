"""What the segmentation widget's tests share besides fixtures."""

from __future__ import annotations

import threading

import pytest

# Failure guards only: tests wait for events, never for an expected duration.
TIMEOUT_S = 120.0
TIMEOUT_MS = int(TIMEOUT_S * 1000)


def in_fresh_thread(function, *args, **kwargs):
    """``function(*args, **kwargs)`` run on a new thread, as the widget runs its jobs: the reference for exact comparisons.

    Once napari has drawn a Labels layer, numba's OpenMP threading layer (napari's label
    colormap) has set the MAIN thread's OpenMP thread count to the number of cores,
    whatever OMP_NUM_THREADS says; torch then sums in another order there than on a new
    thread, and a mask can differ by one pixel. A new thread starts from the process's
    default count, like the widget's worker.
    """
    results = []
    thread = threading.Thread(target=lambda: results.append(function(*args, **kwargs)))
    thread.start()
    thread.join(TIMEOUT_S)
    if not results:
        raise RuntimeError("The reference computation failed or did not finish: see the thread's traceback above.")
    return results[0]


class BlockingEncoder:
    """Stands in for the model's ``encoder_suffix``: notes its thread and its calls; from the
    ``call``-th call on (a tile's or plane's), says it started and waits for ``release``.

    Tests decide when the encoder may finish, instead of guessing how long it takes.
    """

    def __init__(self, model, monkeypatch, call: int = 1) -> None:
        self.started, self.release = threading.Event(), threading.Event()
        self.threads: list[threading.Thread] = []
        self.calls, self._gate = 0, call
        self._original = model.encoder_suffix
        monkeypatch.setattr(model, "encoder_suffix", self)

    def __call__(self, *args, **kwargs):
        self.threads.append(threading.current_thread())
        self.calls += 1
        if self.calls >= self._gate:
            self.started.set()
            if not self.release.wait(TIMEOUT_S):
                raise TimeoutError("The test never released the encoder.")
        return self._original(*args, **kwargs)


def cancel_while_encoding(qtbot, widget, encoder: BlockingEncoder) -> None:
    """Cancel the widget's running job once ``encoder`` blocks, release it, and see the job end cancelled."""
    qtbot.waitUntil(encoder.started.is_set, timeout=TIMEOUT_MS)
    widget.cancel()
    encoder.release.set()
    with pytest.raises(RuntimeError, match="Cancelled"):
        widget.wait(TIMEOUT_S)


def press(viewer, key: str) -> bool:
    """Press ``key`` as napari does for a key event on the canvas: the active layer's keymaps, then the viewer's."""
    return viewer.window._qt_viewer._key_map_handler.press_key(key)
