"""Following a dock widget into and out of its dock, and out of existence.

napari closes a dock (its **x**, ``remove_dock_widget``) by taking the inner widget out
of it (``setParent(None)``) without deleting it; closing napari deletes the window and
every widget in it. A widget that runs jobs must stop them in both cases, and write
nothing afterwards.
"""

from __future__ import annotations

from typing import Callable

from qtpy.QtCore import QEvent, QObject


def watch_docking(widget, on_docked: Callable[[], None], on_undocked: Callable[[], None]) -> None:
    """Call ``on_docked`` when ``widget`` (a QWidget) gets a parent (a dock), ``on_undocked`` when it loses it."""
    _DockWatcher(widget, on_docked, on_undocked)


class _DockWatcher(QObject):
    """Reports a widget's moves into and out of a parent (a dock)."""

    def __init__(self, widget, on_docked: Callable[[], None], on_undocked: Callable[[], None]) -> None:
        super().__init__(widget)  # lives and dies with the widget
        self._on_docked, self._on_undocked = on_docked, on_undocked
        widget.installEventFilter(self)

    def eventFilter(self, watched, event) -> bool:  # noqa: N802 (Qt's name)
        if event.type() == QEvent.Type.ParentChange:
            (self._on_docked if watched.parent() is not None else self._on_undocked)()
        return False
