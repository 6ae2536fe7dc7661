"""Keyboard shortcuts of the segmentation widget, bound on the viewer while the widget is docked.

napari looks a key up in the active layer's keymaps first, then in the viewer's. None
of napari's viewer keymaps uses our keys, but some layer types do: S (select mode) on
Points and Shapes, T (path mode) on Shapes, C (auto-contrast) on Image layers. Our own
prompt layers get our keys on their instance keymaps, which come before their class's,
so there S and T mean ours (select mode stays on 3 for points, 5 for shapes). On the
user's layers napari's meaning wins: C on an image layer still auto-contrasts. A key
that something else (another plugin, a script) has bound on the viewer is left alone.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

SEGMENT, ACCEPT, TOGGLE, CLEAR = "S", "C", "T", "Shift-C"
SHORTCUTS: dict[str, str] = {
    SEGMENT: "segment (manual mode: update the mask)",
    ACCEPT: "add the mask to the labels",
    TOGGLE: "switch between positive and negative points",
    CLEAR: "clear the prompts and the preview",
}

logger = logging.getLogger(__name__)


def shortcuts_text() -> str:
    """One line per shortcut, for tooltips."""
    return "\n".join(f"{key}: {action}" for key, action in SHORTCUTS.items())


class ViewerShortcuts:
    """Binds ``actions`` (key -> callable taking the keymap's owner) on a viewer and on chosen layers.

    Only bindings made here are ever removed, and only while they are still ours.
    """

    def __init__(self, viewer, actions: dict[str, Callable[[Any], None]]) -> None:
        from napari.utils.key_bindings import coerce_keybinding

        self._viewer = viewer
        self._actions = {coerce_keybinding(key): action for key, action in actions.items()}
        self._layers: list[Any] = []  # our own layers, which get the keys too
        self.bound = False
        self.skipped: list[str] = []  # keys left to their earlier owner on the viewer

    def bind(self) -> None:
        """Bind every key not already taken on the viewer (by napari or anyone else), and on our layers."""
        if self.bound:
            return
        self.skipped = []
        for key, action in self._actions.items():
            owner = _viewer_binding(self._viewer, key)
            if owner is not None and owner != action:
                self.skipped.append(str(key))
                logger.warning("napari-clipsam: %s is already bound on the viewer (%s); not binding it.", key,
                               getattr(owner, "__qualname__", owner))
                continue
            self._viewer.bind_key(key, action, overwrite=True)
        self.bound = True
        for layer in self._layers:
            self._bind_on(layer)

    def bind_layer(self, layer) -> None:
        """Give one of our own layers the keys too, before its class's bindings (now or when bound)."""
        if any(layer is known for known in self._layers):
            return
        self._layers.append(layer)
        if self.bound:
            self._bind_on(layer)

    def unbind(self) -> None:
        for owner in (self._viewer, *self._layers):
            for key, action in self._actions.items():
                if owner.keymap.get(key) == action:
                    owner.bind_key(key, None)
        self.bound = False

    def _bind_on(self, layer) -> None:
        for key, action in self._actions.items():
            layer.bind_key(key, action, overwrite=True)


def _viewer_binding(viewer, key):
    """What ``key`` does on the viewer now: its own keymap, then its classes' (napari's defaults)."""
    if key in viewer.keymap:
        return viewer.keymap[key]
    for cls in type(viewer).__mro__:
        keymap = cls.__dict__.get("class_keymap")
        if keymap and key in keymap:
            return keymap[key]
    return None
