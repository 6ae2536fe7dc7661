"""The controls for large images: tiles, the resolution level of a multiscale layer, the visible region.

- **Tiles** (saved with the other settings): ``Auto`` tiles a plane more than twice SAM's
  input (any plane larger than it with the demo model) at native resolution, ``Off``
  resizes the whole plane to the input, ``Custom`` uses **Tile size** as each tile's core;
  **Tile halo** is the context around a core (0: auto, a quarter of the input). See
  ``inference/tiling.py``.
- **Scale** (saved): image pixels per pixel the model reads, for objects larger (or smaller)
  than those the model was trained on (``inference/rescale.py``); 0 is auto: 1, or with an
  object diameter the scale that brings it into the diameters the model lists (the demo model's).
- **Resolution** (multiscale layers only, not saved: levels differ between images): the
  level to read, full resolution (level 0) by default.
- **Visible region only** (the text-only mode, one plane): segment only what the canvas shows.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from magicgui.widgets import CheckBox, ComboBox, FloatSpinBox, SpinBox

from ..inference.layers import level_shapes
from ..inference.tiling import AUTO
from .settings import WidgetSettings, save_settings

TILES_AUTO = "Auto"
TILES_OFF = "Off (resize to SAM's input)"
TILES_CUSTOM = "Custom size"
# The choices' words in WidgetSettings.tiles and in set_options(tiles=...).
TILE_CHOICES = {TILES_AUTO: "auto", TILES_OFF: "off", TILES_CUSTOM: "custom"}


def level_choices(layer) -> list[str]:
    """One entry per resolution level of an image layer, level 0 (full resolution) first."""
    if layer is None:
        return ["0"]
    rgb = bool(getattr(layer, "rgb", False))
    shapes = level_shapes(layer.data, bool(getattr(layer, "multiscale", False)), rgb)
    return [f"{level}: {shape[-2]} x {shape[-1]}{' (full)' if level == 0 else ''}"
            for level, shape in enumerate(shapes)]


class LargeImageControls:
    """Tiles, Resolution and Visible region only; they hold no state beyond their values.

    Args:
        image: the image layer chosen now (its levels are offered), or None.
    """

    def __init__(self, settings: WidgetSettings, image: Callable[[], Any]) -> None:
        self.tiles = ComboBox(label="Tiles", choices=list(TILE_CHOICES), value=TILES_AUTO)
        self.tiles.tooltip = (
            "Auto: planes more than twice SAM's input (with the demo model: larger than it) are "
            "segmented in overlapping tiles at native resolution. Off: the whole plane is resized to "
            "SAM's input (fast, loses small objects). Custom: tiles of the size below."
        )
        self.tile_size = SpinBox(label="Tile size (px)", min=16, max=100_000, step=64, value=512)
        self.tile_size.tooltip = "Each tile's core in pixels of the level read; the halo comes on top."
        self.tile_halo = SpinBox(label="Tile halo (px)", min=0, max=100_000, step=16, value=0)
        self.tile_halo.tooltip = (
            "Context read around each tile's core, in pixels; at least an object's diameter keeps objects "
            "on seams whole. 0 (auto): a quarter of SAM's input."
        )
        self.tile_halo.native.setSpecialValueText("auto")  # shown at 0
        self.scale = FloatSpinBox(label="Scale", min=0, max=64, step=0.25, value=0)
        self.scale.tooltip = (
            "Image pixels per pixel the model reads: 2 reads the image at half its size, for objects larger "
            "than those the model was trained on (the demo model: nuclei up to 60 px). 0 (auto): 1, or with "
            "an object diameter the scale that brings it into the diameters the model lists."
        )
        self.scale.native.setSpecialValueText("auto")  # shown at 0
        # Choices from the image each time: napari resets every widget's choices when layers change.
        self.level = ComboBox(label="Resolution", choices=lambda _widget: level_choices(image()))
        self.level.tooltip = "The level of the multiscale image to segment; labels come at full resolution."
        self.visible_only = CheckBox(text="Visible region only", value=False)
        self.visible_only.tooltip = "Segment only the part of the plane the canvas shows (text-only mode)."
        self._settings = settings
        self._restore(settings)
        for control, _ in self._saved:
            control.changed.connect(self._store)
        self.tiles.changed.connect(self.update_visibility)

    @property
    def widgets(self) -> list:
        return [self.tiles, self.tile_size, self.tile_halo, self.scale, self.level, self.visible_only]

    def tiling(self) -> tuple[Any, Any]:
        """``(tile_shape, halo)`` for :class:`SegmentOptions`."""
        halo = int(self.tile_halo.value) or AUTO
        word = TILE_CHOICES[self.tiles.value]
        if word == "off":
            return None, AUTO
        if word == "auto":
            return AUTO, halo
        size = int(self.tile_size.value)
        return (size, size), halo

    def chosen_scale(self) -> float | str:
        """``scale`` for :class:`SegmentOptions`: the number, or ``"auto"`` at 0."""
        return float(self.scale.value) or AUTO

    def chosen_level(self) -> int:
        return int(str(self.level.value).split(":")[0])

    def show_levels(self) -> None:
        """Offer the chosen image's levels; the level stays unless the image has no such level."""
        self.level.reset_choices()

    def set_options(self, *, tiles: str | None = None, tile_size: int | None = None, halo: int | None = None,
                    scale: float | None = None, level: int | None = None, visible_only: bool | None = None) -> None:
        """See :meth:`ClipSamWidget.set_options`: ``tiles`` is ``"auto"``, ``"off"`` or ``"custom"``; ``scale`` 0: auto."""
        if tiles is not None:
            names = {word: choice for choice, word in TILE_CHOICES.items()}
            if tiles not in names:
                raise ValueError(f"tiles must be one of {', '.join(names)}, got {tiles!r}.")
            self.tiles.value = names[tiles]
        if level is not None:
            choices = list(self.level.choices)
            if not 0 <= level < len(choices):
                raise ValueError(f"The image has {len(choices)} resolution level(s) (0 to {len(choices) - 1}), "
                                 f"not {level}.")
            self.level.value = choices[level]
        if scale is not None and not 0 <= scale <= self.scale.max:
            raise ValueError(f"scale must be 0 (auto) to {self.scale.max:g} image pixels per pixel read, got {scale}.")
        for control, value in ((self.tile_size, tile_size), (self.tile_halo, halo), (self.scale, scale),
                               (self.visible_only, visible_only)):
            if value is not None:
                control.value = value

    def update_visibility(self, *_: Any, layer=None, text_slice: bool | None = None) -> None:
        """Show what applies: tile size with custom tiles, halo unless off, levels of multiscale images."""
        word = TILE_CHOICES[self.tiles.value]
        self.tile_size.visible = word == "custom"
        self.tile_halo.visible = word != "off"
        if layer is not None:
            self.show_levels()
            self.level.visible = bool(getattr(layer, "multiscale", False))
        if text_slice is not None:
            self.visible_only.visible = text_slice

    @property
    def _saved(self) -> tuple[tuple[Any, str], ...]:
        """The controls whose values persist, each with its :class:`WidgetSettings` field."""
        return (self.tiles, "tiles"), (self.tile_size, "tile_size"), (self.tile_halo, "tile_halo"), (self.scale, "scale")

    def _restore(self, settings: WidgetSettings) -> None:
        """The saved tile options; a value the controls refuse (an edited file) keeps the default."""
        for control, name in self._saved:
            value = getattr(settings, name)
            try:
                if control is self.tiles:
                    value = {word: choice for choice, word in TILE_CHOICES.items()}[value]
                control.value = value
            except (KeyError, TypeError, ValueError) as err:
                logging.getLogger(__name__).warning("Ignoring the saved %s %r: %s", name, value, err)

    def _store(self, *_: Any) -> None:
        for control, name in self._saved:
            setattr(self._settings, name, TILE_CHOICES[control.value] if control is self.tiles else control.value)
        save_settings(self._settings)
