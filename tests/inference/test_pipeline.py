"""One segmentation pipeline: segment(), the CLI and the stack route give the same labels."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from scipy import ndimage

import napari_clipsam as nc
from napari_clipsam._jobs import run
from napari_clipsam._sample_data import synthetic_nuclei
from napari_clipsam.cli import main
from napari_clipsam.inference.instances import clicked_object, regions_holding, remove_small_labels
from napari_clipsam.inference.pipeline import SegmentOptions, iter_segment, iter_segment_stack, leading_ndim
from napari_clipsam.inference.prompts import inside_box
from tests.helpers import load_tiny, randomize_adapters

OPTIONS = dict(instances=True, instance_method="components", refine=True, min_area=20)
# Random weights score every mask 0 (unstable logits): a threshold of 0 keeps objects to compare.
SEEDS = dict(instances=True, instance_method="seeds", min_area=20, diameter=24, score_threshold=0.0)
MODEL_FLAGS = ["--sam", "tiny", "--clip", "tiny", "--sam-checkpoint", "none", "--clip-pretrained", "none",
               "--device", "cpu", "--precision", "fp32"]


@pytest.fixture(scope="module")
def nuclei() -> np.ndarray:
    image, _ = synthetic_nuclei(shape=(160, 160), n_nuclei=14, seed=2)
    return image


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)  # the CLI below builds the same base model from the same seed
    model = load_tiny()
    randomize_adapters(model, seed=3)
    return model


@pytest.fixture(scope="module")
def seeded(model, nuclei) -> np.ndarray:
    labels = nc.segment(nuclei, "nucleus", model=model, **SEEDS)
    assert labels.max() >= 1, "the test model finds no object to compare"
    return labels


@pytest.fixture(scope="module")
def reference(model, nuclei) -> np.ndarray:
    labels = nc.segment(nuclei, "nucleus", model=model, **OPTIONS)
    # A comparison of empty results would prove nothing.
    assert labels.max() >= 2, "the test model finds too few objects for a meaningful comparison"
    return labels


def test_instances_are_consecutive_and_at_least_min_area(reference):
    values, areas = np.unique(reference, return_counts=True)
    np.testing.assert_array_equal(values, np.arange(reference.max() + 1))
    assert areas[1:].min() >= OPTIONS["min_area"]


def test_refined_touching_objects_stay_apart(model, nuclei):
    """Refinement never merges objects (segment() once re-labelled connected components after it)."""
    predictor = nc.ClipSamPredictor(model)
    result = run(iter_segment(predictor, nuclei, "nucleus", options=SegmentOptions(**OPTIONS)))
    unrefined = run(iter_segment(predictor, nuclei, "nucleus", options=SegmentOptions(instances=True, instance_method="components", min_area=20)))
    assert unrefined.labels.max() >= 1
    # Refined objects touch here (fewer connected regions than objects), and keep their labels.
    _, regions = ndimage.label(result.labels > 0)
    assert regions < result.labels.max()
    np.testing.assert_array_equal(remove_small_labels(result.labels, OPTIONS["min_area"]), result.labels)


def _cli_labels(model, nuclei, tmp_path, *flags) -> np.ndarray:
    """The labels the CLI writes for the nuclei image with ``model``'s adapters and these instance flags."""
    source, output, adapters = tmp_path / "nuclei.tif", tmp_path / "labels.tif", tmp_path / "adapters.safetensors"
    tifffile.imwrite(source, nuclei)
    model.save_adapters(adapters)
    torch.manual_seed(0)
    argv = ["segment", str(source), "-c", "nucleus", "-o", str(output), "--instances", *flags, *MODEL_FLAGS,
            "--adapters", str(adapters)]
    assert main(argv) == 0
    return tifffile.imread(output)


def test_the_cli_gives_the_labels_of_segment(model, nuclei, reference, tmp_path):
    labels = _cli_labels(model, nuclei, tmp_path, "--instance-method", "components", "--refine", "--min-area", "20")
    np.testing.assert_array_equal(labels, reference)


def test_the_cli_gives_the_seeded_labels_of_segment(model, nuclei, seeded, tmp_path):
    # Seeds: the default method.
    labels = _cli_labels(model, nuclei, tmp_path, "--min-area", "20", "--diameter", "24", "--score-threshold", "0")
    np.testing.assert_array_equal(labels, seeded)


def test_seeded_instances_are_consecutive_and_planes_linked_or_numbered_after_each_other(model, nuclei, seeded):
    assert seeded.dtype == np.int32
    values, areas = np.unique(seeded, return_counts=True)
    np.testing.assert_array_equal(values, np.arange(seeded.max() + 1))
    assert areas[1:].min() >= SEEDS["min_area"]
    # The same plane twice: every object is one 3-D object (linked), or two without linking.
    linked = nc.segment(np.stack([nuclei, nuclei]), "nucleus", model=model, **SEEDS)
    np.testing.assert_array_equal(linked[0], seeded)
    np.testing.assert_array_equal(linked[1], seeded)
    labels = nc.segment(np.stack([nuclei, nuclei]), "nucleus", model=model, link_planes=False, **SEEDS)
    np.testing.assert_array_equal(labels[0], seeded)
    np.testing.assert_array_equal(labels[1], np.where(seeded > 0, seeded + seeded.max(), 0))


def test_seeded_objects_stay_inside_the_concepts_mask(model, nuclei, seeded):
    result = run(iter_segment(nc.ClipSamPredictor(model), nuclei, "nucleus", options=SegmentOptions(**SEEDS)))
    np.testing.assert_array_equal(result.labels, seeded)
    assert not (seeded[~result.mask]).any()


def test_the_users_positive_points_give_at_most_one_object_each(model, nuclei):
    predictor = nc.ClipSamPredictor(model)
    points = np.array([[40, 40], [120, 40], [80, 120], [5, 150]], dtype=float)  # XY
    events = []
    options = SegmentOptions(instances=True, score_threshold=0.9)  # the user's clicks are kept whatever the score
    result = run(iter_segment(predictor, nuclei, "nucleus", points, [1, 1, 1, 0], options=options), events.append)
    assert 1 <= result.labels.max() <= 3
    assert [event.stage for event in events][-1] == "separating objects"


def test_each_plane_of_a_stack_gives_the_labels_of_segment(model, nuclei, reference):
    stack = np.stack([nuclei, nuclei])
    labels = nc.segment(stack, "nucleus", model=model, **OPTIONS)
    assert labels.shape == stack.shape and labels.dtype == np.int32
    np.testing.assert_array_equal(labels[0], reference)
    # Plane 1's objects are the same 3-D objects; without linking, numbered after plane 0's.
    np.testing.assert_array_equal(labels[1], reference)
    unlinked = nc.segment(stack, "nucleus", model=model, link_planes=False, **OPTIONS)
    np.testing.assert_array_equal(unlinked[1], np.where(reference > 0, reference + reference.max(), 0))


def test_a_lazy_stack_is_read_plane_by_plane(model, nuclei, reference):
    class Planes:
        """An array-like that only hands out single planes (as dask/zarr reads would)."""

        shape, dtype, ndim = (2, *nuclei.shape), nuclei.dtype, 3
        reads: list = []

        def __getitem__(self, index):
            assert isinstance(index, tuple) and len(index) == 1, f"read more than a plane: {index}"
            self.reads.append(index)
            return nuclei

    predictor = nc.ClipSamPredictor(model)
    stack = Planes()
    labels = run(iter_segment_stack(predictor, stack, "nucleus", options=SegmentOptions(**OPTIONS)))
    assert stack.reads == [(0,), (1,)]
    np.testing.assert_array_equal(labels[0], reference)


def test_stack_progress_names_planes_and_semantic_labels_stay_zero_one(model, nuclei):
    predictor = nc.ClipSamPredictor(model)
    events = []
    labels = run(iter_segment_stack(predictor, np.stack([nuclei] * 3), "nucleus"), events.append)
    assert set(np.unique(labels)) <= {0, 1}
    assert {event.stage.split(":")[0] for event in events} == {"plane 1/3", "plane 2/3", "plane 3/3"}
    assert [event.done for event in events] == sorted(event.done for event in events)


@pytest.mark.parametrize(
    ("shape", "rgb", "expected"),
    [((5, 6), None, 0), ((5, 6, 3), None, 0), ((4, 5, 60), None, 1), ((2, 3, 50, 60, 3), None, 2),
     ((4, 50, 3), False, 1), ((50, 60, 3), True, 0)],
)
def test_leading_ndim(shape, rgb, expected):
    assert leading_ndim(shape, rgb) == expected


def test_bad_options_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="instances=True"):
        SegmentOptions(refine=True)
    with pytest.raises(ValueError, match="0 or more"):
        SegmentOptions(instances=True, min_area=-1)
    with pytest.raises(ValueError, match="'seeds'.*'components'"):
        SegmentOptions(instances=True, instance_method="watershed")
    for diameter in (0, -3, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="diameter"):
            SegmentOptions(instances=True, diameter=diameter)
    for threshold in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"score_threshold must be in \[0, 1\]"):
            SegmentOptions(instances=True, score_threshold=threshold)
    with pytest.raises(ValueError, match="score_threshold apply to objects: set instances=True"):
        SegmentOptions(diameter=20, score_threshold=0.7)
    with pytest.raises(ValueError, match="score_threshold applies to instance_method='seeds'"):
        SegmentOptions(instances=True, instance_method="components", score_threshold=0.3)
    # A diameter picks the scale at scale="auto", with or without objects; with a scale of the
    # user's own and no seeds it would do nothing.
    assert SegmentOptions(diameter=20).diameter == 20
    assert SegmentOptions(instances=True, instance_method="components", diameter=20).diameter == 20
    assert SegmentOptions(instances=True, diameter=20, scale=2).diameter == 20
    with pytest.raises(ValueError, match=r"diameter=20 .* with scale=2 and no seeded instances it would do nothing"):
        SegmentOptions(diameter=20, scale=2)
    with pytest.raises(ValueError, match="set scale='auto'"):
        SegmentOptions(instances=True, instance_method="components", diameter=20, scale=1)
    with pytest.raises(ValueError, match="instances=True"):
        nc.segment(np.zeros((8, 8)), "x", model=object(), instance_method="components")
    # Refinement applies to objects made either way.
    assert SegmentOptions(instances=True, instance_method="seeds", refine=True, diameter=12.5).diameter == 12.5
    with pytest.raises(ValueError, match="no 2-D plane"):
        leading_ndim((7,))


def test_a_click_keeps_the_regions_of_its_mask_that_hold_it_and_a_box_keeps_the_unclicked_ones(model, nuclei):
    predictor = nc.ClipSamPredictor(model)
    points, point_labels = np.array([[40.0, 40.0], [120.0, 100.0]]), [1, 0]
    clicked = run(iter_segment(predictor, nuclei, "nucleus", points, point_labels))
    raw = predictor.predict(point_coords=points, point_labels=point_labels)[0][0]
    expected = clicked_object(raw, points, point_labels)
    assert expected[40, 40] and expected.sum() < raw.sum()  # the random model's mask has parts apart from the click
    np.testing.assert_array_equal(clicked.mask, expected)
    np.testing.assert_array_equal(clicked.labels, expected)
    # A negative click inside the click's region takes away the part nearer it (clicks where the random
    # model's mask holds both in one region).
    corrected = np.array([[100.0, 50.0], [100.0, 40.0]])
    parted = run(iter_segment(predictor, nuclei, "nucleus", corrected, point_labels))
    raw = predictor.predict(point_coords=corrected, point_labels=point_labels)[0][0]
    held = regions_holding(raw, corrected[:1])
    assert held[50, 100] and held[40, 100] and not parted.mask[40, 100]
    assert parted.mask[50, 100] and parted.mask.sum() < held.sum()
    np.testing.assert_array_equal(parted.mask, clicked_object(raw, corrected, point_labels))
    # A box keeps the regions no click touches, inside it; only a negative click changes its mask.
    box = np.array([5.0, 5.0, 150.0, 150.0])
    boxed_clicks = np.array([[100.0, 40.0], [120.0, 40.0]])  # both on one region of the random model's box mask
    for prompts, labels in ((boxed_clicks[:1], [1]), (boxed_clicks, point_labels)):
        boxed = run(iter_segment(predictor, nuclei, "nucleus", prompts, labels, box))
        raw = predictor.predict(point_coords=prompts, point_labels=labels, box=box)[0][0]
        inside = inside_box(raw.shape, box)
        assert (raw & ~inside).any()  # the random model's mask spills out of the box, which bounds it
        unclicked = raw & ~regions_holding(raw, prompts) & inside
        assert unclicked.any() and boxed.mask[unclicked].all()
        np.testing.assert_array_equal(boxed.mask, clicked_object(raw, prompts, labels, keep_unclicked=True) & inside)
    assert raw[40, 120] and not boxed.mask[40, 120] and boxed.mask[40, 100]  # parted, as without the box
