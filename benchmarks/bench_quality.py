"""Segmentation quality of a trained model (the demo model by default) against ground truth.

On held-out generated scenes (``napari_clipsam.synthetic``, 256 px, every kind, seeds
from 2,000,000: training uses 0.. and validation 1,000,000..), prints:

- text-only semantic IoU per concept: ``nc.segment`` with no prompts (the model's other
  concepts competing for each region, its default; ``--other-concepts none``: each concept
  alone), against the union of the concept's objects, on the scenes that hold it (target >= 0.85);
- confusion between concepts: for each pair (A, B) in a scene, the part of B's pixels
  that A's text-only mask covers; the worst pair's mean (target <= 0.05);
- touching nuclei, on the "nuclei" scenes (their touching fraction, >= 0.30, is printed):
  instance F1 at IoU 0.5 from text alone, seeds against connected components of the same
  mask (targets: seeds >= 0.85, and >= components + 0.15), and, with no target, the seeds
  on the TRUE concept mask: the instance method alone, apart from the text mask's errors,
  and a click on every nucleus in instance mode (one click = one object); with no target,
  the same seeds and components for the bacteria of the "bacteria" scenes (rods) and the
  cell outlines of the "tissue" scenes (``OTHER_OBJECTS``);
- one positive click at the interior point (distance-transform maximum) of up to
  ``--clicks`` objects per concept per image: IoU with the object (target >= 0.8) and the
  part of the mask outside it (target < 0.10); and, with no target, for the clicked objects
  that touch another of their concept, the IoU after the user's correction: the click plus a
  negative click in the middle of each touching object (and the same inside the object's box),
  and the IoU from each clicked object's box alone (no click) and with the click; a box
  reaches ``--box-margin`` pixels (default 3) beyond its object on every side, as a user
  draws it (0: the exact bounding box, which the mask's bound to its box flatters);

and the same, with no targets, on the bundled real-looking samples the demo model never
saw: ``synthetic_nuclei()`` with its labels, scikit-image's coins with a classic
watershed ground truth (see ``coins_truth``) and scikit-image's cell, one object larger
than any the model saw (see ``cell_truth``), segmented as "nucleus".

    python benchmarks/bench_quality.py                                   # the shipped demo model
    python benchmarks/bench_quality.py --model /tmp/demo.safetensors --json quality.json
    python benchmarks/bench_quality.py --model random --sam tiny --clip tiny --scenes 1   # a smoke test
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from collections import defaultdict

import numpy as np
from scipy import ndimage

from napari_clipsam._machine import cpu_description

FIRST_SEED = 2_000_000
# Concepts whose objects from text alone are measured too (no target), in the scenes of one kind.
OTHER_OBJECTS = {"bacterium": "bacteria", "cell membrane": "tissue"}
SAMPLE_TRUTHS = {"synthetic_nuclei": "its labels", "coins": "watershed ground truth (see coins_truth)",
                 "cell": "Otsu ground truth (see cell_truth)"}
READS = {"auto": "as nc.segment reads it by default", "none": "resized to the model's input (--sample-tiles none)"}
TARGETS = {  # figure -> (comparison, value)
    "text_iou": (">=", 0.85),
    "cross_overlap_max": ("<=", 0.05),
    "touching_fraction": (">=", 0.30),
    "seeds_f1": (">=", 0.85),
    "seeds_minus_components_f1": (">=", 0.15),
    "click_iou": (">=", 0.8),
    "click_outside": ("<", 0.10),
}


def verdict(name: str, value: float) -> str:
    comparison, target = TARGETS[name]
    passed = {">=": value >= target, "<=": value <= target, "<": value < target}[comparison]
    return f"target {comparison} {target:<5} {'PASS' if passed else 'MISS'}"


def load(args):
    import napari_clipsam as nc

    if args.model == "demo":
        return nc.load_model(preset="demo", device=args.device, precision="fp32")
    if args.model != "random" and not (args.sam and args.clip):  # a file says which architecture it fills
        from napari_clipsam.weights.adapters_file import read_adapters_metadata

        metadata = read_adapters_metadata(args.model)
        args.sam, args.clip = args.sam or metadata["sam"], args.clip or metadata["clip"]
    sam, clip = args.sam or "demo", args.clip or "demo"
    from napari_clipsam.model.build_sam import DEMO_VARIANTS

    small = {*DEMO_VARIANTS, "tiny"}
    checkpoints = dict(sam_checkpoint=None if sam in small else "default",
                       clip_pretrained=None if clip in small else "default")
    if args.model == "random":
        return nc.load_model(sam=sam, clip=clip, device=args.device, precision="fp32", **checkpoints)
    return nc.load_model(sam=sam, clip=clip, adapters=args.model, device=args.device, precision="fp32",
                         **checkpoints)


def coins_truth() -> tuple[np.ndarray, np.ndarray]:
    """scikit-image's coins and labels from the classic region-based watershed of its gallery.

    Markers: background below 30, coins above 150; watershed of the Sobel elevation map;
    holes filled; connected components, specks under 100 px dropped. Not hand-drawn: it
    follows the coins' outlines closely (checked by eye), but it is a method's output.
    """
    from skimage import data, filters, segmentation

    coins = data.coins()
    markers = np.zeros(coins.shape, dtype=np.int32)
    markers[coins < 30], markers[coins > 150] = 1, 2
    regions = segmentation.watershed(filters.sobel(coins), markers)
    labels, count = ndimage.label(ndimage.binary_fill_holes(regions == 2))
    areas = np.bincount(labels.ravel(), minlength=count + 1)
    keep = areas >= 100
    keep[0] = False
    relabel = np.zeros(count + 1, dtype=np.int32)
    relabel[keep] = np.arange(1, keep.sum() + 1)
    return coins, relabel[labels]


def cell_truth() -> tuple[np.ndarray, np.ndarray]:
    """scikit-image's ``cell`` (660 x 550, a cell in saline, about 120 px across, on a noisy
    background) and its label: Otsu's threshold of the image smoothed by a Gaussian of 2 px,
    holes filled, the largest region. One object, far larger than the demo model's nuclei
    (8-60 px): what reading an image at its own size does with objects of another scale.
    """
    from skimage import data, filters

    cell = data.cell()
    smooth = filters.gaussian(cell.astype(np.float64), 2, preserve_range=True)
    labels, _ = ndimage.label(ndimage.binary_fill_holes(smooth > filters.threshold_otsu(smooth)))
    areas = np.bincount(labels.ravel())
    areas[0] = 0
    return cell, (labels == areas.argmax()).astype(np.int32)


def measure_image(model, image, truths: dict, *, clicks: int, rng, instances_of: str | None,
                  other_concepts="auto", augment="auto", box_margin: float = 3, objects_of: str | None = None,
                  tile_shape="auto") -> dict:
    """Every figure of one image, as ``nc.segment`` gives it by default (an image larger than the
    model's input in tiles where the model's ``max_auto_downscale`` says so; from text alone, the
    model's other concepts competing, unless ``other_concepts`` is None, averaged over the image's views
    as ``augment`` says); one predictor, so an
    image read in one pass is encoded once for every concept and click. ``tile_shape`` goes to
    every ``nc.segment`` (None: the image resized to the model's input)."""
    from functools import partial

    import napari_clipsam as nc
    from napari_clipsam._jobs import run
    from napari_clipsam.inference.instances import interior_point
    from napari_clipsam.inference.seeds import iter_mask_instances
    from napari_clipsam.training.evaluate import touching_objects
    from napari_clipsam.training.metrics import click_quality, cross_overlap, match_instances, rim_errors, semantic_iou

    segment = partial(nc.segment, tile_shape=tile_shape)
    predictor = nc.ClipSamPredictor(model)
    result = {"text_iou": {}, "rim": {}, "cross": {}, "clicks": defaultdict(list), "corrections": defaultdict(list),
              "boxes": defaultdict(list), "instances": {}}
    masks = {}
    last = np.tile(np.array(image.shape[1::-1]) - 1, 2)  # XYXY of the image's last pixel, where boxes stop
    for concept, truth in truths.items():
        masks[concept] = segment(image, concept, model, predictor=predictor, other_concepts=other_concepts,
                                    augment=augment) > 0
        result["text_iou"][concept] = semantic_iou(masks[concept], truth > 0)
        result["rim"][concept] = rim_errors(masks[concept], truth > 0)
        ids = np.unique(truth)[1:]
        for label in rng.choice(ids, size=min(clicks, len(ids)), replace=False):
            object_mask = truth == label
            point = interior_point(object_mask)[None]
            click = segment(image, concept, model, predictor=predictor, points=point, point_labels=np.array([1])) > 0
            quality = click_quality(click, object_mask)
            result["clicks"][concept].append(quality)
            rows, cols = ndimage.find_objects(object_mask.astype(np.int8))[0]  # the object's box alone, no click
            box = np.array([cols.start, rows.start, cols.stop - 1, rows.stop - 1], dtype=np.float64)
            box = np.clip(box + np.array([-1, -1, 1, 1]) * box_margin, 0, last)  # as a user draws it
            boxed = segment(image, concept, model, predictor=predictor, box=box) > 0
            boxed_click = segment(image, concept, model, predictor=predictor, points=point, box=box,
                                     point_labels=np.array([1])) > 0
            result["boxes"][concept].append(click_quality(boxed, object_mask) + click_quality(boxed_click, object_mask))
            neighbours = [truth == value for value in np.unique(truth[touching_objects(truth, object_mask)])]
            if neighbours:  # the user's correction: a negative click in the middle of each touching object
                points = np.concatenate([point, [interior_point(n) for n in neighbours]])
                correction_labels = np.array([1] + [0] * len(neighbours))
                corrected = segment(image, concept, model, predictor=predictor, points=points,
                                       point_labels=correction_labels) > 0
                boxed_corrected = segment(image, concept, model, predictor=predictor, points=points, box=box,
                                             point_labels=correction_labels) > 0
                result["corrections"][concept].append((quality[0], click_quality(corrected, object_mask)[0],
                                                       click_quality(boxed_corrected, object_mask)[0]))
    for first in truths:
        for second in truths:
            if first != second:
                result["cross"][f"{first} -> {second}"] = cross_overlap(masks[first], truths[second] > 0,
                                                                         truths[first] > 0)
    def from_text(concept: str, prefix: str) -> None:  # seeds and components of the text-only mask
        for method in ("seeds", "components"):
            labels = segment(image, concept, model, instances=True, instance_method=method,
                                predictor=predictor, other_concepts=other_concepts, augment=augment)
            result["instances"][prefix + method] = match_instances(labels, truths[concept], 0.5)

    if objects_of is not None:  # another concept's objects from text alone (rods, outlines): no target
        from_text(objects_of, f"{objects_of}: ")
    if instances_of is not None:
        from_text(instances_of, "")
        # The instance method alone: the seeds on the TRUE concept mask (what a perfect text mask
        # would give), the whole image in one pass.
        predictor.set_image(image)
        predictor.set_concept(instances_of)
        labels = run(iter_mask_instances(predictor, truths[instances_of] > 0))
        result["instances"]["seeds_true_mask"] = match_instances(labels, truths[instances_of], 0.5)
        # One click = one object: a positive click at every object's interior point, in instance mode.
        truth = truths[instances_of]
        clicks = np.array([interior_point(truth == value) for value in np.unique(truth)[1:]]).reshape(-1, 2)
        labels = segment(image, instances_of, model, points=clicks, instances=True, predictor=predictor)
        result["instances"]["clicked"] = match_instances(labels, truth, 0.5)
    return result


def summarise(records: list[dict]) -> dict:
    """Means over images (IoU, confusion per pair), over clicks, and pooled object counts (F1)."""
    from napari_clipsam.training.metrics import pooled_f1

    text, cross, clicks, matches = defaultdict(list), defaultdict(list), defaultdict(list), defaultdict(list)
    corrections, boxes = defaultdict(list), defaultdict(list)
    by_kind, rim = defaultdict(list), defaultdict(lambda: defaultdict(int))
    for record in records:
        for concept, counts in record["rim"].items():
            for name, count in counts.items():
                rim[concept][name] += count
        for concept, value in record["text_iou"].items():
            text[concept].append(value)
            by_kind[f"{concept} in {record.get('kind', 'image')}"].append(value)
        for pair, value in record["cross"].items():
            cross[pair].append(value)
        for concept, values in record["clicks"].items():
            clicks[concept] += values
        for concept, values in record.get("corrections", {}).items():
            corrections[concept] += values
        for concept, values in record.get("boxes", {}).items():
            boxes[concept] += values
        for method, match in record["instances"].items():
            matches[method].append(match)
    summary = {"text_iou": {c: float(np.mean(v)) for c, v in text.items()},
               "text_iou_images": {c: len(v) for c, v in text.items()},
               "text_iou_by_kind": {k: float(np.mean(v)) for k, v in sorted(by_kind.items())},
               "text_errors": {c: dict(counts) for c, counts in rim.items()},
               "cross_overlap": {p: float(np.mean(v)) for p, v in cross.items()},
               "click_iou": {c: float(np.mean([q[0] for q in v])) for c, v in clicks.items()},
               "click_outside": {c: float(np.mean([q[1] for q in v])) for c, v in clicks.items()},
               "clicks": {c: len(v) for c, v in clicks.items()},
               "touching_click_iou": {c: [float(np.mean(side)) for side in zip(*v)] for c, v in corrections.items()},
               "touching_clicks": {c: len(v) for c, v in corrections.items()},
               "box_quality": {c: [float(np.mean(side)) for side in zip(*v)] for c, v in boxes.items()}}
    every_click = [q for v in clicks.values() for q in v]
    if every_click:
        summary["click_iou_all"] = float(np.mean([q[0] for q in every_click]))
        summary["click_outside_all"] = float(np.mean([q[1] for q in every_click]))
    if summary["cross_overlap"]:
        worst = max(summary["cross_overlap"], key=summary["cross_overlap"].get)
        summary["cross_overlap_max"], summary["cross_overlap_worst_pair"] = summary["cross_overlap"][worst], worst
    for method, found in matches.items():
        summary[f"{method}_instances"] = pooled_f1(found)
    return summary


def print_summary(summary: dict, targets: bool) -> None:
    def line(label: str, value: float, target: str | None = None) -> None:
        print(f"  {label:38} {value:7.3f}   {verdict(target, value) if targets and target else ''}".rstrip())

    for concept, value in summary["text_iou"].items():
        line(f"text-only IoU, {concept}", value, "text_iou")
    if len(summary["text_iou_by_kind"]) > len(summary["text_iou"]):
        print("  text-only IoU per scene kind: "
              + ", ".join(f"{k} {v:.3f}" for k, v in summary["text_iou_by_kind"].items()))
    for concept, counts in summary["text_errors"].items():
        share = {side: counts[f"{side}_at_rim"] / max(counts[side], 1) for side in ("missed", "false")}
        print(f"  text-only wrong pixels, {concept}: {counts['missed']} missed ({share['missed']:.0%} on the "
              f"objects' 1-px rim), {counts['false']} false ({share['false']:.0%} within 1 px of an object)")
    if "cross_overlap_max" in summary:
        print("  cross-concept overlap, per pair: "
              + ", ".join(f"{p} {v:.3f}" for p, v in summary["cross_overlap"].items()))
        line("cross-concept overlap, worst pair", summary["cross_overlap_max"], "cross_overlap_max")
        print(f"    (worst pair: {summary['cross_overlap_worst_pair']})")
    if "touching_fraction" in summary:
        line("touching fraction of true nuclei", summary["touching_fraction"], "touching_fraction")
    if "seeds_instances" in summary:
        seeds, components = summary["seeds_instances"], summary["components_instances"]
        for method, found in (("seeds", seeds), ("components", components)):
            line(f"instance F1 @0.5, {method}", found["f1"], "seeds_f1" if method == "seeds" else None)
            print(f"    ({found['true_positives']} matched, {found['false_positives']} false, "
                  f"{found['false_negatives']} missed)")
        line("instance F1, seeds - components", seeds["f1"] - components["f1"], "seeds_minus_components_f1")
        if "seeds_true_mask_instances" in summary:
            line("instance F1 @0.5, seeds on the true mask", summary["seeds_true_mask_instances"]["f1"])
            print("    (the instance method alone: its seeds, clicks and basins on the true concept mask)")
        if "clicked_instances" in summary:
            found = summary["clicked_instances"]
            line("instance F1 @0.5, a click on each object", found["f1"])
            print(f"    (instance mode, one click at each true object's interior point: {found['true_positives']} "
                  f"matched, {found['false_positives']} false, {found['false_negatives']} missed)")
    for concept, kind in OTHER_OBJECTS.items():
        for method in ("seeds", "components"):
            found = summary.get(f"{concept}: {method}_instances")
            if found is not None:
                line(f"{concept} instance F1 @0.5, {method}", found["f1"])
                print(f"    (\"{kind}\" scenes, from text alone: {found['true_positives']} matched, "
                      f"{found['false_positives']} false, {found['false_negatives']} missed)")
    for concept in summary["click_iou"]:
        line(f"click IoU, {concept} ({summary['clicks'][concept]} clicks)", summary["click_iou"][concept],
             "click_iou")
        line(f"click outside, {concept}", summary["click_outside"][concept], "click_outside")
    if "click_iou_all" in summary:
        line("click IoU, all clicks", summary["click_iou_all"], "click_iou")
        line("click outside, all clicks", summary["click_outside_all"], "click_outside")
    for concept, (iou, outside, click_iou, click_outside) in summary.get("box_quality", {}).items():
        line(f"box IoU / outside, {concept}", iou)
        print(f"    (the clicked objects' boxes alone, no click: {outside:.3f} of the mask outside the object;"
              f" box and click: IoU {click_iou:.3f}, {click_outside:.3f} outside)")
    for concept, (alone, corrected, boxed) in summary.get("touching_click_iou", {}).items():
        print(f"  click IoU on a touching {concept}: {alone:.3f} one click, {corrected:.3f} with a negative click on each "
              f"touching {concept}, {boxed:.3f} with the object's box too ({summary['touching_clicks'][concept]} "
              "objects)")


def run_scenes(model, concepts, args) -> tuple[dict, float]:
    from napari_clipsam.synthetic import SCENE_KINDS, generate_scene, touching_fraction

    records, touching, started = [], [], time.perf_counter()
    for index in range(args.scenes):
        for offset, kind in enumerate(SCENE_KINDS):
            seed = args.seed + index * len(SCENE_KINDS) + offset  # N more scenes keep the first ones
            scene = generate_scene(seed, size=256, kind=kind)
            truths = {c: scene.labels[c] for c in concepts if c in scene.labels}
            nuclei = kind == "nuclei" and "nucleus" in truths
            if nuclei:
                objects = len(np.unique(truths["nucleus"])) - 1
                touching.append((touching_fraction(truths["nucleus"]) * objects, objects))
            records.append(measure_image(model, scene.image, truths, clicks=args.clicks,
                                         rng=np.random.default_rng(seed), instances_of="nucleus" if nuclei else None,
                                         objects_of=next((c for c, k in OTHER_OBJECTS.items() if k == kind and c in truths),
                                                         None),
                                         other_concepts=args.other_concepts, augment=args.augment,
                                         box_margin=args.box_margin)
                           | {"kind": kind})
    seconds = (time.perf_counter() - started) / max(len(records), 1)
    summary = summarise(records)
    if touching:
        summary["touching_fraction"] = sum(t for t, _ in touching) / max(sum(n for _, n in touching), 1)
    return summary, seconds


def run_samples(model, args) -> dict:
    from napari_clipsam._sample_data import synthetic_nuclei

    samples = {"synthetic_nuclei": synthetic_nuclei(), "coins": coins_truth(), "cell": cell_truth()}
    results = {}
    for name, (image, labels) in samples.items():
        started = time.perf_counter()
        record = measure_image(model, image, {"nucleus": labels}, clicks=args.clicks,
                               rng=np.random.default_rng(args.seed), instances_of="nucleus",
                               other_concepts=args.other_concepts, augment=args.augment, box_margin=args.box_margin,
                               tile_shape=None if args.sample_tiles == "none" else "auto")
        results[name] = summarise([record]) | {"objects": int(labels.max()), "shape": list(labels.shape),
                                               "seconds": time.perf_counter() - started}
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo",
                        help="'demo' (the shipped file), a .safetensors file, or 'random' (smoke test)")
    parser.add_argument("--scenes", type=int, default=25, help="scenes per kind (four kinds)")
    parser.add_argument("--seed", type=int, default=FIRST_SEED, help="first scene seed (held out from training)")
    parser.add_argument("--clicks", type=int, default=5, help="objects clicked per concept per image, at most")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--sam", help="SAM architecture of a random model (default: demo; a file says its own)")
    parser.add_argument("--clip", help="CLIP architecture of a random model (default: demo; a file says its own)")
    parser.add_argument("--other-concepts", choices=["auto", "none"], default="auto",
                        help="from text alone, the model's other concepts compete for each region (auto, the "
                             "default of nc.segment) or each concept is segmented alone (none)")
    parser.add_argument("--augment", choices=["auto", "on", "off"], default="auto",
                        help="from text alone, average the logits over the image's 8 flips and quarter turns (on), "
                             "not (off), or as nc.segment does by default (auto: on for the demo model)")
    parser.add_argument("--box-margin", type=float, default=3.0,
                        help="pixels a clicked object's box reaches beyond it on each side (0: its exact bounding box)")
    parser.add_argument("--no-samples", action="store_true", help="skip the bundled samples")
    parser.add_argument("--sample-tiles", choices=["auto", "none"], default="auto",
                        help="how the bundled samples are read: as nc.segment does by default (auto: at their own "
                             "size in tiles, for the demo model) or resized to the model's input (none)")
    parser.add_argument("--json", help="write every figure to this file")
    args = parser.parse_args(argv)
    args.other_concepts = None if args.other_concepts == "none" else "auto"

    import torch

    import napari_clipsam as nc
    from napari_clipsam.inference.views import augment_from_word, resolve_augment
    from napari_clipsam.synthetic import DEMO_CONCEPTS

    args.augment = augment_from_word(args.augment)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)  # a random model is the same every run
    model = load(args)
    concepts = tuple(model.concepts) or DEMO_CONCEPTS
    command = "python benchmarks/bench_quality.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"CPU: {cpu_description()}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, napari-clipsam {nc.__version__}, "
          f"device {model.device}")
    model_path = args.model
    if args.model == "demo":
        from napari_clipsam.weights.presets import preset_path

        model_path = str(preset_path("demo"))
    print(f"model: {model_path} (SAM {model.sam_name}, CLIP {model.clip_name}; concepts {', '.join(concepts)})")
    print(f"scenes: {args.scenes} per kind x 4 kinds, 256 px, seeds {args.seed}..{args.seed + 4 * args.scenes - 1}; "
          f"up to {args.clicks} clicks per concept per image; boxes {args.box_margin:g} px beyond their objects")
    print(f"command: {command.strip()}")
    print("from text alone: " + ("each concept alone" if args.other_concepts is None else
                                 f"the model's other concepts compete ({', '.join(model.concepts) or 'none listed'})")
          + f"; logits averaged over 8 views: {resolve_augment(model, args.augment)} (--augment {args.augment})")

    summary, seconds = run_scenes(model, concepts, args)
    print(f"\nheld-out generated scenes ({seconds:.2f} s per scene)")
    print_summary(summary, targets=True)
    results = {"command": command.strip(), "cpu": cpu_description(), "torch": torch.__version__,
               "threads": torch.get_num_threads(), "model": model_path, "concepts": list(concepts),
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "other_concepts": args.other_concepts, "augment": resolve_augment(model, args.augment),
               "scenes_per_kind": args.scenes, "first_seed": args.seed,
               "clicks": args.clicks, "box_margin": args.box_margin, "sample_tiles": args.sample_tiles,
               "seconds_per_scene": seconds, "targets": TARGETS, "scenes": summary}
    if not args.no_samples:
        results["samples"] = run_samples(model, args)
        for name, sample in results["samples"].items():
            truth = SAMPLE_TRUTHS[name]
            print(f"\nsample {name} {tuple(sample['shape'])}, {sample['objects']} objects, {truth}, concept "
                  f"'nucleus', never trained on; no targets; read {READS[args.sample_tiles]} ({sample['seconds']:.1f} s)")
            print_summary(sample, targets=False)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump(results, file, indent=1)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
