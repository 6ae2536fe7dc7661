"""Large and multiscale images in the widget: tiles at native resolution, a chosen level, the visible region.

Issue 11: a multiscale layer once failed with "Result shape (512, 512) differs from the label
plane shape (2048, 2048)" (its smallest level was read), and large planes were shrunk to
SAM's input.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

import napari_clipsam as nc
from napari_clipsam._jobs import run
from napari_clipsam._qt.large_image_controls import TILES_CUSTOM, TILES_OFF
from napari_clipsam._qt.segment_widget import MODE_MANUAL, ClipSamWidget
from napari_clipsam._qt.settings import load_settings
from napari_clipsam._qt.viewport import _camera, _canvas_size
from napari_clipsam.inference.layers import iter_segment_layer_stack, iter_segment_plane, layer_plane, upsample_nearest
from napari_clipsam.inference.pipeline import SegmentOptions
from napari_clipsam.inference.predictor import ClipSamPredictor
from napari_clipsam.synthetic import generate_scene
from tests._qt.widget_helpers import TIMEOUT_S, BlockingEncoder, cancel_while_encoding, in_fresh_thread

SIZE = 640  # 2.5 times the tiny and the demo model's 256 px input: "auto" tiles it (5 x 5 tiles)


@pytest.fixture(scope="module")
def scene():
    return generate_scene(2_000_200, size=SIZE, kind="nuclei")


@pytest.fixture(scope="module")
def demo_model():
    return nc.load_model(preset="demo", device="cpu", precision="fp32")


def _pyramid(image: np.ndarray) -> list[np.ndarray]:
    return [image, image[::2, ::2], image[::4, ::4]]


def _docked(viewer, model) -> ClipSamWidget:
    widget = ClipSamWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.use_model(model)
    return widget


def _segment(widget, concept: str = "nucleus"):
    widget.set_concept(concept)
    widget.segment()
    return widget.wait(TIMEOUT_S)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


class _Stages:
    """The stages of the progress events the widget's jobs show (the status line and the bar)."""

    def __init__(self, widget) -> None:
        self.lines: list[str] = []
        jobs = widget._jobs
        original = jobs._on_progress

        def record(event) -> None:
            self.lines.append(event.stage)
            original(event)

        jobs._on_progress = record

    def tiles(self) -> set[str]:
        return {line.split(":")[0] for line in self.lines if line.startswith("tile ")}


def test_a_multiscale_layer_segments_at_full_resolution_in_tiles(viewer, demo_model, scene):
    viewer.add_image(_pyramid(scene.image), multiscale=True, name="pyramid")
    widget = _docked(viewer, demo_model)
    assert "DEMO model: generated scenes only" in widget._controls.status.value
    widget.set_image("pyramid")
    stages = _Stages(widget)
    result = _segment(widget)
    output = viewer.layers["pyramid nucleus"]
    assert output.data.shape == (SIZE, SIZE)  # level 0's, not the smallest level's
    assert stages.tiles() == {f"tile {i}/25" for i in range(1, 26)}
    assert result.tiles == 25 and "25 tile(s)" in widget._controls.status.value
    truth = scene.labels["nucleus"] > 0
    assert _iou(np.asarray(output.data) > 0, truth) >= 0.7  # objects where the nuclei are
    np.testing.assert_array_equal(result.labels, in_fresh_thread(nc.segment, scene.image, "nucleus", model=demo_model))


def test_the_synthetic_nuclei_sample_with_the_demo_model_gives_its_nuclei_apart(viewer, demo_model):
    """The plugin's 512 px sample, twice the demo model's input: "auto" reads it in tiles at its
    own size (the demo model must not shrink images), and touching nuclei come out as separate labels."""
    from napari_clipsam._sample_data import make_nuclei_sample
    from napari_clipsam.training.metrics import match_instances

    (image, image_kwargs, _), (truth, _, _) = make_nuclei_sample()
    viewer.add_image(image, **image_kwargs)
    widget = _docked(viewer, demo_model)
    widget.set_image(image_kwargs["name"])
    widget.set_options(instances=True)
    result = _segment(widget)
    labels = np.asarray(viewer.layers[f"{image_kwargs['name']} nucleus"].data)
    assert result.tiles == 16  # 128 px cores of the 512 px plane
    assert _iou(labels > 0, truth > 0) >= 0.8  # 0.87 with stage 10; 0.34 when shrunk to 256 px
    assert match_instances(labels, truth, 0.5).f1 >= 0.8  # 0.96 with stage 10


def test_a_coarser_level_gives_level_0_labels_and_takes_level_0_prompts(viewer, tiny_model, scene):
    viewer.add_image(_pyramid(scene.image), multiscale=True, name="pyramid", scale=(0.5, 0.5))
    widget = _docked(viewer, tiny_model)
    widget.set_image("pyramid")
    assert not widget._controls.large.level.native.isHidden()  # offered for multiscale images only
    widget.set_options(level=1)  # 320 px: one pass, no tiles
    result = _segment(widget)
    assert "resolution level 1" in widget._controls.status.value and result.tiles == 0
    expected = nc.segment(scene.image[::2, ::2], "nucleus", model=tiny_model)
    assert expected.any()
    np.testing.assert_array_equal(viewer.layers["pyramid nucleus"].data > 0, upsample_nearest(expected, (SIZE,) * 2))

    # The manual mode: a point in the layer's data coordinates (level 0) lands on the same spot of level 1.
    widget._controls.mode.value = MODE_MANUAL
    widget.set_concept("")
    widget.set_prompts(points=[[301, 201]])
    widget.segment()
    preview = widget.wait(TIMEOUT_S)
    expected = nc.segment(scene.image[::2, ::2], None, model=tiny_model, points=[[100.5, 150.5]])
    assert preview.labels.shape == (SIZE, SIZE)
    np.testing.assert_array_equal(preview.labels > 0, upsample_nearest(expected, (SIZE,) * 2) > 0)
    assert viewer.layers["clipsam preview"].data.shape == (SIZE, SIZE)
    # Scripts get the same from segment_layer at that level, prompts in level-0 coordinates too.
    layer = viewer.layers["pyramid"]
    labels, kwargs, _ = nc.segment_layer(layer, None, tiny_model, points=[[301, 201]], level=1)
    np.testing.assert_array_equal(labels > 0, preview.labels > 0)
    assert labels.shape == (SIZE, SIZE) and kwargs["scale"] == (0.5, 0.5)
    np.testing.assert_array_equal(nc.segment_layer(layer, "nucleus", tiny_model, level=1)[0] > 0,
                                  upsample_nearest(nc.segment(scene.image[::2, ::2], "nucleus", model=tiny_model),
                                                   (SIZE,) * 2) > 0)
    with pytest.raises(ValueError, match="resolution level"):
        nc.segment_layer(layer, "nucleus", tiny_model, level=3)


def test_all_slices_of_a_multiscale_stack_at_a_coarser_level(viewer, tiny_model, blobs_image):
    stack = np.stack([blobs_image, blobs_image[::-1], blobs_image[:, ::-1]])
    viewer.add_image([stack, stack[:, ::2, ::2]], multiscale=True, name="stack")
    widget = _docked(viewer, tiny_model)
    widget.set_image("stack")
    widget.set_options(all_slices=True, level=1)
    labels = _segment(widget)
    assert labels.shape == viewer.layers["stack nucleus"].data.shape == stack.shape
    expected = nc.segment(stack[:, ::2, ::2], "nucleus", model=tiny_model)
    np.testing.assert_array_equal(labels > 0, upsample_nearest(expected, stack.shape) > 0)
    layer = viewer.layers["stack"]
    np.testing.assert_array_equal(nc.segment_layer(layer, "nucleus", tiny_model, level=1)[0], labels)
    with pytest.raises(ValueError, match="level=0"):
        nc.segment_layer(layer, "nucleus", tiny_model, level=1, points=[[10, 10]])


def test_a_zarr_layer_is_segmented_tile_by_tile(viewer, tiny_model, scene):
    array = zarr.create_array(store={}, shape=(SIZE, SIZE), chunks=(128, 128), dtype=scene.image.dtype)
    array[:] = scene.image
    viewer.add_image(array, name="zarr")
    widget = _docked(viewer, tiny_model)
    widget.set_image("zarr")
    widget.set_options(instances=True, instance_method="components")
    stages = _Stages(widget)
    result = _segment(widget)
    assert stages.tiles() == {f"tile {i}/25" for i in range(1, 26)}
    expected = nc.segment(scene.image, "nucleus", model=tiny_model, instances=True, instance_method="components")
    assert expected.max() > 1
    np.testing.assert_array_equal(result.labels, expected)
    written = np.asarray(viewer.layers["zarr nucleus"].data)
    assert len(np.unique(written)) == len(np.unique(expected))


class _RecordingArray:
    """A numpy array that notes the size of every region read from it."""

    def __init__(self, array: np.ndarray) -> None:
        self._array, self.shape, self.dtype, self.ndim = array, array.shape, array.dtype, array.ndim
        self.reads: list[int] = []

    def __getitem__(self, key):
        part = self._array[key]
        self.reads.append(int(np.size(part)))
        return part


def test_a_large_level_is_read_tile_by_tile_never_whole(tiny_model, scene):
    level0 = _RecordingArray(scene.image)
    plane = layer_plane([level0, scene.image[::2, ::2]], multiscale=True, level=0)
    result = run(iter_segment_plane(ClipSamPredictor(tiny_model), plane, "nucleus"))
    assert result.tiles == 25 and len(level0.reads) == 25
    assert max(level0.reads) <= 256 * 256  # one tile with its halo: SAM's input


def test_cancel_between_tiles_keeps_the_users_labels(qtbot, viewer, tiny_model, scene, monkeypatch):
    viewer.add_image(scene.image, name="large")
    mine = np.zeros((SIZE, SIZE), np.uint32)
    mine[100:200, 100:300] = 7
    viewer.add_labels(mine.copy(), name="mine")
    widget = _docked(viewer, tiny_model)
    widget.set_image("large")
    widget.set_options(output="mine")
    encoder = BlockingEncoder(tiny_model, monkeypatch, call=3)  # the third tile's encoder
    widget.set_concept("nucleus")
    widget.segment()
    cancel_while_encoding(qtbot, widget, encoder)
    assert encoder.calls == 3  # stopped between tiles
    np.testing.assert_array_equal(viewer.layers["mine"].data, mine)

    # Run to the end: the user's labels stay, and the whole tiled write is one undo step.
    widget.segment()
    widget.wait(TIMEOUT_S)
    output = viewer.layers["mine"]
    assert (np.asarray(output.data)[mine > 0] == 7).all() and (np.asarray(output.data) > 7).any()
    output.undo()
    np.testing.assert_array_equal(output.data, mine)


def test_all_slices_read_plane_by_plane_cancel_and_one_undo_step(qtbot, viewer, tiny_model, blobs_image, monkeypatch):
    """Issue 11: "All slices" runs lazily plane by plane, with progress, cancel, and one undo step."""
    stack = np.stack([blobs_image, blobs_image[::-1], blobs_image[:, ::-1]])
    recording = _RecordingArray(stack)
    run(iter_segment_layer_stack(ClipSamPredictor(tiny_model), recording, "nucleus", SegmentOptions()))
    assert len(recording.reads) == 3 and max(recording.reads) == blobs_image.size  # one plane at a time

    array = zarr.create_array(store={}, shape=stack.shape, chunks=(1, 64, 64), dtype=stack.dtype)
    array[:] = stack
    viewer.add_image(array, name="zstack")
    mine = np.zeros(stack.shape, np.uint32)
    mine[1, 10:40, 10:60] = 9
    viewer.add_labels(mine.copy(), name="mine")
    widget = _docked(viewer, tiny_model)
    widget.set_image("zstack")
    widget.set_options(all_slices=True, output="mine")
    stages = _Stages(widget)
    encoder = BlockingEncoder(tiny_model, monkeypatch, call=2)  # the second plane's encoder
    widget.set_concept("nucleus")
    widget.segment()
    cancel_while_encoding(qtbot, widget, encoder)
    np.testing.assert_array_equal(viewer.layers["mine"].data, mine)  # nothing half-written

    widget.segment()
    widget.wait(TIMEOUT_S)
    assert {line.split(":")[0] for line in stages.lines if line.startswith("plane ")} == {
        f"plane {k}/3" for k in (1, 2, 3)}
    output = viewer.layers["mine"]
    written = np.asarray(output.data)
    assert (written[mine > 0] == 9).all()
    assert all((written[k] != mine[k]).any() for k in range(3))  # every plane got labels
    output.undo()  # the whole stack's write is one step
    np.testing.assert_array_equal(output.data, mine)


def _options(widget) -> SegmentOptions:
    controls = widget._controls
    return controls.options(controls.image.value, controls.kind(controls.image.value), "nucleus")


def test_the_tiles_control_reaches_the_pipeline_and_persists(tmp_path, monkeypatch, viewer, tiny_model, scene):
    path = tmp_path / "widget.json"
    monkeypatch.setenv("NAPARI_CLIPSAM_SETTINGS", str(path))
    viewer.add_image(scene.image, name="large")
    widget = _docked(viewer, tiny_model)
    widget.set_image("large")
    assert (_options(widget).tile_shape, _options(widget).halo) == ("auto", "auto")
    widget.set_options(halo=32)
    assert (_options(widget).tile_shape, _options(widget).halo) == ("auto", 32)
    widget.set_options(tiles="custom", tile_size=300, halo=0)
    assert (_options(widget).tile_shape, _options(widget).halo) == ((300, 300), "auto")
    assert _segment(widget).tiles == 9  # 300 px cores over 640 px: 3 x 3
    widget.set_options(tiles="off")
    assert _options(widget).tile_shape is None
    result = _segment(widget)
    assert result.tiles == 0 and "score" in widget._controls.status.value  # one pass, resized
    with pytest.raises(ValueError, match="auto, off, custom"):
        widget.set_options(tiles="sometimes")

    widget.set_options(tiles="custom", tile_size=448, halo=40)
    saved = load_settings()
    assert (saved.tiles, saved.tile_size, saved.tile_halo) == ("custom", 448, 40)
    assert json.loads(path.read_text())["tiles"] == "custom"
    again = ClipSamWidget(viewer)
    large = again._controls.large
    assert (large.tiles.value, large.tile_size.value, large.tile_halo.value) == (TILES_CUSTOM, 448, 40)
    large.tiles.value = TILES_OFF
    assert load_settings().tiles == "off"


def test_the_scale_control_reads_the_plane_smaller_and_persists(tmp_path, monkeypatch, viewer, tiny_model, scene):
    """Scale 2.5: the 640 px plane is read at 256 px, the model's input: one pass, labels at 640 px,
    the same as the pipeline's at that scale; the status says the scale."""
    path = tmp_path / "widget.json"
    monkeypatch.setenv("NAPARI_CLIPSAM_SETTINGS", str(path))
    viewer.add_image(scene.image, name="large")
    widget = _docked(viewer, tiny_model)
    widget.set_image("large")
    assert _options(widget).scale == "auto"
    widget.set_options(scale=2.5)
    assert _options(widget).scale == 2.5
    result = _segment(widget)
    assert result.labels.shape == (SIZE, SIZE) and result.tiles == 1 and result.scale == 2.5
    assert "read at scale 2.5" in widget._controls.status.value
    expected = nc.segment(scene.image, "nucleus", tiny_model, scale=2.5)
    np.testing.assert_array_equal(viewer.layers[-1].data > 0, expected > 0)
    with pytest.raises(ValueError, match="scale must be 0"):
        widget.set_options(scale=-1)
    assert load_settings().scale == 2.5
    assert ClipSamWidget(viewer)._controls.large.scale.value == 2.5


def test_an_object_diameter_alone_picks_the_scale_and_the_status_says_when_the_model_cannot(
        tmp_path, monkeypatch, viewer, tiny_model, scene):
    """Scale auto, no separate objects: a diameter of 100 px for a model that lists nuclei of 8-60 px
    reads the plane at 100 / sqrt(8 * 60); a model that lists no sizes reads it at 1 and says why."""
    monkeypatch.setenv("NAPARI_CLIPSAM_SETTINGS", str(tmp_path / "widget.json"))
    viewer.add_image(scene.image, name="large")
    widget = _docked(viewer, tiny_model)
    widget.set_image("large")
    widget.set_options(diameter=100)
    assert _options(widget) == SegmentOptions(diameter=100.0)
    monkeypatch.setattr(tiny_model, "concept_diameters", {"nucleus": (8.0, 60.0)})
    result = _segment(widget)
    picked = 100 / np.sqrt(8 * 60)
    assert result.scale == pytest.approx(picked)
    assert f"read at scale {result.scale:g}" in widget._controls.status.value
    expected = nc.segment(scene.image, "nucleus", tiny_model, diameter=100)
    np.testing.assert_array_equal(viewer.layers["large nucleus"].data > 0, expected > 0)
    monkeypatch.setattr(tiny_model, "concept_diameters", {})
    result = _segment(widget)
    assert result.scale == 1 and result.diameter_unused
    assert "object diameter not used" in widget._controls.status.value


def test_visible_region_only(qtbot, viewer, tiny_model, scene):
    viewer.add_image(scene.image, name="large")
    widget = _docked(viewer, tiny_model)
    widget.set_image("large")
    camera = _camera(viewer)
    camera.center = (200, 300)
    camera.zoom = _canvas_size(viewer)[0] / 150  # about 150 px tall
    widget.set_options(visible_only=True, tiles="off")
    widget.set_concept("nucleus")
    request = widget._make_request()
    rows, cols = request.region
    assert rows.start < 200 < rows.stop and cols.start < 300 < cols.stop
    assert rows.stop - rows.start < SIZE / 2
    result = _segment(widget)
    labels = np.asarray(viewer.layers["large nucleus"].data)
    outside = np.ones((SIZE, SIZE), bool)
    outside[rows, cols] = False
    assert not labels[outside].any()
    expected = nc.segment(scene.image[rows, cols], "nucleus", model=tiny_model, tile_shape=None)
    np.testing.assert_array_equal(result.labels[rows, cols], expected)
