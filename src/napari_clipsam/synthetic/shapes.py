"""Object shapes as normalised distance fields, and the instance painter that places them.

A shape is described by ``rho``, its normalised distance in a small window of the image:
``rho <= 1`` inside, ``rho == 1`` on the outline, growing outwards. Where two objects of
one concept overlap, each pixel goes to the object with the smaller ``rho`` (the nearer
centre, relative to size), so touching objects share a straight-ish contact and neither
swallows the other. Plain numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

Window = tuple[slice, slice]

# rho of the second-nearest object is kept only near its outline: the contact dip needs it
# there, and nowhere else.
_SECOND_REACH = 1.25


def _window(
    center: tuple[float, float], reach: float, shape: tuple[int, int]
) -> Optional[tuple[Window, np.ndarray, np.ndarray]]:
    """Square window of half-size `reach` px around `center`, clipped to `shape`.

    Returns (window, row offsets (h, 1), column offsets (1, w)) from the centre in px,
    or None where the window misses the image.
    """
    center_row, center_column = center
    top = max(int(np.floor(center_row - reach)), 0)
    bottom = min(int(np.ceil(center_row + reach)) + 1, shape[0])
    left = max(int(np.floor(center_column - reach)), 0)
    right = min(int(np.ceil(center_column + reach)) + 1, shape[1])
    if top >= bottom or left >= right:
        return None
    rows = (np.arange(top, bottom, dtype=np.float64) - center_row)[:, None]
    columns = (np.arange(left, right, dtype=np.float64) - center_column)[None, :]
    return (slice(top, bottom), slice(left, right)), rows, columns


def ellipse_field(
    center: tuple[float, float],
    semi_major: float,
    semi_minor: float,
    angle: float,
    shape: tuple[int, int],
    margin: float = 0.0,
) -> Optional[tuple[Window, np.ndarray]]:
    """Ellipse (px semi-axes, angle in rad from the column axis) as (window, rho (h, w) float64).

    The window reaches `margin` px beyond the ellipse; None where it misses the image.
    """
    found = _window(center, semi_major + margin + 1.0, shape)
    if found is None:
        return None
    window, rows, columns = found
    # float64 throughout: synthetic_nuclei's labels depend on exactly which pixels pass.
    cos, sin = np.cos(angle), np.sin(angle)
    along = (columns * cos + rows * sin) / semi_major
    across = (rows * cos - columns * sin) / semi_minor
    return window, np.sqrt(along * along + across * across)


def capsule_field(
    center: tuple[float, float],
    length: float,
    width: float,
    angle: float,
    shape: tuple[int, int],
    margin: float = 0.0,
) -> Optional[tuple[Window, np.ndarray]]:
    """Rod with round caps (total `length`, `width` in px) as (window, rho (h, w) float64).

    rho is the distance to the rod's axis segment in units of half the width.
    """
    found = _window(center, length / 2 + margin + 1.0, shape)
    if found is None:
        return None
    window, rows, columns = found
    cos, sin = np.cos(angle), np.sin(angle)
    half = max(length - width, 0.0) / 2
    along = columns * cos + rows * sin
    across = rows * cos - columns * sin
    beyond = along - np.clip(along, -half, half)
    return window, np.sqrt(beyond * beyond + across * across) / (width / 2)


def radius_along(semi_major: float, semi_minor: float, angle: float, direction: float) -> float:
    """Distance in px from an ellipse's centre to its outline in `direction` (rad)."""
    relative = direction - angle
    return float(1.0 / np.hypot(np.cos(relative) / semi_major, np.sin(relative) / semi_minor))


@dataclass
class Shape:
    """One candidate object: its field and what placing further objects next to it needs."""

    window: Window
    rho: np.ndarray  # (h, w) float64 normalised distance
    gap_rho: float  # rho at `gap` px outside the outline (at least; conservative)
    params: tuple  # shape parameters, read by the proposer that made it
    area: float  # nominal area in px^2


class InstancePainter:
    """Instance labels of one concept, painted object by object from rho fields.

    Keeps, per pixel, the label of the nearest object (smallest rho), that rho, and the
    second-smallest rho (for a darker contact line between touching objects).
    """

    def __init__(self, shape: tuple[int, int]):
        self.labels = np.zeros(shape, dtype=np.int32)
        self.rho = np.full(shape, np.inf, dtype=np.float32)
        self.second = np.full(shape, np.inf, dtype=np.float32)
        self.objects: list[Shape] = []

    @property
    def count(self) -> int:
        return len(self.objects)

    def paint(self, shape: Shape, allowed: Optional[np.ndarray] = None) -> None:
        """Add `shape` as the next label; `allowed` (h, w) bool limits where it may go."""
        rho = shape.rho if allowed is None else np.where(allowed, shape.rho, np.inf)
        window = shape.window
        best, second, labels = self.rho[window], self.second[window], self.labels[window]
        inside = rho <= 1.0
        closer = inside & (rho < best)
        near = np.where(rho <= _SECOND_REACH, rho, np.inf)
        # Where the new object wins, the old best becomes the second; elsewhere the new rho may.
        second[...] = np.where(closer, np.minimum(best, second), np.minimum(second, near))
        best[closer] = rho[closer]
        self.objects.append(shape)
        labels[closer] = self.count

    def overlaps(self, shape: Shape) -> np.ndarray:
        """Pixel counts of `shape`'s inside over each existing label, (count + 1,) int."""
        inside = shape.rho <= 1.0
        return np.bincount(self.labels[shape.window][inside], minlength=self.count + 1)

    def finish(self, min_pixels: int) -> tuple[np.ndarray, np.ndarray]:
        """Labels 1..n with objects under `min_pixels` px dropped, and the kept old labels.

        Returns (labels (H, W) int32, keep (old count + 1,) bool indexed by old label).
        """
        counts = np.bincount(self.labels.ravel(), minlength=self.count + 1)
        keep = counts >= min_pixels
        keep[0] = False
        new_label = np.cumsum(keep).astype(np.int32) * keep
        return new_label[self.labels], keep


Proposer = Callable[[np.random.Generator, Optional[Shape]], Optional[Shape]]


@dataclass
class Placement:
    """How objects of one concept are placed: how many, how often touching, how much overlap."""

    target: int  # objects wanted
    touch_probability: float  # chance that a new object is placed against an existing one
    max_overlap: float = 0.15  # most of either object's area an overlap may take
    attempts_per_object: int = 12


def place(
    rng: np.random.Generator,
    painter: InstancePainter,
    occupied: np.ndarray,
    propose: Proposer,
    placement: Placement,
) -> None:
    """Place up to `placement.target` objects from `propose` into `painter` and `occupied`.

    `propose(rng, parent)` makes a candidate against `parent` (an existing object) or, with
    parent None, anywhere. A free candidate must keep its gap to every labelled pixel; a
    touching one may overlap its own concept a little (within `max_overlap`) but must keep
    its gap to other concepts. `occupied` (H, W) bool marks every concept's pixels.
    """
    attempts = placement.attempts_per_object * max(placement.target, 1)
    for _ in range(attempts):
        if painter.count >= placement.target:
            break
        parent = None
        if painter.count and rng.random() < placement.touch_probability:
            parent = painter.objects[int(rng.integers(painter.count))]
        shape = propose(rng, parent)
        if shape is None:
            continue
        window = shape.window
        near = shape.rho <= shape.gap_rho
        own = painter.labels[window][near] > 0
        if (occupied[window][near] & ~own).any():
            continue  # too close to another concept
        if parent is None:
            if own.any():
                continue
        else:
            overlap = painter.overlaps(shape)[1:]
            if overlap.size and overlap.max() > 0:
                areas = np.array([other.area for other in painter.objects])
                limit = placement.max_overlap * np.minimum(areas, shape.area)
                if (overlap > limit).any():
                    continue
        painter.paint(shape)
        occupied[window] |= shape.rho <= 1.0


def touching_fraction(instances: np.ndarray) -> float:
    """Fraction of objects in (H, W) int `instances` that touch another (8-neighbourhood).

    Two objects touch where a pixel of one is next to a pixel of the other, diagonals
    included. No objects gives 0.0.
    """
    instances = np.asarray(instances)
    objects = np.unique(instances)
    objects = objects[objects != 0]
    if objects.size == 0:
        return 0.0
    pairs = (
        (instances[:, :-1], instances[:, 1:]),
        (instances[:-1, :], instances[1:, :]),
        (instances[:-1, :-1], instances[1:, 1:]),
        (instances[:-1, 1:], instances[1:, :-1]),
    )
    touching = []
    for first, second in pairs:
        contact = (first != second) & (first != 0) & (second != 0)
        touching += [first[contact], second[contact]]
    return float(np.unique(np.concatenate(touching)).size / objects.size)
