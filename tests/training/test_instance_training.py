"""Instance-aware training data, the "both" mode, and training a model from scratch (train_base)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_clipsam as nc
from napari_clipsam.training import engine as engine_module
from napari_clipsam.training.augment import augment
from napari_clipsam.training.config import TrainingConfig
from napari_clipsam.training.data import ConceptDataset, Sample, instance_objects
from napari_clipsam.training.engine import train
from napari_clipsam.training.evaluate import manual_prompts, touching_objects
from napari_clipsam.weights.adapters_file import read_adapters_metadata
from tests.helpers import load_tiny


def _touching_pair() -> tuple[np.ndarray, np.ndarray]:
    """A 64x64 image with two touching squares (labels 1 and 2) and a separate one (label 3)."""
    labels = np.zeros((64, 64), dtype=np.int32)
    labels[10:30, 10:25] = 1
    labels[10:30, 25:40] = 2  # shares an edge with 1
    labels[45:55, 45:55] = 3
    image = np.where(labels > 0, 200, 30).astype(np.uint8)
    return image, labels


def test_touching_objects_of_different_values_stay_apart():
    _, labels = _touching_pair()
    objects = instance_objects(labels)
    assert objects.dtype == np.int32 and objects.max() == 3
    for value in (1, 2, 3):  # each label value is exactly one object
        assert len(np.unique(objects[labels == value])) == 1
    assert len({int(objects[labels == v][0]) for v in (1, 2, 3)}) == 3


def test_semantic_labels_become_one_object_per_connected_part():
    semantic = np.zeros((40, 40), dtype=np.uint8)
    semantic[2:10, 2:10] = 1
    semantic[20:30, 20:30] = 1
    objects = instance_objects(semantic)
    assert objects.max() == 2
    assert objects[5, 5] != objects[25, 25] and objects[0, 0] == 0
    np.testing.assert_array_equal(instance_objects(semantic > 0), objects)


def test_a_layer_of_instance_labels_gives_one_sample_whose_objects_are_its_values():
    image, labels = _touching_pair()
    [sample] = ConceptDataset.from_arrays([(image, labels, "nucleus")])
    assert sample.object_labels().max() == 3
    np.testing.assert_array_equal(sample.mask, labels > 0)


def test_from_instance_labels_makes_a_sample_per_concept_present():
    image, labels = _touching_pair()
    empty = np.zeros_like(labels)
    dataset = ConceptDataset.from_instance_labels([(image, {"nucleus": labels, "spot": empty})], names=["scene"])
    [sample] = dataset
    assert sample.concept == "nucleus" and sample.source == "scene"
    assert sample.image.shape == (64, 64, 3) and sample.object_labels().max() == 3
    with pytest.raises(ValueError, match="scene: the nucleus labels have shape"):
        ConceptDataset.from_instance_labels([(image, {"nucleus": labels[:10]})], names=["scene"])


def test_samples_know_the_pixels_of_the_images_other_concepts():
    """``others`` is what a concept is known not to be: the other concepts' labels in the same
    image (all of them for an absent concept); a single-concept label image knows nothing."""
    image, labels = _touching_pair()
    spots = np.zeros_like(labels)
    spots[40:44, 5:9] = 1
    dataset = ConceptDataset.from_instance_labels([(image, {"nucleus": labels, "spot": spots})],
                                                  absent=("bacterium",))
    by_concept = {sample.concept: sample for sample in dataset}
    np.testing.assert_array_equal(by_concept["nucleus"].others, spots > 0)
    np.testing.assert_array_equal(by_concept["spot"].others, labels > 0)
    np.testing.assert_array_equal(by_concept["bacterium"].others, (labels > 0) | (spots > 0))
    # Label values mapped to concepts: a concept's other values are not "others", other concepts' are.
    mapped = ConceptDataset.from_arrays([(image, labels, {1: "nucleus", 2: "nucleus", 3: "spot"})])
    assert [sample.concept for sample in mapped] == ["nucleus", "nucleus", "spot"]
    for sample in mapped[:2]:
        np.testing.assert_array_equal(sample.others, labels == 3)
    np.testing.assert_array_equal(mapped[2].others, (labels == 1) | (labels == 2))
    [single] = ConceptDataset.from_arrays([(image, labels, "nucleus")])
    assert single.others is None


def test_augmentation_moves_objects_with_the_image_and_mask():
    image, labels = _touching_pair()
    sample = Sample(np.repeat(image[..., None], 3, axis=-1), labels > 0, "nucleus", "", instance_objects(labels))
    rng = np.random.default_rng(0)
    for index in range(30):
        view = augment(sample, index, rng, True)
        np.testing.assert_array_equal(view.objects > 0, view.mask)
        np.testing.assert_array_equal(view.image[..., 0] == 200, view.mask)
    # Another concept's pixels (here: the image's dark corner) move with them.
    others = np.zeros(labels.shape, dtype=bool)
    others[:6, :9] = True
    rgb = np.repeat(image[..., None], 3, axis=-1)
    rgb[..., 1] = np.where(others, 255, 0)
    sample = Sample(rgb, labels > 0, "nucleus", "", instance_objects(labels), others)
    cropped = 0
    for index in range(30):
        view = augment(sample, index, rng, True)
        np.testing.assert_array_equal(view.image[..., 1] == 255, view.others)
        np.testing.assert_array_equal(view.image[..., 0] == 200, view.mask)
        cropped += view.key is None
    assert cropped > 0  # crops were among the transforms


def test_both_mode_trains_on_whole_concepts_and_on_single_objects(monkeypatch):
    image, labels = _touching_pair()
    dataset = ConceptDataset.from_arrays([(image, labels, "thing")])
    targets = []
    original = engine_module.target_in_frame
    monkeypatch.setattr(engine_module, "target_in_frame", lambda mask, *a: targets.append(mask) or original(mask, *a))
    train(load_tiny(), dataset, None, TrainingConfig(mode="both", steps=12, augment=False, seed=3))
    whole = [t for t in targets if np.array_equal(t, labels > 0)]
    single = [t for t in targets if len(np.unique(labels[t])) == 1 and t.sum() in (300, 100)]
    assert whole and single and len(whole) + len(single) == 12


def test_lone_clicks_are_one_positive_click_inside_the_object_and_nothing_else():
    _, labels = _touching_pair()
    target = labels == 2
    rng = np.random.default_rng(0)
    for _ in range(20):
        coords, point_labels, box = manual_prompts(target, rng, lone_click_probability=1.0)
        assert box is None and point_labels.tolist() == [1] and coords.shape == (1, 2)
        x, y = coords[0].astype(int)
        assert target[y, x]
    # A share between 0 and 1 mixes them with the usual prompts (a box half the time, several clicks).
    drawn = [manual_prompts(target, rng, lone_click_probability=0.5) for _ in range(200)]
    lone = sum(box is None and labels_.tolist() == [1] for _, labels_, box in drawn)
    assert 80 <= lone <= 140 and any(box is not None for *_, box in drawn)


def test_no_lone_click_share_draws_exactly_the_earlier_prompts():
    """Share 0 draws no extra random number: earlier training runs (the demo model's stages) replay."""
    _, labels = _touching_pair()
    first, second = np.random.default_rng(7), np.random.default_rng(7)
    for _ in range(10):
        plain, shared = manual_prompts(labels == 1, first), manual_prompts(labels == 1, second, lone_click_probability=0.0)
        for a, b in zip(plain, shared):
            assert (a is None and b is None) or np.array_equal(a, b)


def test_touching_objects_are_the_neighbours_within_reach_not_the_target_nor_far_ones():
    _, labels = _touching_pair()
    assert np.array_equal(touching_objects(labels, labels == 1), labels == 2)
    assert np.array_equal(touching_objects(labels, labels == 2), labels == 1)
    assert not touching_objects(labels, labels == 3).any()


def test_neighbour_negatives_lie_on_the_touching_object_and_the_positives_on_the_target():
    _, labels = _touching_pair()
    target = labels == 1
    rng = np.random.default_rng(0)
    for _ in range(60):
        coords, point_labels, _ = manual_prompts(target, rng, objects=labels, neighbour_negative_probability=1.0)
        x, y = coords.astype(int).T
        assert (point_labels == 1).any() and (point_labels == 0).any()  # at least one negative, always
        assert target[y[point_labels == 1], x[point_labels == 1]].all()
        assert (labels[y[point_labels == 0], x[point_labels == 0]] == 2).all()
    # Without touching objects (label 3 stands alone) the negatives are drawn as before: outside the target.
    for _ in range(20):
        coords, point_labels, _ = manual_prompts(labels == 3, rng, objects=labels, neighbour_negative_probability=1.0)
        if point_labels is not None and (point_labels == 0).any():
            x, y = coords[point_labels == 0].astype(int).T
            assert not (labels[y, x] == 3).any()
    # A share between 0 and 1: about that share of the usual prompts has a negative on the neighbour.
    drawn = [manual_prompts(target, rng, objects=labels, neighbour_negative_probability=0.5) for _ in range(300)]
    hard = sum(any(labels[int(y), int(x)] == 2 for (x, y), lab in zip(c, pl) if lab == 0) for c, pl, _ in drawn)
    assert 110 <= hard <= 190


def test_no_neighbour_negative_share_draws_exactly_the_earlier_prompts():
    _, labels = _touching_pair()
    first, second = np.random.default_rng(5), np.random.default_rng(5)
    for _ in range(10):
        plain = manual_prompts(labels == 1, first, lone_click_probability=0.3)
        shared = manual_prompts(labels == 1, second, lone_click_probability=0.3, objects=labels,
                                neighbour_negative_probability=0.0)
        for a, b in zip(plain, shared):
            assert (a is None and b is None) or np.array_equal(a, b)


def _prompts_drawn_in_training(monkeypatch, **config) -> list:
    """The (points, labels, box) of each step of 10 manual-mode steps on the touching pair."""
    image, labels = _touching_pair()
    dataset = ConceptDataset.from_arrays([(image, labels, "thing")])
    prompts = []
    original = engine_module.check_prompts
    monkeypatch.setattr(engine_module, "check_prompts", lambda *a: prompts.append(a) or original(*a))
    train(load_tiny(), dataset, None, TrainingConfig(mode="manual", steps=10, augment=False, seed=3, **config))
    assert len(prompts) == 10
    return prompts


def test_training_puts_negatives_on_the_neighbours_at_the_configured_share(monkeypatch):
    _, labels = _touching_pair()
    on_the_pair = 0
    for coords, point_labels, _ in _prompts_drawn_in_training(monkeypatch, neighbour_negative_share=1.0):
        x, y = coords.astype(int).T
        clicked = labels[y[point_labels == 1], x[point_labels == 1]]
        assert len(set(clicked.tolist())) == 1
        if clicked[0] != 3:  # the touching pair: every negative on the other one of the two
            negatives = labels[y[point_labels == 0], x[point_labels == 0]]
            assert len(negatives) and set(negatives.tolist()) == {3 - clicked[0]}
            on_the_pair += 1
    assert on_the_pair >= 3  # seed 3 draws the pair 5 times of 10
    with pytest.raises(ValueError, match="neighbour_negative_share"):
        TrainingConfig(neighbour_negative_share=1.5)


def test_training_draws_lone_clicks_at_the_configured_share(monkeypatch):
    prompts = _prompts_drawn_in_training(monkeypatch, lone_click_share=1.0)
    assert all(box is None and point_labels.tolist() == [1] for _, point_labels, box in prompts)


def test_box_only_prompts_are_the_objects_box_and_no_click():
    _, labels = _touching_pair()
    target = labels == 2
    ys, xs = np.nonzero(target)
    rng = np.random.default_rng(0)
    for _ in range(10):
        coords, point_labels, box = manual_prompts(target, rng, box_only_probability=1.0)
        assert coords is None and point_labels is None
        np.testing.assert_array_equal(box, [xs.min(), ys.min(), xs.max(), ys.max()])
    # Lone clicks come first; a share between 0 and 1 mixes box-only prompts with the usual ones.
    assert manual_prompts(target, rng, lone_click_probability=1.0, box_only_probability=1.0)[2] is None
    drawn = [manual_prompts(target, rng, box_only_probability=0.5) for _ in range(200)]
    alone = sum(coords is None and box is not None for coords, _, box in drawn)
    assert 80 <= alone <= 120 and all(coords is not None for coords, _, _ in drawn if box is None)
    # Share 0 draws exactly the earlier prompts (no extra random number).
    first, second = np.random.default_rng(5), np.random.default_rng(5)
    for _ in range(10):
        plain = manual_prompts(target, first, lone_click_probability=0.3)
        shared = manual_prompts(target, second, lone_click_probability=0.3, box_only_probability=0.0)
        for a, b in zip(plain, shared):
            assert (a is None and b is None) or np.array_equal(a, b)


def test_training_draws_box_only_prompts_at_the_configured_share(monkeypatch):
    prompts = _prompts_drawn_in_training(monkeypatch, box_only_share=1.0)
    assert all(coords is None and point_labels is None and box is not None for coords, point_labels, box in prompts)
    with pytest.raises(ValueError, match="box_only_share"):
        TrainingConfig(box_only_share=-0.1)


def test_training_from_scratch_changes_every_part_and_saves_every_weight(tmp_path):
    image, labels = _touching_pair()
    dataset = ConceptDataset.from_arrays([(image, labels, "thing")])
    torch.manual_seed(0)
    model = load_tiny()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    text_before = model.text_embedding("thing").clone()
    output = tmp_path / "scratch.safetensors"
    train(model, dataset, dataset, TrainingConfig(mode="both", steps=3, augment=False, learning_rate=1e-3,
                                                  eval_every=3, train_base=True), output=output)
    changed = {name.split(".")[0] + "." + name.split(".")[1] for name, p in model.named_parameters()
               if not torch.equal(p.detach(), before[name])}
    # SAM's backbone and both CLIP towers trained, not only adapters and the decoder.
    assert {"sam.image_encoder", "sam.mask_decoder", "clip.visual", "clip.transformer"} <= changed
    # Cached text embeddings were dropped when the text tower changed.
    assert not torch.allclose(model.text_embedding("thing"), text_before)
    assert read_adapters_metadata(output)["weights"] == "all"

    # The file alone turns a freshly initialised model of that architecture into the trained one.
    torch.manual_seed(123)
    reloaded = load_tiny(adapters=output)
    assert reloaded.concepts == ("thing",)
    # Every weight, buffers included (SAM's random Fourier features of prompt positions).
    for name, weight in reloaded.state_dict().items():
        torch.testing.assert_close(weight, model.state_dict()[name])
    masks = []
    for candidate in (model, reloaded):
        predictor = nc.ClipSamPredictor(candidate)
        predictor.set_image(image)
        predictor.set_concept("thing")
        masks.append(predictor.predict()[2])
    np.testing.assert_allclose(masks[0], masks[1], atol=1e-4)


def test_half_precision_files_of_every_weight_load_into_a_float32_model(tmp_path):
    torch.manual_seed(0)
    model = load_tiny()
    path = model.save_adapters(tmp_path / "half.safetensors", concepts=["a"], every_weight=True,
                               dtype=torch.float16)
    reloaded = load_tiny(adapters=path)
    for name, weight in reloaded.state_dict().items():
        if weight.is_floating_point():
            assert weight.dtype == torch.float32
            torch.testing.assert_close(weight, model.state_dict()[name].half().float())


def test_absent_concepts_give_empty_samples_trained_and_scored_in_the_text_mode(monkeypatch):
    image, labels = _touching_pair()
    dataset = ConceptDataset.from_instance_labels([(image, {"nucleus": labels})], absent=["nucleus", "spot"])
    assert [(s.concept, bool(s.mask.any())) for s in dataset] == [("nucleus", True), ("spot", False)]
    seen = []
    original = engine_module._training_prompts

    def recording(model, view, *args):
        prompts = original(model, view, *args)
        seen.append((bool(view.mask.any()), prompts[1], prompts[3]))
        return prompts

    monkeypatch.setattr(engine_module, "_training_prompts", recording)
    result = train(load_tiny(), dataset, dataset, TrainingConfig(mode="manual", steps=8, augment=False, eval_every=8))
    empty = [(boxes, target) for present, boxes, target in seen if not present]
    assert empty and all(boxes is None and not target.any() for boxes, target in empty)  # text mode, nothing to find
    assert result.best.per_concept["spot"]["count"] == 1  # scored as text only: no object to click


def test_the_similarity_maps_loss_is_weighted_as_configured():
    image, labels = _touching_pair()
    dataset = ConceptDataset.from_arrays([(image, labels, "thing")])
    model = load_tiny()
    losses = {}
    for weight in (0.0, 1.0, 2.5):
        # lr 0: the same weights, seed and prompts each time, so only the weighting differs.
        config = TrainingConfig(mode="text", steps=1, augment=False, learning_rate=0.0, eval_every=1, patience=0,
                                train_base=True, similarity_weight=weight, gradient_checkpointing=False)
        losses[weight] = train(model, dataset, None, config).losses[0]
    map_loss = losses[1.0] - losses[0.0]
    assert map_loss > 1e-4  # a random map is far from the mask
    assert losses[2.5] - losses[0.0] == pytest.approx(2.5 * map_loss, rel=1e-3)
    with pytest.raises(ValueError, match="similarity_weight"):
        TrainingConfig(similarity_weight=-1.0)


def test_neighbour_weight_weighs_the_concepts_other_objects_in_the_manual_mode_only(monkeypatch):
    """The pixels a click's mask must not take (the touching neighbour) weigh more; the text
    mode, whose target is every object, is unchanged."""
    image, labels = _touching_pair()
    dataset = ConceptDataset.from_instance_labels([(image, {"nucleus": labels})])
    others = []
    original = engine_module._training_prompts

    def recording(model, view, *args):
        prompts = original(model, view, *args)
        others.append((view.mask, prompts[3], prompts[4]))
        return prompts

    monkeypatch.setattr(engine_module, "_training_prompts", recording)
    losses = {}
    model = load_tiny()
    for mode in ("manual", "text"):
        for weight in (1.0, 4.0):
            # lr 0: the same weights, seed and prompts each time, so only the weighting differs.
            config = TrainingConfig(mode=mode, steps=1, augment=False, learning_rate=0.0, eval_every=1, patience=0,
                                    neighbour_weight=weight)
            losses[mode, weight] = train(model, dataset, None, config).losses[0]
    for mask, target, other in others:
        assert not (target & other).any() and ((target | other) == mask).all()
    assert any(other.any() for _, _, other in others)  # the manual mode's neighbour
    assert abs(losses["manual", 4.0] - losses["manual", 1.0]) > 1e-5
    assert losses["text", 4.0] == pytest.approx(losses["text", 1.0], abs=1e-7)
    with pytest.raises(ValueError, match="neighbour_weight"):
        TrainingConfig(neighbour_weight=-1.0)


def test_other_concept_weight_weighs_the_pixels_of_the_images_other_concepts():
    """The loss changes with the weight where the image is labelled with another concept, in
    both modes, and not where it is labelled with one concept only."""
    image, labels = _touching_pair()
    spots = np.zeros_like(labels)
    spots[36:60, 4:28] = 1  # large and bright, unlike the background
    image = np.where(spots > 0, 120, image).astype(np.uint8)
    two = ConceptDataset.from_instance_labels([(image, {"nucleus": labels, "spot": spots})])
    two = ConceptDataset([sample for sample in two if sample.concept == "nucleus"])
    one = ConceptDataset.from_instance_labels([(image, {"nucleus": labels})])
    model = load_tiny()
    losses = {}
    for name, dataset in (("two", two), ("one", one)):
        for mode in ("manual", "text"):
            for weight in (1.0, 5.0):
                # lr 0: the same weights, seed and prompts each time, so only the weighting differs.
                config = TrainingConfig(mode=mode, steps=1, augment=False, learning_rate=0.0, eval_every=1,
                                        patience=0, other_concept_weight=weight)
                losses[name, mode, weight] = train(model, dataset, None, config).losses[0]
    for mode in ("manual", "text"):
        assert abs(losses["two", mode, 5.0] - losses["two", mode, 1.0]) > 1e-5
        assert losses["one", mode, 5.0] == pytest.approx(losses["one", mode, 1.0], abs=1e-7)
    with pytest.raises(ValueError, match="other_concept_weight"):
        TrainingConfig(other_concept_weight=float("nan"))
