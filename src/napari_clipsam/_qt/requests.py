"""What the segmentation widget is asked to do, and how each request ended.

A request records what its result is computed from, so a result that arrives after the
user changed image, slice or concept is recognised as stale and dropped. Its
:class:`Outcome` is what :meth:`ClipSamWidget.wait` returns or raises.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..inference.layers import LayerPlane, layer_plane, leading_ndim, spatial_shape
from ..inference.pipeline import SegmentOptions

TEXT, MANUAL, STACK = "text", "manual", "stack"


class RequestError(ValueError):
    """A request that cannot run as the widget is set (no image, no concept, wrong output)."""


class NothingToSegment(RequestError):
    """The manual mode without prompts or concept: normal while the user is still clicking."""


class StaleResultError(RuntimeError):
    """The result no longer fits the widget (image, slice or concept changed), so it was not written."""


class Outcome:
    """How one request ended: its result, or the error that stopped it."""

    def __init__(self) -> None:
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None

    def succeed(self, result: Any) -> None:
        if not self.done:
            self.done, self.result = True, result

    def fail(self, error: BaseException) -> None:
        if not self.done:
            self.done, self.error = True, error


@dataclass
class SegmentRequest:
    """One segmentation asked for, with what it is computed from.

    Attributes:
        kind: ``"text"`` (concept only, one plane), ``"manual"`` (prompts, one plane, a
            preview) or ``"stack"`` (concept only, every plane).
        image_layer, data: the image layer and its data array when asked.
        plane: leading indices (z, t, ...) of the plane; () for a 2-D image and for stacks.
        concept: the normalised concept, or None.
        options: the pipeline options the result is computed with.
        replace: whether the result may overwrite existing labels.
        prompts: ``points``, ``point_labels``, ``box`` for :func:`iter_segment` (XY, XYXY).
        prompts_version: how often the prompts had been cleared or accepted when asked:
            a preview of prompts cleared since is out of date.
        level: the resolution level to read (multiscale layers; 0: full resolution).
        region: (rows, cols) of the level-0 plane to segment ("Visible region only"); None: all.
    """

    kind: str
    image_layer: Any
    data: Any
    plane: tuple[int, ...]
    concept: str | None
    options: SegmentOptions
    replace: bool = False
    prompts: dict[str, Any] = field(default_factory=dict)
    prompts_version: int = 0
    level: int = 0
    region: tuple[slice, slice] | None = None
    outcome: Outcome = field(default_factory=Outcome)

    @property
    def rgb(self) -> bool:
        return bool(getattr(self.image_layer, "rgb", False))

    @property
    def multiscale(self) -> bool:
        return bool(getattr(self.image_layer, "multiscale", False))

    def image_plane(self) -> LayerPlane:
        """The plane a one-plane request segments, read region by region at its level."""
        return layer_plane(self.data, rgb=self.rgb, multiscale=self.multiscale, plane=self.plane, level=self.level,
                           region=self.region)


def stale_reason(request: SegmentRequest, viewer, image_layer, concept: str | None,
                 prompts_version: int) -> str | None:
    """Why ``request``'s result no longer fits what the widget shows, or None when it still does.

    Args:
        image_layer: the image chosen now; concept: the normalised concept now.
        prompts_version: the widget's count of prompt clears and accepts now.
    """
    layer = request.image_layer
    if layer not in viewer.layers:
        return "the image layer was removed"
    if image_layer is not layer:
        return "another image was chosen"
    if layer.data is not request.data:
        return "the image data changed"
    if concept != request.concept:
        return "the concept changed"
    if request.kind != STACK and current_plane(viewer, layer) != request.plane:
        return "the slice changed"
    if request.kind == MANUAL and prompts_version != request.prompts_version:
        return "the prompts were cleared or accepted"
    return None


def current_plane(viewer, layer) -> tuple[int, ...]:
    """The leading data indices of the plane the viewer shows of ``layer``; () for 2-D images."""
    leading = leading_ndim(layer)
    if leading <= 0:
        return ()
    data_position = layer.world_to_data(viewer.dims.point)
    shape = spatial_shape(layer)
    return tuple(
        int(np.clip(round(float(c)), 0, size - 1)) for c, size in zip(data_position[:leading], shape[:leading])
    )
