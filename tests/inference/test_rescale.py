"""Reading an image at another scale: the pixel map, lazy reads, labels back at the image's size."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import zarr

import napari_clipsam as nc
from napari_clipsam.inference.pipeline import SegmentOptions
from napari_clipsam.inference.rescale import (
    ScaledImage,
    label_source,
    read_length,
    resolve_scale,
    scale_points,
    write_back,
)


class _Model:
    def __init__(self, diameters=None):
        self.concept_diameters = diameters or {}


@pytest.mark.parametrize("scale", [0, -1, float("nan"), float("inf"), "big", True, None])
def test_a_scale_that_means_nothing_is_refused(scale):
    with pytest.raises(ValueError, match="scale must be 'auto' or how many image pixels"):
        SegmentOptions(scale=scale)


def test_auto_brings_the_users_diameter_into_the_models_range():
    model = _Model({"nucleus": (8.0, 60.0), "spot": (5.0, 9.0)})
    assert resolve_scale("auto", None, model, "nucleus") == 1  # no diameter: the image's own pixels
    assert resolve_scale("auto", 30, model, "nucleus") == 1  # inside the range: unchanged
    assert resolve_scale("auto", 70, model, "nucleus") == 1  # near it (a rough estimate): unchanged
    # Outside it: to its middle (geometric mean), the concept spaced as the predictor reads it.
    assert resolve_scale("auto", 120, model, "  nucleus ") == pytest.approx(120 / np.sqrt(8 * 60))
    assert resolve_scale("auto", 2.5, model, "spot") == pytest.approx(2.5 / np.sqrt(5 * 9))  # enlarged
    assert resolve_scale("auto", 120, model, "bacterium") == 1  # no range listed for it
    assert resolve_scale("auto", 120, _Model(), "nucleus") == 1  # a model that lists none
    assert resolve_scale(1.5, 120, model, "nucleus") == 1.5  # a number is the scale itself


@pytest.mark.parametrize("scale", [2.0, 1.5, 0.5])
def test_a_read_samples_the_image_at_its_pixel_centres(scale):
    """A linear ramp (which neither the smoothing nor the interpolation changes) read at ``scale``
    has, away from the borders, the ramp's value where each read pixel's centre lies."""
    image = np.tile(np.arange(64, dtype=np.float32), (40, 1))  # value = column
    read = ScaledImage(image, scale, leading=0)[()]
    assert read.shape == (read_length(40, scale), read_length(64, scale))
    centres = (np.arange(read.shape[1]) + 0.5) * scale - 0.5
    inside = (centres > 6 * scale) & (centres < 63 - 6 * scale)
    np.testing.assert_allclose(read[:, inside], np.broadcast_to(centres[inside], read[:, inside].shape), atol=1e-4)


def test_a_shrunk_read_does_not_alias():
    """Stripes one pixel wide, read at half size, are their mean grey, not a pattern of their own."""
    image = np.zeros((64, 64), np.float32)
    image[::2] = 100.0
    read = ScaledImage(image, 2.0, leading=0)[()]
    assert read.shape == (32, 32)
    np.testing.assert_allclose(read[2:-2], 50.0, atol=1.0)


@pytest.mark.parametrize("scale", [2.0, 1.5, 3.0, 0.75])
def test_regions_read_the_same_pixels_as_the_whole(scale):
    """Tiles must see exactly the pixels of the whole read: the map is per pixel, not per region."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 4000, size=(2, 50, 37, 3), dtype=np.uint16)  # a stack of RGB-like planes
    read = ScaledImage(image, scale, leading=1)
    assert read.shape == (2, read_length(50, scale), read_length(37, scale), 3)
    whole = read[(1,)]
    assert whole.dtype == np.uint16 and whole.shape == read.shape[1:]
    height, width = read.shape[1:3]
    for rows in (slice(0, 7), slice(5, height), slice(3, 4)):
        for cols in (slice(0, width), slice(2, 9)):
            np.testing.assert_array_equal(read[(1, rows, cols)], whole[rows, cols])


def test_a_lazy_image_is_read_region_by_region():
    values = np.random.default_rng(1).normal(size=(400, 300)).astype(np.float32)
    lazy = da.from_array(values, chunks=(100, 100))
    asked = []

    class Recording:  # a lazy array that notes what is read of it
        shape = lazy.shape

        def __getitem__(self, key):
            asked.append(key)
            return lazy[key].compute()

    read = ScaledImage(Recording(), 4.0, leading=0)
    assert read.shape == (100, 75)
    region = read[(slice(10, 20), slice(0, 5))]
    np.testing.assert_array_equal(region, ScaledImage(values, 4.0, leading=0)[()][10:20, 0:5])
    (rows, cols), = asked
    assert rows.stop - rows.start < 60 and cols.stop - cols.start < 40  # the region and the filter's reach


@pytest.mark.parametrize("scale", [2.0, 2.5, 0.5])
def test_labels_come_back_at_the_images_size_band_by_band(scale, monkeypatch):
    from napari_clipsam.inference import rescale

    monkeypatch.setattr(rescale, "_BAND_ROWS", 7)  # several bands in a small image
    height, width = 45, 31
    small = np.arange(read_length(height, scale) * read_length(width, scale), dtype=np.int32)
    small = small.reshape(1, read_length(height, scale), read_length(width, scale))
    out = zarr.zeros((1, height, width), dtype=np.int32, chunks=(1, 10, 10))
    write_back(small, out, leading=1, scale=scale)
    rows, cols = label_source(height, scale, small.shape[1]), label_source(width, scale, small.shape[2])
    np.testing.assert_array_equal(out[0], small[0][np.ix_(rows, cols)])
    assert (np.diff(rows) >= 0).all()  # in the order of the image's pixels
    if scale >= 1:  # every read pixel's label reaches the image when it was shrunk (none lost)
        assert set(np.unique(out[0])) == set(small.ravel())
        assert rows[0] == 0 and rows[-1] == small.shape[1] - 1


def test_points_keep_pixel_centres():
    np.testing.assert_allclose(scale_points([[0.5, 1.5]], 2.0), [[0.0, 0.5]])
    np.testing.assert_allclose(scale_points([3.5, 3.5, 7.5, 9.5], 2.0), [1.5, 1.5, 3.5, 4.5])
    assert scale_points(None, 2.0) is None


@pytest.mark.parametrize("options", [
    dict(),
    dict(instances=True, instance_method="components", min_area=8),
    dict(points=np.array([[40.0, 30.0]]), point_labels=np.array([1])),
])
def test_segment_at_a_scale_is_the_pipeline_on_the_read_brought_back(tiny_model, blobs_image, options):
    """``scale=2`` is the same pipeline on the image read at half its size (prompts and sizes too),
    its labels then brought back to the image's pixels."""
    scale = 2.0
    read = ScaledImage(blobs_image, scale, leading=0)[()]
    inner = dict(options)
    if "points" in inner:
        inner["points"] = scale_points(inner["points"], scale)
    if "min_area" in inner:
        inner["min_area"] = 2  # 8 px of the image, 8 / 4 of the read
    expected = nc.segment(read, "blob", tiny_model, **inner)
    labels = nc.segment(blobs_image, "blob", tiny_model, scale=scale, **options)
    assert labels.shape == blobs_image.shape and labels.dtype == np.int32
    rows, cols = label_source(96, scale, read.shape[0]), label_source(128, scale, read.shape[1])
    np.testing.assert_array_equal(labels, expected[np.ix_(rows, cols)])


def test_a_scaled_stack_writes_into_the_callers_array(tiny_model, blobs_image):
    stack = np.stack([blobs_image, blobs_image[::-1]])
    out = zarr.zeros((2, 96, 128), dtype=np.int32, chunks=(1, 32, 32))
    returned = nc.segment(stack, "blob", tiny_model, scale=1.5, out=out)
    assert returned is out
    separately = [nc.segment(plane, "blob", tiny_model, scale=1.5) for plane in stack]
    np.testing.assert_array_equal(out[:], np.stack(separately))
    with pytest.raises(ValueError, match="out has shape"):
        nc.segment(stack, "blob", tiny_model, scale=1.5, out=np.zeros((2, 10, 10), np.int32))


def test_the_demo_model_lists_its_concepts_diameters():
    from napari_clipsam.synthetic.scenes import NUCLEUS_DIAMETER

    model = nc.load_model(preset="demo")
    assert set(model.concept_diameters) == set(model.concepts)
    assert model.concept_diameters["nucleus"] == NUCLEUS_DIAMETER


def test_a_scaled_job_stopped_early_writes_nothing(tiny_model, blobs_image):
    from napari_clipsam.inference.pipeline import iter_segment_stack
    from napari_clipsam.inference.predictor import ClipSamPredictor

    out = np.full(blobs_image.shape, 7, dtype=np.int32)  # labels the caller already had
    job = iter_segment_stack(ClipSamPredictor(tiny_model), blobs_image, "blob", options=SegmentOptions(scale=2),
                             out=out)
    next(job)  # the first stage has begun
    job.close()
    assert (out == 7).all()


@pytest.mark.parametrize("objects", [dict(), dict(instances=True, instance_method="components")])
def test_a_diameter_alone_picks_the_scale_for_a_model_that_lists_its_sizes(tiny_model, blobs_image, objects,
                                                                          monkeypatch):
    """Without seeded instances ``diameter`` only picks the scale: the text mask (or its components)
    is that of the scale it picks; a model that lists no sizes warns and reads the image's own pixels."""
    monkeypatch.setattr(tiny_model, "concept_diameters", {"blob": (6.0, 12.0)})
    picked = 40 / np.sqrt(6.0 * 12.0)
    labels = nc.segment(blobs_image, "blob", tiny_model, diameter=40, **objects)
    np.testing.assert_array_equal(labels, nc.segment(blobs_image, "blob", tiny_model, scale=picked, **objects))
    assert not np.array_equal(labels, nc.segment(blobs_image, "blob", tiny_model, **objects))  # it did change
    monkeypatch.setattr(tiny_model, "concept_diameters", {})
    with pytest.warns(UserWarning, match=r"diameter=40 picks the reading scale only for a model that lists"):
        unknown = nc.segment(blobs_image, "blob", tiny_model, diameter=40, **objects)
    np.testing.assert_array_equal(unknown, nc.segment(blobs_image, "blob", tiny_model, **objects))


def test_a_diameter_in_micrometres_becomes_the_images_pixels_by_its_pixel_size():
    from napari_clipsam.inference.rescale import diameter_in_pixels

    options = SegmentOptions(diameter=12.0, diameter_unit="µm")
    assert options.diameter_unit == "um"
    converted = diameter_in_pixels(options, {"Y": 0.5, "X": 0.5, "Z": 2.0}, "a.tif")
    assert (converted.diameter, converted.diameter_unit) == (24.0, "px")
    anisotropic = diameter_in_pixels(options, {"Y": 0.25, "X": 1.0}, "a.tif")  # the geometric mean, 0.5 µm
    assert anisotropic.diameter == pytest.approx(24.0)
    pixels = SegmentOptions(diameter=30.0)
    assert diameter_in_pixels(pixels, {}, "a.tif") == pixels  # pixels need no pixel size
    with pytest.raises(ValueError, match="a.tif gives no pixel size"):
        diameter_in_pixels(options, {"Z": 2.0}, "a.tif")
    with pytest.raises(ValueError, match="makes a diameter of 12 µm 0.034.* pixels"):
        diameter_in_pixels(options, {"Y": 352.8, "X": 352.8}, "a.tif")
    with pytest.raises(ValueError, match="diameter_unit must be 'px'"):
        SegmentOptions(diameter=12.0, diameter_unit="inch")


def test_an_array_refuses_a_diameter_in_micrometres(tiny_model, blobs_image):
    from napari_clipsam._jobs import run
    from napari_clipsam.inference.pipeline import iter_segment_stack
    from napari_clipsam.inference.predictor import ClipSamPredictor

    options = SegmentOptions(diameter=12.0, diameter_unit="um")
    with pytest.raises(ValueError, match="needs the image's pixel size, which an array does not carry"):
        run(iter_segment_stack(ClipSamPredictor(tiny_model), blobs_image, "blob", options=options))
