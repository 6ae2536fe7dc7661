"""Which Labels layer a result goes to: the one the user chose, else the image's own.

The Output control offers "New layer" and the viewer's Labels layers. A layer chosen
there by the user (or by a script's ``set_options(output=...)``) stays the output
whatever image is segmented, until another choice. Otherwise the output follows the
image: the layer the widget made for that image, or a new one. Without this, the
second image of the same shape went into the first image's labels.
"""

from __future__ import annotations

import weakref
from typing import Any

from .label_layers import NEW_LAYER, output_layer, write_labels


class OutputChoice:
    """Keeps the Output control (a magicgui ComboBox of layer names) following the chosen image."""

    def __init__(self, viewer, control) -> None:
        self._viewer = viewer
        self._control = control
        self._chosen: str | None = None  # the layer the user chose, while the control still shows it
        self._made: dict[int, tuple[weakref.ref, weakref.ref]] = {}  # id(image) -> (image, its output)
        # Only a user's pick in the list emits 'activated'; the widget's own settings do not.
        control.native.activated.connect(self._on_user_choice)

    @property
    def chosen(self) -> bool:
        """Whether the output is a layer the user chose (it then stays whatever the image)."""
        name = self._chosen
        return name is not None and self._control.value == name and name in self._viewer.layers

    def choose(self, name: str) -> None:
        """Choose the output as the user does: a layer name stays; ``NEW_LAYER`` follows the image."""
        self._control.reset_choices()
        self._control.value = name
        self._chosen = None if name == NEW_LAYER else name

    def follow(self, image_layer) -> None:
        """The image changed: show its own output, unless the user chose one."""
        if self.chosen or image_layer is None:
            return
        self._chosen = None
        own = self._own_output(image_layer)
        self._control.reset_choices()
        self._control.value = own.name if own is not None else NEW_LAYER

    def write(self, image_layer, results: list, *, concept: str | None, instances: bool, replace: bool) -> list[int]:
        """Write ``image_layer``'s results into the output (see :func:`write_labels`); returns the new values."""
        output = output_layer(self._viewer, self._control.value, image_layer, concept)
        new = write_labels(output, results, concept=concept, instances=instances, replace=replace)
        self._written(image_layer, output)
        return new

    def _written(self, image_layer, output) -> None:
        """``output`` got ``image_layer``'s result: it is that image's own unless the user chose it."""
        if self.chosen:
            return
        self._made[id(image_layer)] = (weakref.ref(image_layer), weakref.ref(output))
        self._control.reset_choices()
        self._control.value = output.name

    def _own_output(self, image_layer) -> Any:
        image_ref, output_ref = self._made.get(id(image_layer), (lambda: None, lambda: None))
        output = output_ref()
        if image_ref() is not image_layer or output is None or output not in self._viewer.layers:
            return None
        return output

    def _on_user_choice(self, *_: Any) -> None:
        value = self._control.value
        self._chosen = None if value == NEW_LAYER else value
