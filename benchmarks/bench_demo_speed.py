"""What the demo model's segmentations cost on a CPU, with the defaults and without the costly parts.

On generated 256 px scenes (seeds 2,000,000 onwards, one per kind; the quality benchmark's
first ones) and the 512 px synthetic nuclei sample (read in tiles), each figure the median
over ``--repeats`` runs of a fresh predictor (nothing cached) after a warm-up, in seconds:
- text alone, "nucleus", one view (``augment=False``) against the default on one 256 px image,
  the logits averaged over 8 flips and quarter turns (``inference/views.py``), each with the
  model's other concepts competing (the default) and alone;
- the same with seeded instances (the views' logits are shared with the seeds);
- a click: the first one on an image and concept (the concept's text-mode objects are made
  then, ``inference/neighbours.py``) and a later one (the decoder alone);
- the 512 px sample in 128 px tiles: one view (the default in tiles) against ``augment=True``.
Ratios are against the one-view figure of the same run.

    python benchmarks/bench_demo_speed.py --threads 1
    python benchmarks/bench_demo_speed.py --model random --sam tiny --clip tiny   # a smoke test
"""

from __future__ import annotations

import argparse
import statistics
import time

from _common import median_seconds
from bench_quality import load


def measure(model, repeats: int, scenes: int, sample: bool = True) -> dict[str, float]:
    import numpy as np

    import napari_clipsam as nc
    from napari_clipsam._sample_data import synthetic_nuclei
    from napari_clipsam.inference.instances import interior_point
    from napari_clipsam.synthetic import SCENE_KINDS, generate_scene

    images = [generate_scene(2_000_000 + index, size=256, kind=SCENE_KINDS[index % 4]) for index in range(scenes)]

    def per_image(**options) -> float:
        return statistics.mean(
            median_seconds(lambda scene=scene: nc.segment(scene.image, "nucleus", model, **options), model.device,
                           repeats)
            for scene in images)

    figures = {}
    for others, name in (("auto", "competing"), (None, "alone")):
        for augment in (False, True):
            views = "8 views" if augment else "1 view"
            figures[f"text only, {name}, {views}"] = per_image(other_concepts=others, augment=augment)
            figures[f"seeded instances, {name}, {views}"] = per_image(other_concepts=others, augment=augment,
                                                                      instances=True)
    first, later = [], []
    for scene in images:
        truth = scene.labels.get("nucleus")
        if truth is None or truth.max() == 0:
            continue
        points = [interior_point(truth == value)[None] for value in np.unique(truth)[1:3]]
        for _ in range(repeats):
            predictor = nc.ClipSamPredictor(model)
            predictor.set_image(scene.image)
            predictor.set_concept("nucleus")
            predictor.prepare()  # the encoders are what every prompt shares; the clicks are timed after them
            for number, point in enumerate(points):
                started = time.perf_counter()
                nc.segment(scene.image, "nucleus", predictor=predictor, points=point)
                (first if number == 0 else later).append(time.perf_counter() - started)
    if first:
        figures["first click on an image and concept"] = statistics.median(first)
    if later:
        figures["a later click"] = statistics.median(later)
    image = synthetic_nuclei()[0] if sample else None
    for augment in (False, True) if sample else ():
        figures[f"512 px sample in tiles, {'8 views' if augment else '1 view'}"] = median_seconds(
            lambda augment=augment: nc.segment(image, "nucleus", model, tile_shape=(128, 128), augment=augment),
            model.device, max(1, repeats // 2))
    return figures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo", help="'demo' (the shipped file), a .safetensors file, or 'random'")
    parser.add_argument("--sam", help="SAM architecture of a random model (default: demo)")
    parser.add_argument("--clip", help="CLIP architecture of a random model (default: demo)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each figure after a warm-up")
    parser.add_argument("--scenes", type=int, default=4, help="256 px scenes (kinds in turn)")
    parser.add_argument("--no-sample", action="store_true", help="skip the 512 px sample in tiles")
    args = parser.parse_args(argv)

    import torch

    import napari_clipsam as nc
    from napari_clipsam._machine import cpu_description

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = load(args)
    print(f"CPU: {cpu_description()}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, napari-clipsam {nc.__version__}, "
          f"device {model.device}; model {args.model} (SAM {model.sam_name}, CLIP {model.clip_name}; "
          f"concepts: {', '.join(model.concepts) or 'none'})")
    print(f"{args.scenes} scenes of 256 px, median of {args.repeats} runs after a warm-up, seconds per image\n")
    figures = measure(model, args.repeats, args.scenes, sample=not args.no_sample)
    for label, seconds in figures.items():
        base = label.replace("8 views", "1 view")
        ratio = f"  x{seconds / figures[base]:.1f} of one view" if base != label and figures[base] > 0 else ""
        print(f"  {label:<45s} {seconds:8.3f} s{ratio}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
