"""Reading at the objects' scale: text-only IoU of images whose objects are larger than the model's.

A model reads objects of the sizes it was trained on best (the demo model: nuclei 8-60 px,
spots 5-9, rods 15-40 long, cells 28-52 across). For each case, the text-only mask of each
concept (``nc.segment``, its defaults otherwise) read four ways:

- ``own size``: ``scale=1``, the image's own pixels (in tiles when larger than the input);
- ``resized``: ``tile_shape=None``, the whole image resized to the model's input;
- ``diameter``: ``nc.segment(..., diameter=d)`` (``scale="auto"``, the default), the objects' diameter as a user would give it (here the
  median largest Feret diameter of the true objects, in the image's pixels): read so that it
  falls in the diameters the model lists for the concept (``model.concept_diameters``);

and the semantic IoU with the truth. Cases: held-out generated scenes (seeds from 2,007,000,
other seeds than bench_quality's) at the generator's scale (448 px) and enlarged 2x and 3x
(256 px scenes, each pixel repeated), and the bundled samples of bench_quality (synthetic
nuclei, coins, scikit-image's cell; all read as "nucleus"). Prints each mask's row, then per
group the mean IoU of each read and of the better of own size and resized (an oracle).

    python benchmarks/bench_scale.py --threads 2               # the demo model, 1 scene per kind
    python benchmarks/bench_scale.py --model random --sam tiny --clip tiny --scenes 1 --no-samples   # smoke
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from napari_clipsam._machine import cpu_description

FIRST_SEED = 2_000_000
FACTORS = ((1, 448), (2, 256), (3, 256))  # (enlargement, scene size before it)
READS = ("own size", "resized", "diameter", "range end")


def user_diameter(truth: np.ndarray) -> float:
    """The median largest Feret diameter of the labelled objects: what a user measures across one."""
    from skimage.measure import regionprops

    return float(np.median([region.feret_diameter_max for region in regionprops(truth)]))


def enlarge(array: np.ndarray, factor: int) -> np.ndarray:
    return array if factor == 1 else np.kron(array, np.ones((factor, factor) + (1,) * (array.ndim - 2), array.dtype))


def cases(args):
    """(group, name, image, truth labels, concept) of every mask measured."""
    from napari_clipsam.synthetic import SCENE_KINDS, generate_scene

    if not args.no_samples:
        from bench_quality import cell_truth, coins_truth

        from napari_clipsam._sample_data import synthetic_nuclei

        for name, (image, labels) in (("synthetic nuclei", synthetic_nuclei()), ("coins", coins_truth()),
                                      ("cell", cell_truth())):
            yield "samples", name, image, labels, "nucleus"
    for factor, size in FACTORS:
        if factor not in args.factors:
            continue
        for i in range(args.scenes):
            for k, kind in enumerate(SCENE_KINDS):
                seed = args.seed + 4 * i + k + 7_000 * factor
                scene = generate_scene(seed, size=size, kind=kind)
                for concept, truth in scene.labels.items():
                    yield f"scenes x{factor}", f"{kind} {seed}", enlarge(scene.image, factor), enlarge(truth, factor), concept


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo", help="'demo' (the shipped file), a .safetensors file, or 'random'")
    parser.add_argument("--scenes", type=int, default=1, help="scenes per kind (four kinds) at each scale")
    parser.add_argument("--seed", type=int, default=FIRST_SEED, help="first scene seed (held out from training)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sam", help="SAM architecture of a random model (default: demo)")
    parser.add_argument("--clip", help="CLIP architecture of a random model (default: demo)")
    parser.add_argument("--factors", type=int, nargs="+", default=[f for f, _ in FACTORS], choices=[f for f, _ in FACTORS],
                        help="the enlargements of the generated scenes to measure")
    parser.add_argument("--no-samples", action="store_true", help="skip the bundled samples")
    args = parser.parse_args(argv)

    import torch

    import napari_clipsam as nc
    from napari_clipsam.inference.rescale import resolve_scale
    from napari_clipsam.training.metrics import semantic_iou

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_quality import load

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    args.other_concepts = "auto"
    model = load(args)
    if args.model == "random":  # the demo model's diameters, so that the smoke test reads at another scale too
        from napari_clipsam.synthetic.scenes import CONCEPT_DIAMETERS

        model.concept_diameters = dict(CONCEPT_DIAMETERS)
    command = "python benchmarks/bench_scale.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"CPU: {cpu_description()}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, napari-clipsam {nc.__version__}")
    print(f"model: {args.model} (SAM {model.sam_name}, CLIP {model.clip_name}); diameters it lists: "
          + (", ".join(f"{c} {lo:g}-{hi:g} px" for c, (lo, hi) in model.concept_diameters.items()) or "none"))
    print(f"command: {command.strip()}\n")
    print(f"{'case':<28} {'concept':<14} {'diameter px':>11} {'scale':>6} {'end':>6} "
          + " ".join(f"{r:>9}" for r in READS))
    ious = defaultdict(lambda: defaultdict(list))
    started = time.perf_counter()
    for group, name, image, truth, concept in cases(args):
        diameter = user_diameter(truth)
        scale = resolve_scale("auto", diameter, model, concept)  # what nc.segment(..., diameter=) picks: printed
        low, high = model.concept_diameters.get(concept, (diameter, diameter))
        end = 1.0 if scale == 1 else diameter / min(max(diameter, low), high)
        row = {}
        for read, options in zip(READS, (dict(scale=1), dict(tile_shape=None), dict(diameter=diameter), dict(scale=end))):
            row[read] = semantic_iou(nc.segment(image, concept, model, **options) > 0, truth > 0)
            ious[group][read].append(row[read])
        ious[group]["better of own size and resized"].append(max(row["own size"], row["resized"]))
        print(f"{group + ' ' + name:<28} {concept:<14} {diameter:>11.1f} {scale:>6.2f} {end:>6.2f} "
              + " ".join(f"{row[r]:>9.3f}" for r in READS), flush=True)
    print(f"\nmean text-only IoU per group ({time.perf_counter() - started:.0f} s in all)")
    for group, figures in ious.items():
        print(f"{group:<12} masks {len(figures['own size']):>3}  "
              + "  ".join(f"{read} {np.mean(values):.3f}" for read, values in figures.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
