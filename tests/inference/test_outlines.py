"""Objects of an outline concept (cell membranes): one outline per enclosed region."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

import napari_clipsam as nc
from napari_clipsam._jobs import run
from napari_clipsam.inference.basins import estimate_diameter
from napari_clipsam.inference.outlines import THIN, outline_objects
from napari_clipsam.inference.seeds import iter_mask_instances
from tests.inference.test_seeds import XX, YY, disc  # a 96 x 128 grid


def tissue(spacing: int = 24, width: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """A packed tissue of square cells: (H, W) bool lines `width` px wide every `spacing` px, and
    the (H, W) int cells they enclose (1..N, 0 on the lines)."""
    lines = ((YY % spacing) < width) | ((XX % spacing) < width)
    cells, _ = ndimage.label(~lines)
    return lines, cells


def test_each_enclosed_region_gets_its_outline():
    lines, cells = tissue()
    objects = outline_objects(lines)
    assert objects is not None and objects.dtype == np.int32
    np.testing.assert_array_equal(objects > 0, lines)
    assert objects.max() == cells.max() == 24  # 4 rows x 6 columns of cells, some cut by the image's edge
    for value in range(1, objects.max() + 1):
        outline = objects == value
        inside = np.unique(cells[ndimage.binary_dilation(outline) & (cells > 0)])
        assert len(inside) == 1  # an outline borders one cell: its own
        # ...and surrounds it: every pixel of the cell next to a line touches its outline.
        cell = cells == inside[0]
        rim = cell & ~ndimage.binary_erosion(cell, border_value=1)  # the image's edge is no line
        assert ndimage.binary_dilation(outline)[rim].all()
    # The 4 px line between two cells is shared: 2 px of it each.
    row = objects[36, 24:28]
    assert row[0] == row[1] != row[2] == row[3]
    left, right = (np.unique(cells[ndimage.binary_dilation(objects == value) & (cells > 0)]) for value in row[1:3])
    assert left.tolist() == [cells[36, 23]] and right.tolist() == [cells[36, 28]]


def test_min_area_drops_small_outlines():
    lines, _ = tissue()
    objects = outline_objects(lines)
    areas = np.bincount(objects.ravel())[1:]
    kept = outline_objects(lines, min_area=int(np.median(areas)) + 1)
    assert 0 < kept.max() < objects.max()
    assert np.bincount(kept.ravel())[1:].min() > np.median(areas)


def test_straight_fragments_of_line_do_not_make_the_lines_wide():
    # Pieces of line apart from the network (a model's broken lines) are elongated single regions:
    # the mask's object *length* (estimate_diameter) is theirs, 14 px, above THIN x the cells'
    # diameter (0.4 x 22); the lines are 4 px wide all the same.
    lines, cells = tissue()
    fragments = np.zeros_like(lines)
    for top, left in ((8, 30), (32, 54), (56, 78)):
        fragments[top:top + 3, left:left + 14] = True
    assert estimate_diameter(lines | fragments) > THIN * 2 * np.sqrt(400 / np.pi)
    objects = outline_objects(lines | fragments)
    assert objects is not None
    assert objects.max() == cells.max()
    np.testing.assert_array_equal(objects[lines] > 0, True)


@pytest.mark.parametrize("name", ["blobs", "a chain of blobs across the image", "few cells", "thick walls"])
def test_masks_that_are_not_outlines_are_left_to_the_seeds(name):
    if name == "blobs":
        mask = disc(30, 30, 12) | disc(30, 52, 11) | disc(70, 90, 14)
    elif name == "a chain of blobs across the image":  # touching nuclei that part the background in two
        mask = np.zeros(YY.shape, dtype=bool)
        for cx in range(0, 140, 18):
            mask |= disc(48, cx, 11)
    elif name == "few cells":  # a network with fewer enclosed regions than MIN_REGIONS
        mask = tissue(spacing=48)[0]
    else:  # lines as wide as the regions they part
        mask = tissue(spacing=24, width=14)[0]
    assert outline_objects(mask) is None
    assert outline_objects(np.zeros(YY.shape, bool)) is None and outline_objects(np.ones(YY.shape, bool)) is None


def test_the_seeded_instances_give_the_outlines_without_decoding(tiny_model, monkeypatch):
    lines, _ = tissue()
    predictor = nc.ClipSamPredictor(tiny_model)
    predictor.set_image(np.where(lines, 200, 30).astype(np.uint8))
    predictor.set_concept("cell membrane")

    def no_decoding(*_, **__):
        raise AssertionError("outlines need no seeds' clicks")

    monkeypatch.setattr(predictor, "predict_torch", no_decoding)
    labels = run(iter_mask_instances(predictor, lines, min_area=5))
    np.testing.assert_array_equal(labels, outline_objects(lines, min_area=5))
