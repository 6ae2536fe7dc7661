"""Huge pages for torch's CPU tensors, off and on: seconds per demo training step and per new image.

``import napari_clipsam`` sets ``THP_MEM_ALLOC_ENABLE=1`` (``napari_clipsam._machine.use_huge_pages``):
torch then puts CPU tensors of 2 MB or more in transparent huge pages. This benchmark
runs the same work in two child processes, the variable 0 and 1 (torch reads it once, at
its first allocation), and prints both times, their ratio and each process's peak memory:

- a training step of the demo model as ``benchmarks/bench_training.py --preset demo``
  times it (``scripts/train_demo_model.py``'s training: every weight, text and manual
  mode, batch ``--batch-size``, augmentation; with ``--sam tiny`` that script's text-mode
  step of the tiny model), median of ``--steps`` steps after one warm-up step;
- a new image and a concept through the CLIP-guided predictor (``set_image``,
  ``set_concept``, one text-only ``predict``), median of ``--repeats`` images after one
  warm-up, with ``--sam``/``--clip`` (default the published vit_b + ViT-B-16 architecture,
  random weights: speed does not depend on their values).

    python benchmarks/bench_allocator.py                           # about 3 minutes on 2 cores
    python benchmarks/bench_allocator.py --sam tiny --clip tiny    # a smoke test

The results are the same either way; only the time spent faulting in fresh memory differs.
Linux only (elsewhere both children run alike).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from _common import peak_memory_gb
from bench_training import run_part


def child(args) -> dict:
    import numpy as np
    import torch

    import napari_clipsam as nc

    torch.set_num_threads(args.threads)
    # The training step as bench_training.py times it (its --preset demo: the demo model's own training).
    training = run_part(False, argparse.Namespace(
        preset="default" if args.sam == "tiny" else "demo", sam=args.sam, clip=args.clip, device="cpu",
        precision="fp32", steps=args.steps, batch_size=args.batch_size, no_augment=False, image_size=None))
    predicting = nc.load_model(sam=args.sam, clip=args.clip, sam_checkpoint=None, clip_pretrained=None,
                               precision="fp32")
    predictor = nc.ClipSamPredictor(predicting)
    images = []
    rng = np.random.default_rng(0)
    for _ in range(args.repeats + 1):
        image = rng.integers(0, 255, (512, 512), dtype=np.uint8)
        start = time.perf_counter()
        predictor.set_image(image)
        predictor.set_concept("nucleus")
        predictor.predict()
        images.append(time.perf_counter() - start)
    return {"step_s": training["step_s"], "image_s": statistics.median(images[1:]),
            "peak_gb": peak_memory_gb(torch.device("cpu")), "variable": os.environ.get("THP_MEM_ALLOC_ENABLE")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sam", default="vit_b", help="SAM architecture of the predictor timed (random weights)")
    parser.add_argument("--clip", default="ViT-B-16", help="its CLIP architecture")
    parser.add_argument("--device", default="cpu", choices=["cpu"], help="huge pages concern CPU memory only")
    parser.add_argument("--steps", type=int, default=4, help="training steps timed")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2, help="new images timed")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the demo model trains on 1)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0

    import torch

    from napari_clipsam._machine import cpu_description

    print(f"CPU: {cpu_description()}, torch {torch.__version__}, {args.threads} thread(s)")
    trained = "tiny" if args.sam == "tiny" else "demo"
    print(f"{trained} training step: batch {args.batch_size}, median of {args.steps}; new image + concept: "
          f"SAM {args.sam} + CLIP {args.clip}, 512x512, median of {args.repeats}")
    results = {}
    for value in ("0", "1"):
        command = [sys.executable, __file__, "--child", *(argv if argv is not None else sys.argv[1:])]
        completed = subprocess.run(command, capture_output=True, text=True,
                                   env={**os.environ, "THP_MEM_ALLOC_ENABLE": value})
        if completed.returncode != 0:
            print(completed.stderr[-3000:], file=sys.stderr)
            return completed.returncode
        results[value] = json.loads(completed.stdout.strip().splitlines()[-1])
        assert results[value]["variable"] == value
    off, on = results["0"], results["1"]
    print(f"{'':34}{'off':>10}{'on':>10}{'on / off':>10}")
    for key, label in (("step_s", f"{trained} training step, s"), ("image_s", "new image + concept, s"),
                       ("peak_gb", "peak memory of the process, GB")):
        print(f"{label:34}{off[key]:10.3f}{on[key]:10.3f}{on[key] / off[key]:10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
