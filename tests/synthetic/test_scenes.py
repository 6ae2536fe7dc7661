"""Generated scenes: determinism, shapes, ground truth that the metrics can trust."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_clipsam.synthetic import (
    DEMO_CONCEPTS,
    SCENE_KINDS,
    class_map,
    generate_scene,
    generate_scenes,
    touching_fraction,
)
from napari_clipsam.synthetic.scenes import NUCLEUS_DIAMETER, ROD_LENGTH, SPOT_DIAMETER


@pytest.fixture(scope="module")
def scenes():
    """Four seeds of every kind at 192x192 px."""
    return {kind: [generate_scene(seed, 192, kind) for seed in range(4)] for kind in SCENE_KINDS}


def _equivalent_diameters(instances: np.ndarray, away_from_border: bool = True) -> np.ndarray:
    """Diameter in px of the disc with each object's area; objects cut by the border left out."""
    counts = np.bincount(instances.ravel())[1:]
    present = np.flatnonzero(counts) + 1
    if away_from_border:
        edge = np.unique(np.concatenate([instances[0], instances[-1], instances[:, 0], instances[:, -1]]))
        present = np.setdiff1d(present, edge)
    return 2 * np.sqrt(counts[present - 1] / np.pi)


def test_same_seed_gives_same_arrays():
    for kind in (None, *SCENE_KINDS):
        first, second = generate_scene(7, 160, kind), generate_scene(7, 160, kind)
        assert first.kind == second.kind
        np.testing.assert_array_equal(first.image, second.image)
        assert first.labels.keys() == second.labels.keys()
        for concept in first.labels:
            np.testing.assert_array_equal(first.labels[concept], second.labels[concept])
    assert not np.array_equal(generate_scene(1, 160, "nuclei").image, generate_scene(2, 160, "nuclei").image)


def test_kind_drawn_from_seed_matches_naming_it():
    drawn = generate_scene(3, 128)
    named = generate_scene(3, 128, drawn.kind)
    np.testing.assert_array_equal(drawn.image, named.image)
    assert {generate_scene(seed, 128).kind for seed in range(24)} == set(SCENE_KINDS)


def test_types_shapes_and_instance_numbering(scenes):
    for kind, made in scenes.items():
        for scene in made:
            assert scene.kind == kind
            assert scene.image.shape == (192, 192) and scene.image.dtype == np.uint8
            assert scene.image.max() > 200 and scene.image.min() < 30  # uses the range
            assert set(scene.labels) <= set(DEMO_CONCEPTS) and scene.labels
            for instances in scene.labels.values():
                assert instances.shape == (192, 192) and instances.dtype == np.int32
                # 1..n, every label used.
                np.testing.assert_array_equal(np.unique(instances), np.arange(instances.max() + 1))
                assert instances.max() >= 1


def test_concepts_never_share_a_pixel(scenes):
    for made in scenes.values():
        for scene in made:
            covered = sum((instances > 0).astype(int) for instances in scene.labels.values())
            assert covered.max() == 1
            classes = class_map(scene)
            for index, concept in enumerate(DEMO_CONCEPTS):
                if concept in scene.labels:
                    np.testing.assert_array_equal(classes == index + 1, scene.labels[concept] > 0)


def test_kinds_hold_their_concepts(scenes):
    expected = {
        "nuclei": {"nucleus"},
        "tissue": {"cell membrane", "nucleus"},
        "bacteria": {"bacterium"},
        "mixed": {"nucleus", "bacterium"},
    }
    seen = set()
    for kind, made in scenes.items():
        for scene in made:
            assert expected[kind] <= set(scene.labels), kind
            assert "bacterium" not in scene.labels or kind in {"bacteria", "mixed"}
            assert "cell membrane" not in scene.labels or kind == "tissue"
            seen |= set(scene.labels)
    assert seen == set(DEMO_CONCEPTS)


def test_nuclei_scenes_are_packed_and_touching():
    for seed in range(6):
        nuclei = generate_scene(seed, 256, "nuclei").labels["nucleus"]
        assert touching_fraction(nuclei) >= 0.3, seed
        # Touching, yet each nucleus is one piece: none was cut in two by its neighbours.
        for index, piece in enumerate(ndimage.find_objects(nuclei), start=1):
            _, pieces = ndimage.label(nuclei[piece] == index)
            assert pieces == 1


def test_sizes_stay_in_their_ranges(scenes):
    diameters = {concept: [] for concept in DEMO_CONCEPTS}
    for made in scenes.values():
        for scene in made:
            for concept, instances in scene.labels.items():
                diameters[concept].append(_equivalent_diameters(instances))
    nuclei = np.concatenate(diameters["nucleus"])
    # A touching nucleus gives some pixels to its neighbours, so allow a little below 8 px.
    assert nuclei.min() >= NUCLEUS_DIAMETER[0] - 2.5 and nuclei.max() <= NUCLEUS_DIAMETER[1]
    assert np.ptp(nuclei) > 15  # scenes pick different sizes
    spots = np.concatenate(diameters["spot"])
    assert spots.min() >= SPOT_DIAMETER[0] - 1.5 and spots.max() <= SPOT_DIAMETER[1] + 1.5
    rods = np.concatenate(diameters["bacterium"])
    assert rods.max() <= 2 * np.sqrt(9 * ROD_LENGTH[1] / np.pi) + 1


def test_membranes_are_thin_rings_and_nuclei_keep_clear():
    for seed in range(3):
        scene = generate_scene(seed, 192, "tissue")
        membrane = scene.labels["cell membrane"] > 0
        # Lines 3-4 px wide: hardly a membrane pixel lies over 2.5 px inside (junctions do).
        depth = ndimage.distance_transform_edt(membrane)[membrane]
        assert (depth > 2.5).mean() < 0.02 and np.median(depth) <= 1.5
        assert 0.05 < membrane.mean() < 0.35
        grown = ndimage.binary_dilation(scene.labels["nucleus"] > 0, iterations=2)
        assert not (grown & membrane).any()


def test_spots_stand_alone(scenes):
    for made in scenes.values():
        for scene in made:
            if "spot" not in scene.labels:
                continue
            others = np.zeros(scene.image.shape, dtype=bool)
            for concept, instances in scene.labels.items():
                if concept != "spot":
                    others |= instances > 0
            grown = ndimage.binary_dilation(scene.labels["spot"] > 0, iterations=1)
            assert not (grown & others).any()
            assert touching_fraction(scene.labels["spot"]) == 0.0


def test_bacteria_touch_some_of_the_time():
    fractions = [touching_fraction(generate_scene(seed, 192, "bacteria").labels["bacterium"])
                 for seed in range(4)]
    assert 0.1 < np.mean(fractions) < 0.95


def test_generate_scenes_cycles_kinds_deterministically():
    made = generate_scenes(5, seed=4, size=128)
    assert [scene.kind for scene in made] == [*SCENE_KINDS, SCENE_KINDS[0]]
    again = generate_scenes(5, seed=4, size=128)
    for first, second in zip(made, again):
        np.testing.assert_array_equal(first.image, second.image)
    assert not np.array_equal(made[0].image, made[4].image)
    assert generate_scenes(0) == []


@pytest.mark.parametrize("size", [64, 128, 300])
def test_other_sizes(size):
    for kind in SCENE_KINDS:
        scene = generate_scene(0, size, kind)
        assert scene.image.shape == (size, size)
        assert all(instances.shape == (size, size) for instances in scene.labels.values())


def test_bad_arguments():
    with pytest.raises(ValueError, match="kind"):
        generate_scene(0, 128, "galaxies")
    with pytest.raises(ValueError, match="size"):
        generate_scene(0, 32)


def test_touching_fraction_on_hand_made_labels():
    instances = np.zeros((6, 8), dtype=np.int32)
    instances[0:2, 0:2] = 1
    instances[2:4, 2:4] = 2  # diagonal neighbour of 1
    instances[0:2, 5:7] = 3  # alone
    instances[4:6, 4:6] = 4  # diagonal neighbour of 2
    assert touching_fraction(instances) == pytest.approx(3 / 4)
    assert touching_fraction(np.zeros((4, 4), dtype=np.int32)) == 0.0
    instances[2:4, 2:4] = 0
    assert touching_fraction(instances) == 0.0
