"""Reuse benchmark: what a concept switch and a revisited image cost against a full encode.

In one process, with random weights (speed does not depend on their values), a 1024 x 1024 image
and SAM's own input size:
- segment_anything's vanilla image encoder on the same input (the baseline);
- the predictor's full prepare of a new image and a new concept;
- a second concept on the same image (what the method lets a predictor keep: SAM's input, CLIP's
  image features and the encoder blocks before the first concept-conditioned one);
- the same concept again, and an earlier image again (kept by the predictor: ``images_kept``),
  with a concept seen before and with a new one;
- the concept switch of a model with semantic adapters in the last ``--last-blocks`` encoder
  blocks only (the paper's Table 7: < 1 mIoU lost with 4), whose first blocks run once per image.
Ratios are against the full prepare and the vanilla encoder measured in this run.

    python benchmarks/bench_reuse.py                          # vit_b + ViT-B-16
    python benchmarks/bench_reuse.py --sam tiny --clip tiny   # a smoke test in seconds
"""

from __future__ import annotations

import argparse
import os
import statistics
import time


def _image(seed: int, size: int = 1024):
    import numpy as np

    return np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)


def timed_prepare(predictor) -> tuple[float, dict[str, float]]:
    """Seconds of ``predictor.prepare()`` and of each stage it ran (cached stages are not run)."""
    stages: dict[str, float] = {}
    start = time.perf_counter()
    stage, stage_start = None, start
    for next_stage in predictor.iter_prepare():
        now = time.perf_counter()
        if stage is not None:
            stages[stage] = now - stage_start
        stage, stage_start = next_stage, now
    end = time.perf_counter()
    if stage is not None:
        stages[stage] = end - stage_start
    return end - start, stages


def vanilla_encoder_s(sam: str, sam_input, repeats: int) -> float:
    """Median seconds of segment_anything's own image encoder (stock attention), after a warm-up."""
    from napari_clipsam.model.build_sam import build_sam

    encoder = build_sam(sam).image_encoder.to(sam_input.device)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        encoder(sam_input)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sam", default="vit_b", help="SAM variant (tiny: a smoke test)")
    parser.add_argument("--clip", default="ViT-B-16", help="CLIP model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=1, help="vanilla encoder passes after a warm-up")
    parser.add_argument("--last-blocks", type=int, default=4,
                        help="semantic adapters in this many last blocks for the last comparison (0: skip it)")
    args = parser.parse_args(argv)

    import torch

    import napari_clipsam as nc
    from napari_clipsam._machine import cpu_description

    def load(config=None):
        torch.manual_seed(0)
        return nc.load_model(sam=args.sam, clip=args.clip, sam_checkpoint=None, clip_pretrained=None,
                             device=args.device, precision="fp32", config=config)

    model = load()
    first, second = _image(0), _image(1)
    print(f"machine: {cpu_description()}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"models: SAM {args.sam} + CLIP {args.clip}, random weights, fp32 on {model.device}, "
          f"SAM input {model.image_size} px, image {first.shape[1]}x{first.shape[0]}")

    rows: list[tuple[str, float, dict[str, float]]] = []
    with torch.inference_mode():
        predictor = nc.ClipSamPredictor(model)
        # A first image and concept warm up kernels and allocators; not counted.
        predictor.set_image(_image(2))
        predictor.set_concept("warm-up")
        predictor.prepare()

        def step(label: str, image, concept: str) -> None:
            predictor.set_image(image)
            predictor.set_concept(concept)
            seconds, stages = timed_prepare(predictor)
            rows.append((label, seconds, stages))

        step("full prepare: new image, new concept", first, "nucleus")
        step("second concept, same image", first, "cell membrane")
        step("same concept again", first, "cell membrane")
        step("another image, new concept (full)", second, "bacterium")
        step("earlier image again, a concept it had", first, "nucleus")
        step("earlier image again, a new concept", first, "spot")
        vanilla = vanilla_encoder_s(args.sam, predictor.features.sam_input, args.repeats)
        first_semantic = model.first_semantic_block
        depth = len(model.sam.image_encoder.blocks)

        last = None
        if args.last_blocks > 0:
            del predictor, model  # one model in memory at a time
            count = min(args.last_blocks, depth)
            config = nc.ClipSamConfig(semantic_blocks=tuple(range(-count, 0)))
            partial = load(config)
            predictor = nc.ClipSamPredictor(partial)
            predictor.set_image(first)
            predictor.set_concept("nucleus")
            full_partial, _ = timed_prepare(predictor)
            predictor.set_concept("cell membrane")
            switch_partial, stages_partial = timed_prepare(predictor)
            last = (count, partial.first_semantic_block, full_partial, switch_partial, stages_partial)

    full = rows[0][1]
    print(f"\n{'':46} {'seconds':>8} {'/ full':>7} {'/ vanilla':>9}")
    print(f"{'vanilla SAM image encoder (segment_anything)':46} {vanilla:8.2f} {vanilla / full:7.2f} {1:9.2f}")
    for label, seconds, stages in rows:
        print(f"{label:46} {seconds:8.2f} {seconds / full:7.2f} {seconds / vanilla:9.2f}")
        for stage, stage_seconds in stages.items():
            print(f"    {stage:42} {stage_seconds:8.2f}")
    print(f"\nconcept-conditioned encoder blocks: {depth - first_semantic} of {depth} (first_semantic_block "
          f"{first_semantic}); a concept switch reruns those and the text, and keeps SAM's input, CLIP's image "
          f"features and the {first_semantic} block(s) before them")
    if last is not None:
        count, first_block, full_partial, switch_partial, stages_partial = last
        print(f"with semantic adapters in the last {count} blocks only (first_semantic_block {first_block}):")
        print(f"  full prepare {full_partial:8.2f} s ({full_partial / vanilla:.2f} x vanilla)")
        print(f"  concept switch {switch_partial:6.2f} s ({switch_partial / full_partial:.2f} of its full prepare, "
              f"{switch_partial / vanilla:.2f} x vanilla): {', '.join(stages_partial)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
