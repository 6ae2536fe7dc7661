"""Generated fluorescence-microscopy-like scenes with instance ground truth per concept.

Four concepts that differ by shape, not by brightness (each scene draws every concept's
brightness from the same range): round `nucleus` blobs, thin `cell membrane` outlines
of a packed tissue, small `spot` puncta and rod-shaped `bacterium`. The same
(seed, size, kind) always gives the same arrays: every random draw comes from
``np.random.default_rng(seed)``. Plain numpy/scipy; about 15-30 ms per 256x256 scene on one CPU core.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy import ndimage

from .render import blob_intensity, membrane_intensity, smooth_noise, spot_intensity, to_uint8
from .shapes import (
    InstancePainter,
    Placement,
    Shape,
    capsule_field,
    ellipse_field,
    place,
    radius_along,
)

DEMO_CONCEPTS = ("nucleus", "cell membrane", "spot", "bacterium")
SCENE_KINDS = ("nuclei", "tissue", "bacteria", "mixed")

NUCLEUS_DIAMETER = (8.0, 60.0)  # px, the range scenes draw their nucleus sizes from
SPOT_DIAMETER = (5.0, 9.0)  # px
ROD_WIDTH = (5.0, 9.0)  # px
ROD_LENGTH = (15.0, 40.0)  # px, caps included
CELL_SPACING = (28.0, 52.0)  # px, the range a tissue's cell spacing (about a cell's diameter) comes from
# Each concept's object diameter (a rod's length, a cell's across its outline) as generated: the
# demo model's model.concept_diameters, which scale="auto" reads images to (inference/rescale.py).
CONCEPT_DIAMETERS = {"nucleus": NUCLEUS_DIAMETER, "cell membrane": CELL_SPACING, "spot": SPOT_DIAMETER,
                     "bacterium": ROD_LENGTH}
GAP = 2.0  # px kept free between objects that do not touch, and between concepts
_MIN_PIXELS = {"nucleus": 20, "cell membrane": 10, "spot": 8, "bacterium": 20}


@dataclass
class Scene:
    """One generated image and its ground truth.

    image: (H, W) uint8 fluorescence-like image, bright objects on a dark background.
    labels: concept -> (H, W) int32 instance labels (0 background, 1..n one per object);
        only the concepts present, each with at least one object; concepts never share
        a pixel.
    kind: which of ``SCENE_KINDS`` made it.
    """

    image: np.ndarray
    labels: dict[str, np.ndarray]
    kind: str


class _Canvas:
    """What a scene is built on: the random generator, the occupied pixels, the painters."""

    def __init__(self, rng: np.random.Generator, size: int):
        self.rng = rng
        self.size = size
        self.shape = (size, size)
        # Object counts are tuned for 256x256; larger images get proportionally more.
        self.area_scale = (size / 256.0) ** 2
        self.occupied = np.zeros(self.shape, dtype=bool)
        self.painters: dict[str, InstancePainter] = {}
        self.background = np.zeros(self.shape, dtype=np.float32)
        self.membrane: Optional[tuple[np.ndarray, np.ndarray, np.ndarray, float]] = None

    def painter(self, concept: str) -> InstancePainter:
        if concept not in self.painters:
            self.painters[concept] = InstancePainter(self.shape)
        return self.painters[concept]

    def count(self, low: float, high: float) -> int:
        """An object count drawn from [low, high) per 256x256, scaled to the image area."""
        return max(1, int(round(self.rng.uniform(low, high) * self.area_scale)))


def _nucleus_diameters(canvas: _Canvas) -> tuple[float, float]:
    """A scene's nucleus diameter range in px: narrow, somewhere within NUCLEUS_DIAMETER."""
    smallest, largest = NUCLEUS_DIAMETER[0], min(NUCLEUS_DIAMETER[1], canvas.size / 4)
    middle = np.exp(canvas.rng.uniform(np.log(smallest * 1.25), np.log(largest / 1.3)))
    return max(smallest, middle * 0.8), min(largest, middle * 1.3)


def _nucleus_proposer(canvas: _Canvas, diameters: tuple[float, float], squeeze: float):
    """Ellipses; against a parent, placed so that the two overlap by about `squeeze`."""
    low, high = diameters

    def propose(rng: np.random.Generator, parent: Optional[Shape]) -> Optional[Shape]:
        semi_major = rng.uniform(low, high) / 2
        semi_minor = semi_major * rng.uniform(0.7, 1.0)
        angle = rng.uniform(0.0, np.pi)
        if parent is None:
            center = tuple(rng.uniform(0.0, canvas.size, size=2))
        else:
            (row, column), parent_major, parent_minor, parent_angle = parent.params
            direction = rng.uniform(0.0, 2 * np.pi)
            reach = radius_along(parent_major, parent_minor, parent_angle, direction)
            reach += radius_along(semi_major, semi_minor, angle, direction + np.pi)
            distance = reach * (1.0 - rng.uniform(0.03, squeeze))
            center = (row + distance * np.sin(direction), column + distance * np.cos(direction))
            if not (0 <= center[0] < canvas.size and 0 <= center[1] < canvas.size):
                return None
        found = ellipse_field(center, semi_major, semi_minor, angle, canvas.shape, GAP)
        if found is None:
            return None
        params = (center, semi_major, semi_minor, angle)
        area = np.pi * semi_major * semi_minor
        return Shape(found[0], found[1], 1.0 + GAP / semi_minor, params, area)

    return propose


def _rod_proposer(canvas: _Canvas):
    """Capsules; against a parent, end to end (a dividing cell) or side by side."""

    def propose(rng: np.random.Generator, parent: Optional[Shape]) -> Optional[Shape]:
        width = rng.uniform(*ROD_WIDTH)
        length = rng.uniform(max(ROD_LENGTH[0], 2 * width), ROD_LENGTH[1])
        if parent is None:
            center = tuple(rng.uniform(0.0, canvas.size, size=2))
            angle = rng.uniform(0.0, np.pi)
        else:
            (row, column), parent_length, parent_width, parent_angle = parent.params
            along = np.array([np.sin(parent_angle), np.cos(parent_angle)])
            if rng.random() < 0.5:
                # Rotate about the parent's tip so the two touch whatever the new angle.
                end = 1.0 if rng.random() < 0.5 else -1.0
                tip = np.array([row, column]) + end * parent_length / 2 * along
                angle = parent_angle + rng.normal(0.0, 0.3)
                direction = np.array([np.sin(angle), np.cos(angle)])
                center = tuple(tip + end * (length / 2 - 0.8) * direction)
            else:
                side = 1.0 if rng.random() < 0.5 else -1.0
                across = np.array([np.cos(parent_angle), -np.sin(parent_angle)])
                offset = side * ((parent_width + width) / 2 - 0.8) * across
                shift = rng.uniform(-parent_length / 3, parent_length / 3) * along
                center = tuple(np.array([row, column]) + offset + shift)
                angle = parent_angle + rng.normal(0.0, 0.08)
            if not (0 <= center[0] < canvas.size and 0 <= center[1] < canvas.size):
                return None
        found = capsule_field(center, length, width, angle, canvas.shape, GAP)
        if found is None:
            return None
        area = width * (length - width) + np.pi * width * width / 4
        return Shape(found[0], found[1], 1.0 + GAP / (width / 2), (center, length, width, angle), area)

    return propose


def _spot_proposer(canvas: _Canvas):
    """Discs wholly inside the image."""

    def propose(rng: np.random.Generator, parent: Optional[Shape]) -> Optional[Shape]:
        radius = rng.uniform(*SPOT_DIAMETER) / 2
        center = tuple(rng.uniform(radius, canvas.size - radius, size=2))
        found = ellipse_field(center, radius, radius, 0.0, canvas.shape, GAP)
        if found is None:
            return None
        return Shape(found[0], found[1], 1.0 + GAP / radius, (center, radius), np.pi * radius**2)

    return propose


def _add_nuclei(canvas: _Canvas, target: int, touch_probability: float) -> None:
    diameters = _nucleus_diameters(canvas)
    propose = _nucleus_proposer(canvas, diameters, squeeze=0.15)
    placement = Placement(target, touch_probability, max_overlap=0.15)
    place(canvas.rng, canvas.painter("nucleus"), canvas.occupied, propose, placement)


def _add_rods(canvas: _Canvas, target: int, touch_probability: float) -> None:
    placement = Placement(target, touch_probability, max_overlap=0.2)
    place(canvas.rng, canvas.painter("bacterium"), canvas.occupied, _rod_proposer(canvas), placement)


def _add_spots(canvas: _Canvas, target: int) -> None:
    placement = Placement(target, 0.0, attempts_per_object=20)
    place(canvas.rng, canvas.painter("spot"), canvas.occupied, _spot_proposer(canvas), placement)


def _voronoi_cells(rng: np.random.Generator, size: int, spacing: float) -> np.ndarray:
    """(size, size) int32 Voronoi cells of jittered hexagonal seeds `spacing` px apart.

    Seeds also lie outside the image so that cells at its border are cut, not stretched.
    """
    pad = int(np.ceil(spacing))
    extent = size + 2 * pad
    rows = np.arange(spacing / 2, extent, spacing * np.sqrt(3) / 2)
    columns = np.arange(0.0, extent + spacing, spacing)
    seed_rows = np.repeat(rows, columns.size)
    seed_columns = (columns[None, :] + (np.arange(rows.size) % 2)[:, None] * spacing / 2).ravel()
    jitter = rng.uniform(-0.3 * spacing, 0.3 * spacing, size=(2, seed_rows.size))
    seed_rows = np.clip(np.rint(seed_rows + jitter[0]), 0, extent - 1).astype(np.intp)
    seed_columns = np.clip(np.rint(seed_columns + jitter[1]), 0, extent - 1).astype(np.intp)
    ids = np.zeros((extent, extent), dtype=np.int32)
    ids[seed_rows, seed_columns] = np.arange(1, seed_rows.size + 1, dtype=np.int32)
    nearest = ndimage.distance_transform_edt(ids == 0, return_distances=False, return_indices=True)
    cells = ids[nearest[0], nearest[1]][pad : pad + size, pad : pad + size]
    # Consecutive ids for the cells that show.
    _, cells = np.unique(cells, return_inverse=True)
    return (cells.reshape(size, size) + 1).astype(np.int32)


def _add_tissue(canvas: _Canvas, nucleus_probability: float) -> None:
    """Packed cells: their outlines as `cell membrane`, nuclei inside some of them."""
    rng = canvas.rng
    spacing = rng.uniform(CELL_SPACING[0], max(30.0, min(CELL_SPACING[1], canvas.size / 3)))
    cells = _voronoi_cells(rng, canvas.size, spacing)
    boundary = np.zeros(canvas.shape, dtype=bool)
    boundary[:, :-1] |= cells[:, :-1] != cells[:, 1:]
    boundary[:-1, :] |= cells[:-1, :] != cells[1:, :]
    distance = ndimage.distance_transform_edt(~boundary).astype(np.float32)
    half_width = rng.uniform(1.0, 1.5)  # lines about 3-4 px wide
    membrane = distance <= half_width
    canvas.occupied |= membrane
    canvas.membrane = (distance, cells, membrane, half_width)

    # Each cell's cytoplasm glows a little, at its own level.
    glow = rng.uniform(0.0, 0.08, size=cells.max() + 1).astype(np.float32)
    canvas.background += glow[cells]

    # A nucleus at the point of its cell farthest from the membrane, clear of it by GAP px.
    index = np.arange(1, cells.max() + 1)
    depths = ndimage.maximum(distance, cells, index)
    centers = ndimage.maximum_position(distance, cells, index)
    painter = canvas.painter("nucleus")
    largest = NUCLEUS_DIAMETER[1] / 2
    for cell, depth, center in zip(index, depths, centers):
        room = depth - half_width - GAP - 0.5
        if rng.random() >= nucleus_probability or room < NUCLEUS_DIAMETER[0] / 2:
            continue
        semi_major = min(room * rng.uniform(0.65, 0.95), largest)
        semi_major = max(semi_major, NUCLEUS_DIAMETER[0] / 2)
        semi_minor = max(semi_major * rng.uniform(0.7, 1.0), NUCLEUS_DIAMETER[0] / 2)
        angle = rng.uniform(0.0, np.pi)
        window, rho = ellipse_field(center, semi_major, semi_minor, angle, canvas.shape)
        allowed = (distance[window] > half_width + GAP) & (cells[window] == cell)
        area = np.pi * semi_major * semi_minor
        painter.paint(Shape(window, rho, 1.0, (center, semi_major, semi_minor, angle), area), allowed)
        canvas.occupied[window] |= (rho <= 1.0) & allowed


def _build(canvas: _Canvas, kind: str) -> None:
    """Place the objects of a scene of `kind`."""
    rng = canvas.rng
    if kind == "nuclei":
        # Packed: the target would cover about half the image.
        diameters = _nucleus_diameters(canvas)
        mean_area = np.pi / 4 * np.mean(diameters) ** 2
        target = int(rng.uniform(0.35, 0.6) * canvas.size**2 / mean_area)
        propose = _nucleus_proposer(canvas, diameters, squeeze=0.15)
        placement = Placement(min(target, int(250 * canvas.area_scale)), rng.uniform(0.55, 0.85))
        place(rng, canvas.painter("nucleus"), canvas.occupied, propose, placement)
        _add_spots(canvas, canvas.count(2, 10))
    elif kind == "tissue":
        _add_tissue(canvas, rng.uniform(0.5, 0.95))
        _add_spots(canvas, canvas.count(5, 25))
    elif kind == "bacteria":
        coverage = rng.uniform(0.08, 0.22)
        _add_rods(canvas, int(coverage * canvas.size**2 / 190.0), rng.uniform(0.3, 0.6))
        _add_spots(canvas, canvas.count(3, 15))
    elif kind == "mixed":
        _add_nuclei(canvas, canvas.count(3, 9), touch_probability=0.15)
        _add_rods(canvas, canvas.count(5, 20), rng.uniform(0.2, 0.4))
        _add_spots(canvas, canvas.count(5, 20))
    else:
        raise ValueError(f"unknown scene kind {kind!r}; choose one of {SCENE_KINDS}")


def _render(canvas: _Canvas) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The uint8 image and the instance labels of every concept that has objects."""
    rng = canvas.rng
    texture = smooth_noise(rng, canvas.shape, sigma=1.2)
    fluorophore = np.zeros(canvas.shape, dtype=np.float32)
    labels: dict[str, np.ndarray] = {}

    def brightness(count: int) -> np.ndarray:
        # Per scene a level for the concept, per object a spread around it: no concept can
        # be told apart by brightness alone.
        return (rng.uniform(0.45, 1.0) * rng.uniform(0.7, 1.3, size=count + 1)).astype(np.float32)

    if canvas.membrane is not None:
        distance, cells, membrane, half_width = canvas.membrane
        lines = membrane_intensity(distance, cells, half_width, brightness(int(cells.max())))
        fluorophore += lines * np.clip(1.0 + 0.3 * texture, 0.3, None)
        rings = np.where(membrane, cells, 0)
        present = np.bincount(rings.ravel()) >= _MIN_PIXELS["cell membrane"]
        present[0] = False
        if present.any():
            labels["cell membrane"] = (np.cumsum(present) * present).astype(np.int32)[rings]

    for concept in DEMO_CONCEPTS:
        painter = canvas.painters.get(concept)
        if painter is None or painter.count == 0:
            continue
        instances, keep = painter.finish(_MIN_PIXELS[concept])
        if not keep.any():
            continue
        labels[concept] = instances
        level = brightness(painter.count)
        if concept == "spot":
            fluorophore += spot_intensity(painter, keep, level)
        elif concept == "nucleus":
            grain = np.clip(1.0 + rng.uniform(0.1, 0.3) * texture, 0.2, None)
            fluorophore += grain * blob_intensity(
                painter, keep, level, rng.uniform(0.2, 0.5), rng.uniform(0.4, 0.7)
            )
        else:
            fluorophore += blob_intensity(
                painter, keep, level, rng.uniform(0.3, 0.6), rng.uniform(0.3, 0.6)
            )
    ordered = {concept: labels[concept] for concept in DEMO_CONCEPTS if concept in labels}
    return to_uint8(rng, fluorophore, canvas.background), ordered


def generate_scene(seed: int, size: int = 256, kind: Optional[str] = None) -> Scene:
    """One generated (size, size) scene of `kind` (one of SCENE_KINDS; None: drawn from seed).

    Deterministic: the same (seed, size, kind) gives the same arrays, and kind=None gives
    the scene that naming the drawn kind gives. `size` in px, at least 128 (64 works, with
    few objects).
    """
    if size < 64:
        raise ValueError(f"size must be at least 64 px, got {size}")
    if kind is not None and kind not in SCENE_KINDS:
        raise ValueError(f"unknown scene kind {kind!r}; choose one of {SCENE_KINDS}")
    rng = np.random.default_rng(seed)
    drawn = SCENE_KINDS[int(rng.integers(len(SCENE_KINDS)))]
    kind = drawn if kind is None else kind
    canvas = _Canvas(rng, int(size))
    _build(canvas, kind)
    image, labels = _render(canvas)
    return Scene(image=image, labels=labels, kind=kind)


def generate_scenes(count: int, seed: int = 0, size: int = 256) -> list[Scene]:
    """`count` scenes, kinds cycling through SCENE_KINDS, each from a seed derived from `seed`."""
    seeds = np.random.SeedSequence(seed).generate_state(max(count, 0), dtype=np.uint64)
    return [
        generate_scene(int(child), size, SCENE_KINDS[index % len(SCENE_KINDS)])
        for index, child in enumerate(seeds)
    ]


def class_map(scene: Scene, concepts: tuple[str, ...] = DEMO_CONCEPTS) -> np.ndarray:
    """(H, W) uint8 semantic map: 0 background, i + 1 where `concepts[i]` has an object."""
    classes = np.zeros(scene.image.shape, dtype=np.uint8)
    for index, concept in enumerate(concepts):
        if concept in scene.labels:
            classes[scene.labels[concept] > 0] = index + 1
    return classes
