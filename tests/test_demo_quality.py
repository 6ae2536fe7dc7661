"""The shipped demo model segments held-out generated scenes well, end to end.

A few scenes from the seeds ``benchmarks/bench_quality.py`` starts at (2,000,000: neither
training nor validation sees them), through the public API. The thresholds sit below the
figures the shipped file gives on these scenes (see docs/quality.md), so float noise of
another CPU or torch build cannot fail them, while a broken model file, text path,
decoder or instance method does.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import napari_clipsam as nc
from napari_clipsam._jobs import run
from napari_clipsam.inference.instances import interior_point
from napari_clipsam.inference.neighbours import iter_prompted_object
from napari_clipsam.inference.prompts import box_from_mask
from napari_clipsam.inference.seeds import iter_mask_instances
from napari_clipsam.synthetic import SCENE_KINDS, generate_scene
from napari_clipsam.training.evaluate import touching_objects
from napari_clipsam.training.metrics import click_quality, cross_overlap, match_instances, pooled_f1, semantic_iou

FIRST_SEED = 2_000_000  # as bench_quality.py: scene i of kind k has seed FIRST_SEED + 4 * i + k
SCENES_PER_KIND = 2

# Measured on these scenes with the shipped file (2026-11-28, the fifteenth training stage):
# text IoU per concept 0.65 to 0.78, worst cross overlap 0.65, seeds F1 0.97 against
# components 0.20 (0.82 before seeds and basins followed the mask's logits, 2026-11-28), a click's IoU 0.61 with 0.32 of its mask outside, a box's alone 0.53
# with 0.28 (stage 12: 0.20 with 0.78), both as ``predict()`` gives them; tenth stage: 0.62
# to 0.75, 0.67, 0.81 against 0.20, 0.59 with 0.28; ninth: 0.62 to 0.74, 0.74, 0.80 against 0.20, 0.59 with 0.27; seventh:
# 0.60 to 0.70, 0.69, 0.82 against 0.20, 0.58 with 0.29; each concept alone (``predict()``),
# not competing; a click's as ``predict()`` gives it. Most are below the
# issue's targets (see docs/quality.md); the thresholds keep a margin below them, so a
# broken file, text path, decoder or instance method fails (a model that masks everything
# covers other concepts wholly, a random one scores near 0; instances painted from the
# seeds' masks alone, before the basins, gave F1 0.56 here).
MIN_TEXT_IOU = 0.52
MAX_CROSS_OVERLAP = 0.80
MIN_SEEDS_F1 = 0.85
MIN_SEEDS_GAIN = 0.40  # seeds F1 minus connected-components F1
MIN_DEPTH_GAIN = 0.07  # seeds F1 minus that of seeds on the mask's distance transform alone (0.97 and 0.82)
MIN_CLICK_IOU = 0.48
MAX_CLICK_OUTSIDE = 0.40
MIN_VIEWS_GAIN = 0.005  # mean text IoU over the concepts, 8 views minus one (0.736 against 0.724 here)
# Rods and outlines from text alone, seeds (the default) on the first two held-out "bacteria" and
# "tissue" scenes (2026-11-29): bacteria 0.48 (components 0.31; 0.17 here when the seeds
# were a rod's width apart), cell outlines 0.33 (components 0.00; seeded 0.001 on selection scenes before).
MIN_ROD_F1 = 0.38
MIN_OUTLINE_F1 = 0.25
MIN_BOX_IOU = 0.40  # the box of a nucleus, spot or bacterium alone, no click
MAX_BOX_OUTSIDE = 0.45


@pytest.fixture(scope="module")
def demo_model():
    # The file is package data: missing, it is a packaging error and fails here.
    return nc.load_model(preset="demo", device="cpu", precision="fp32")


def _scenes(kinds=SCENE_KINDS, count=SCENES_PER_KIND):
    for index in range(count):
        for offset, kind in enumerate(SCENE_KINDS):
            if kind in kinds:
                yield generate_scene(FIRST_SEED + index * len(SCENE_KINDS) + offset, size=256, kind=kind)


@pytest.fixture(scope="module")
def text_masks(demo_model):
    """(scene, {concept: text-only mask}, predictor with the scene set) per held-out scene."""
    results = []
    for scene in _scenes():
        predictor = nc.ClipSamPredictor(demo_model)
        predictor.set_image(scene.image)
        masks = {}
        for concept in scene.labels:
            predictor.set_concept(concept)
            masks[concept] = predictor.predict()[0][0]
        results.append((scene, masks, predictor))
    return results


def test_the_demo_model_knows_the_generated_concepts(demo_model):
    assert set(demo_model.concepts) == {"nucleus", "cell membrane", "spot", "bacterium"}


def test_text_alone_segments_each_concept(text_masks):
    ious: dict[str, list[float]] = {}
    for scene, masks, _ in text_masks:
        for concept, mask in masks.items():
            ious.setdefault(concept, []).append(semantic_iou(mask, scene.labels[concept] > 0))
    means = {concept: float(np.mean(values)) for concept, values in ious.items()}
    assert set(means) == {"nucleus", "cell membrane", "spot", "bacterium"}
    assert all(value >= MIN_TEXT_IOU for value in means.values()), means


def test_one_concept_does_not_take_another(text_masks):
    overlaps: dict[tuple[str, str], list[float]] = {}
    for scene, masks, _ in text_masks:
        for first in masks:
            for second in masks:
                if first != second:
                    overlaps.setdefault((first, second), []).append(
                        cross_overlap(masks[first], scene.labels[second] > 0, scene.labels[first] > 0))
    means = {pair: float(np.mean(values)) for pair, values in overlaps.items()}
    assert means and max(means.values()) <= MAX_CROSS_OVERLAP, means


def _worst_overlap_and_mean_iou(scenes_and_masks) -> tuple[float, float]:
    overlaps: dict[tuple[str, str], list[float]] = {}
    ious: dict[str, list[float]] = {}
    for scene, masks in scenes_and_masks:
        for first in masks:
            ious.setdefault(first, []).append(semantic_iou(masks[first], scene.labels[first] > 0))
            for second in masks:
                if first != second:
                    overlaps.setdefault((first, second), []).append(
                        cross_overlap(masks[first], scene.labels[second] > 0, scene.labels[first] > 0))
    return max(np.mean(v) for v in overlaps.values()), float(np.mean([np.mean(v) for v in ious.values()]))


def test_the_other_concepts_competing_take_back_what_one_concept_took(demo_model, text_masks):
    """nc.segment's default ("auto": the model's four concepts compete for each region) against each
    concept alone. On these scenes (2026-11-27, stage 12): worst overlap 0.69 -> 0.49 (bacterium on
    nuclei), mean text IoU 0.722 -> 0.728; stage 15 (2026-11-28): 0.65 -> 0.31, 0.727 -> 0.744."""
    competing = [(scene, {concept: nc.segment(scene.image, concept, demo_model, predictor=predictor) > 0
                          for concept in masks}) for scene, masks, predictor in text_masks]
    alone_worst, alone_iou = _worst_overlap_and_mean_iou((scene, masks) for scene, masks, _ in text_masks)
    worst, iou = _worst_overlap_and_mean_iou(competing)
    assert worst <= 0.85 * alone_worst and iou >= alone_iou - 0.02, (worst, alone_worst, iou, alone_iou)


def test_the_flips_and_turns_average_out_errors(demo_model, text_masks):
    """The text-only logits averaged over the image's 8 views (the default for the demo model on one image)
    against one view, each concept alone. On these scenes (2026-11-28, stage 15): nucleus 0.762 -> 0.742,
    spot 0.703 -> 0.724, cell membrane 0.651 -> 0.671, bacterium 0.779 -> 0.806 (held out, 25 scenes per
    kind: every concept gains, docs/quality.md)."""
    assert demo_model.auto_augment  # "auto" averages for the demo model
    one, eight = {}, {}
    for scene, masks, predictor in text_masks:
        for concept, mask in masks.items():
            truth = scene.labels[concept] > 0
            one.setdefault(concept, []).append(semantic_iou(mask, truth))
            averaged = nc.segment(scene.image, concept, demo_model, predictor=predictor, other_concepts=None,
                                  augment=True) > 0
            eight.setdefault(concept, []).append(semantic_iou(averaged, truth))
    gain = np.mean([np.mean(v) for v in eight.values()]) - np.mean([np.mean(v) for v in one.values()])
    assert gain >= MIN_VIEWS_GAIN, (gain, one, eight)


def test_touching_nuclei_are_kept_apart(demo_model, text_masks):
    """Seeds (the default) against connected components of the same mask, and against seeds and
    basins on the mask alone: the decoder's mask fills the necks between small touching nuclei,
    its logits still dip there."""
    scores = {"seeds": [], "components": [], "mask alone": []}
    for scene, _, predictor in text_masks:
        if scene.kind != "nuclei":
            continue
        truth = scene.labels["nucleus"]
        for method in ("seeds", "components"):
            labels = nc.segment(scene.image, "nucleus", demo_model, instances=True, instance_method=method,
                                predictor=predictor)
            scores[method].append(match_instances(labels, truth, 0.5).f1)
        mask = nc.segment(scene.image, "nucleus", demo_model, predictor=predictor) > 0
        scores["mask alone"].append(match_instances(run(iter_mask_instances(predictor, mask)), truth, 0.5).f1)
    seeds, components, alone = (np.mean(scores[key]) for key in ("seeds", "components", "mask alone"))
    assert seeds >= MIN_SEEDS_F1 and seeds - components >= MIN_SEEDS_GAIN, scores
    assert seeds - alone >= MIN_DEPTH_GAIN, scores


def test_rods_and_outlines_come_out_as_objects(demo_model, text_masks):
    """Bacteria are seeded along their length (one rod, one object), cell membranes give one
    outline per cell; connected components merge touching rods and are one network of lines."""
    found = {}
    for scene, _, predictor in text_masks:
        concept = {"bacteria": "bacterium", "tissue": "cell membrane"}.get(scene.kind)
        if concept is None:
            continue
        for method in ("seeds", "components"):
            labels = nc.segment(scene.image, concept, demo_model, instances=True, instance_method=method,
                                predictor=predictor)
            found.setdefault((concept, method), []).append(match_instances(labels, scene.labels[concept], 0.5))
    f1 = {key: pooled_f1(matches)["f1"] for key, matches in found.items()}
    assert f1["bacterium", "seeds"] >= MIN_ROD_F1 and f1["bacterium", "seeds"] > f1["bacterium", "components"], f1
    assert f1["cell membrane", "seeds"] >= MIN_OUTLINE_F1 > f1["cell membrane", "components"], f1


def test_a_click_gives_its_object(text_masks, demo_model):
    """The decoder's mask (``predict``), and ``segment``'s: the regions of it that hold the click,
    less the concept's other objects it spread onto (``inference/neighbours.py``). On the nuclei
    here (2026-11-28): 0.736 IoU with 0.192 outside, 0.766 with 0.158 (the regions holding the click),
    0.790 with 0.130 (less the neighbours)."""
    qualities, segmented, nuclei = [], [], []
    for scene, _, predictor in text_masks:
        rng = np.random.default_rng(0)
        for concept, truth in scene.labels.items():
            predictor.set_concept(concept)
            ids = np.unique(truth)[1:]
            for label in rng.choice(ids, size=min(2, len(ids)), replace=False):
                object_mask = truth == label
                click = interior_point(object_mask)[None]
                mask = predictor.predict(point_coords=click, point_labels=np.array([1]))[0][0]
                qualities.append(click_quality(mask, object_mask))
                kept = nc.segment(scene.image, concept, demo_model, points=click, predictor=predictor) > 0
                segmented.append(click_quality(kept, object_mask))
                if concept == "nucleus":
                    held = run(iter_prompted_object(predictor, mask, click, np.array([1]), None, neighbours=False))
                    nuclei.append(click_quality(held, object_mask) + segmented[-1])
    iou, outside = np.mean(qualities, axis=0)
    assert iou >= MIN_CLICK_IOU and outside <= MAX_CLICK_OUTSIDE, (iou, outside)
    kept_iou, kept_outside = np.mean(segmented, axis=0)
    assert kept_iou >= iou - 0.005 and kept_outside <= outside and kept_outside < outside - 0.005, (
        (iou, outside), (kept_iou, kept_outside))
    held_iou, held_outside, nucleus_iou, nucleus_outside = np.mean(nuclei, axis=0)
    assert nucleus_iou >= held_iou + 0.015 and nucleus_outside <= held_outside - 0.02, np.mean(nuclei, axis=0)


def test_a_box_alone_gives_its_object(text_masks, demo_model):
    """Stages 13-15 of the demo model learnt a box with no click: the decoder's mask (``predict``) 0.53 IoU
    with 0.28 outside here (stage 12, never shown one: 0.20 with 0.78). A cell outline's box frames its
    neighbours' outlines too, and is not learnt; nuclei, spots and bacteria are. ``segment`` bounds the
    mask by the box: never worse (0.65 with 0.06 here; stage 12 0.59 with 0.07, as these boxes are tight)."""
    qualities, bounded = [], []
    for scene, _, predictor in text_masks:
        rng = np.random.default_rng(0)
        for concept in {"nucleus", "spot", "bacterium"} & set(scene.labels):
            truth = scene.labels[concept]
            for label in rng.choice(np.unique(truth)[1:], size=min(2, int(truth.max())), replace=False):
                box = box_from_mask(truth == label)
                if box is not None:
                    predictor.set_concept(concept)
                    qualities.append(click_quality(predictor.predict(box=box)[0][0], truth == label))
                    mask = nc.segment(scene.image, concept, demo_model, box=box, predictor=predictor) > 0
                    bounded.append(click_quality(mask, truth == label))
    iou, outside = np.mean(qualities, axis=0)
    assert len(qualities) >= 20 and iou >= MIN_BOX_IOU and outside <= MAX_BOX_OUTSIDE, (len(qualities), iou, outside)
    bounded_iou, bounded_outside = np.mean(bounded, axis=0)
    assert bounded_iou >= iou and bounded_outside <= outside, ((iou, outside), (bounded_iou, bounded_outside))


def test_a_negative_click_on_each_touching_neighbour_takes_the_neighbours_away(text_masks, demo_model):
    """The user's correction: after a click on a nucleus or bacterium that touches others, a negative click
    in the middle of each. Measured here (2026-11-28): IoU 0.552 -> 0.589, outside 0.368 -> 0.248 on 25
    objects; the decoder alone, before the negatives parted its mask (it ignores them): 0.552 -> 0.548, 0.339.
    Stage 15: 0.524 -> 0.587, outside 0.417 -> 0.287."""
    alone, corrected, boxed_alone, boxed_corrected = [], [], [], []
    for scene, _, predictor in text_masks:
        for concept in {"nucleus", "bacterium"} & set(scene.labels):
            truth, rng = scene.labels[concept], np.random.default_rng(0)
            for label in rng.choice(np.unique(truth)[1:], size=min(5, int(truth.max())), replace=False):
                object_mask = truth == label
                neighbours = np.unique(truth[touching_objects(truth, object_mask)])
                if not len(neighbours):
                    continue
                clicks = np.concatenate([interior_point(object_mask)[None], [interior_point(truth == n) for n in neighbours]])
                box = box_from_mask(object_mask)
                for found, prompts, box_or_none in ((alone, clicks[:1], None), (corrected, clicks, None),
                                                    (boxed_alone, clicks[:1], box), (boxed_corrected, clicks, box)):
                    mask = nc.segment(scene.image, concept, demo_model, points=prompts, predictor=predictor,
                                      box=box_or_none, point_labels=[1] + [0] * (len(prompts) - 1)) > 0
                    found.append(click_quality(mask, object_mask))
    (iou, outside), (corrected_iou, corrected_outside) = np.mean(alone, axis=0), np.mean(corrected, axis=0)
    assert len(alone) >= 15 and corrected_iou >= iou + 0.02 and corrected_outside <= outside - 0.06, (
        len(alone), (iou, outside), (corrected_iou, corrected_outside))
    # Inside the object's box, which bounds the mask and so already cuts most of the neighbours away, the
    # negatives take a part of the rest (0.172 -> 0.127 outside) for a little of the object (IoU 0.745 -> 0.733).
    (iou, outside), (corrected_iou, corrected_outside) = np.mean(boxed_alone, axis=0), np.mean(boxed_corrected, axis=0)
    assert iou >= 0.65 and corrected_iou >= iou - 0.03 and corrected_outside <= outside - 0.02, (
        (iou, outside), (corrected_iou, corrected_outside))


SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def test_objects_twice_the_models_size_are_read_at_their_scale(demo_model):
    """A held-out mixed scene enlarged 2x (bench_scale.py's, seed 2,014,003): at its own pixels the
    rods are twice any the model saw (text IoU 0.32); ``scale="auto"`` with their diameter reads
    the image smaller, so that the rods lie in the middle of the model's lengths (0.85)."""
    from skimage.measure import regionprops

    from napari_clipsam.inference.rescale import resolve_scale

    scene = generate_scene(2_014_003, size=256, kind="mixed")
    image = np.kron(scene.image, np.ones((2, 2), scene.image.dtype))
    rods = np.kron(scene.labels["bacterium"], np.ones((2, 2), np.int32))
    truth = rods > 0
    diameter = float(np.median([region.feret_diameter_max for region in regionprops(rods)]))  # as bench_scale
    scale = resolve_scale("auto", diameter, demo_model, "bacterium")
    assert 1.8 < scale < 2.6  # about the enlargement
    own = semantic_iou(nc.segment(image, "bacterium", demo_model, scale=1) > 0, truth)
    scaled = semantic_iou(nc.segment(image, "bacterium", demo_model, scale=scale) > 0, truth)
    assert scaled >= 0.75 and scaled >= own + 0.3, (own, scaled)


def _script(name: str, *args, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``scripts/<name>`` with ``args`` in a fresh interpreter."""
    return subprocess.run([sys.executable, str(SCRIPTS / name), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def test_files_are_compared_on_the_same_scenes_and_prompts():
    """scripts/compare_demo_models.py: one line per file; the same file twice (by name, by path) scores the same."""
    from napari_clipsam.weights.presets import preset_path

    completed = _script("compare_demo_models.py", "demo", preset_path("demo"), "--scenes", 1, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    scores = re.findall(r"^\S*demo\S*: IoU ([0-9.]+) (\{.*\})$", completed.stdout, flags=re.MULTILINE)
    assert len(scores) == 2 and scores[0] == scores[1], completed.stdout
    assert 0.3 < float(scores[0][0]) <= 1.0


def test_training_refuses_scenes_kept_for_validation_or_the_benchmark(tmp_path):
    """scripts/train_demo_model.py never trains on validation or held-out scenes (stage 6 once did)."""
    output = tmp_path / "demo.safetensors"
    for seed, reserved in ((10, "validation scenes from 1,000,000"), (20, "held-out"), (19, "held-out")):
        completed = _script("train_demo_model.py", "--seed", seed, "--scenes", 100001, "--output", output)
        assert completed.returncode == 2 and reserved in completed.stderr, (seed, completed.stderr)
        assert "choose another --seed" in completed.stderr
    # The one exception reproduces stage 6; it never opens the held-out scenes.
    completed = _script("train_demo_model.py", "--seed", 20, "--allow-validation-overlap", "--output", output)
    assert completed.returncode == 2 and "held-out" in completed.stderr
    for validation_seed in ("2000000", "1099990", "0"):  # held out; running past the range; training scenes
        completed = _script("train_demo_model.py", "--validation-seed", validation_seed, "--validation-scenes", 20,
                            "--output", output)
        assert completed.returncode == 2 and "validates outside the validation scenes" in completed.stderr
    assert not output.exists()


def test_training_can_draw_more_mixed_scenes(tmp_path):
    """--mixed-share: that share of training scenes is 'mixed', by seed; 0 keeps every earlier stage's scenes."""
    sys.path.insert(0, str(SCRIPTS))
    try:
        from train_demo_model import scene_kind
    finally:
        sys.path.remove(str(SCRIPTS))
    seeds = range(1_600_000, 1_602_000)
    assert all(scene_kind(seed, 0.0) is None for seed in seeds)
    assert all(scene_kind(seed, 1.0) == "mixed" for seed in seeds)
    half = [scene_kind(seed, 0.5) for seed in seeds]
    assert half == [scene_kind(seed, 0.5) for seed in seeds] and set(half) == {None, "mixed"}
    assert 0.45 < half.count("mixed") / len(half) < 0.55
    completed = _script("train_demo_model.py", "--mixed-share", 1.5, "--output", tmp_path / "demo.safetensors")
    assert completed.returncode == 2 and "--mixed-share is a share from 0 to 1" in completed.stderr


def test_training_refuses_a_description_too_long_before_it_trains(tmp_path):
    """The file's description holds the command; too long for the file, the run stops before training."""
    output = tmp_path / "/".join(["d" * 200] * 10) / "demo.safetensors"
    completed = _script("train_demo_model.py", "--seed", 14, "--scenes", 2, "--validation-scenes", 1,
                        "--validation-seed", 1050000, "--steps", 2, "--output", output, timeout=300)
    assert completed.returncode == 2 and "would pass 2000 characters" in completed.stderr, completed.stderr[-2000:]
    assert "step 0" not in completed.stdout and not output.exists()


def test_a_run_stopped_by_its_time_limit_keeps_its_last_state(tmp_path):
    """--save-last is written when --max-minutes stops a run too (a GPU run once lost it so)."""
    output, last = tmp_path / "best.safetensors", tmp_path / "last.safetensors"
    completed = _script("train_demo_model.py", "--seed", 14, "--scenes", 2, "--validation-scenes", 1,
                        "--validation-seed", 1050000, "--steps", 50, "--batch-size", 1, "--threads", 1,
                        "--max-minutes", 0.0001, "--output", output, "--save-last", last, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "--max-minutes 0.0001 reached" in completed.stdout
    stopped = int(re.search(r"stopped at step (\d+)", completed.stdout).group(1))
    assert 0 < stopped < 50 and output.exists() and last.exists()
    from napari_clipsam.weights.adapters_file import read_adapters_metadata

    assert f"the state after its last step, {stopped})" in read_adapters_metadata(last)["description"]


def test_a_run_can_grow_the_model_and_starts_from_its_masks(tmp_path):
    """--deepen (the demo file grown to demo-deep) and --mask-refiner (a refiner added) validate as the file
    itself at step 0, then train."""
    from tests.helpers import demo_without_refiner

    shipped = tmp_path / "init.safetensors"  # the shipped file, less its own refiner if it has one
    plain = demo_without_refiner()
    plain.save_adapters(shipped, concepts=plain.concepts, every_weight=True,
                        extra_metadata={"training_mode": "both", "description": plain.description})
    common = ("--seed", 14, "--scenes", 2, "--validation-scenes", 2, "--validation-seed", 1050000, "--steps", 1,
              "--batch-size", 1, "--threads", 1, "--evaluations", 1, "--init", shipped)
    grown = {"demo": ("--sam", "demo"), "demo-deep": ("--sam", "demo-deep", "--deepen"),
             "refined": ("--sam", "demo", "--mask-refiner", 8, "--refiner-learning-rate", 1e-3,
                         "--save-last", tmp_path / "refined_last.safetensors")}
    runs = {name: _script("train_demo_model.py", *common, *options, "--output", tmp_path / f"{name}.safetensors",
                          timeout=300) for name, options in grown.items()}
    for completed in runs.values():
        assert completed.returncode == 0, completed.stderr[-2000:]
    first = {name: re.search(r"step 0: validation IoU .*", completed.stdout).group(0) for name, completed in runs.items()}
    assert first["demo"] == first["demo-deep"] == first["refined"]
    assert "(demo, 4 encoder blocks) to demo-deep (8 blocks)" in runs["demo-deep"].stdout
    assert "added a mask refiner of width 8" in runs["refined"].stdout
    from napari_clipsam.weights.adapters_file import read_adapters_metadata

    assert read_adapters_metadata(tmp_path / "demo-deep.safetensors")["sam"] == "demo-deep"
    refined = nc.load_model(sam="demo", clip="demo", sam_checkpoint=None, clip_pretrained=None, precision="fp32",
                            adapters=tmp_path / "refined_last.safetensors")
    assert refined.config.mask_refiner == 8 and refined.sam.mask_decoder.refiner.out.weight.any()  # it trained
    # A refiner-bearing file trains on as it is (its own configuration, refiner included).
    onward = _script("train_demo_model.py", *common[:-1], tmp_path / "refined_last.safetensors", "--sam", "demo",
                     "--output", tmp_path / "onward.safetensors", timeout=300)
    assert onward.returncode == 0, onward.stderr[-2000:]
    assert json.loads(read_adapters_metadata(tmp_path / "onward.safetensors")["config"])["mask_refiner"] == 8
    for options in (("--deepen",), ("--mask-refiner", 8)):
        completed = _script("train_demo_model.py", *options, "--output", tmp_path / "x.safetensors")
        assert completed.returncode == 2 and "--mask-refiner grow the model of --init" in completed.stderr
    completed = _script("train_demo_model.py", "--deepen", "--mask-refiner", 8, "--init", shipped,
                        "--output", tmp_path / "x.safetensors")
    assert completed.returncode == 2 and "one way at a time" in completed.stderr
