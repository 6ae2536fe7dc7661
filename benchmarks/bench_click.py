"""Click latency once the image embedding is set: masks upsampled only where they can be.

For a 1024x1024 and a 4096x4096 image (vit_b + ViT-B-16, random weights, SAM's 1024
input), prints the time of one ``predictor.predict(point)``:
- the new path (``fast_masks.py``: low-res logits upsampled only in the mask's box);
- the old path (the same call with ``full_resolution_masks = True``: upsampled over the
  whole image), and segment_anything's own ``SamPredictor`` on the same embedding;
- the decoder alone: the click's path (model/decoder.py: the image's share of the decoder
  prepared once per image, and that preparation), and SAM's own decoder split into its parts;
- the masks step alone (logits -> masks at the image's size), old and new, for the
  click's logits and for an object covering 1/64 of the image: random weights give
  masks of any size, so the object shows what a typical click costs.
Target: a click <= 30 ms at 1024 and at 4096 on CPU (issue 12).

    python benchmarks/bench_click.py
    python benchmarks/bench_click.py --sizes 1024 --threads 1
    python benchmarks/bench_click.py --sam tiny --clip tiny        # a smoke test in seconds
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from _common import click_latency_ms, median_seconds, sync

TARGET_MS = 30.0
ROUNDS = 3


def _median_ms(function, device, repeats: int = 11) -> float:
    return median_seconds(function, device, repeats) * 1000


def _decoder_parts(model, embedding, points, device) -> dict[str, float]:
    """Median ms of each part of ``model.decode`` (forward hooks on SAM's modules)."""
    decoder = model.sam.mask_decoder
    parts = {"prompt encoder": model.sam.prompt_encoder, "two-way transformer": decoder.transformer,
             "output upscaling": decoder.output_upscaling, "IoU head": decoder.iou_prediction_head}
    spent: dict[str, list[float]] = {name: [] for name in parts}
    starts: dict[str, float] = {}
    handles = []
    for name, module in parts.items():
        def before(_module, _inputs, name=name):
            sync(device)
            starts[name] = time.perf_counter()

        def after(_module, _inputs, _output, name=name):
            sync(device)
            spent[name].append(time.perf_counter() - starts[name])

        handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    try:
        total = _median_ms(lambda: model.decode(embedding, points, None, None, False), device)
    finally:
        for handle in handles:
            handle.remove()
    result = {name: statistics.median(times[1:]) * 1000 for name, times in spent.items()}
    result["rest (hypernetworks, mask product, glue)"] = total - sum(result.values())
    return {"decoder": total, **result}


def _object_logits(low: int, input_size: tuple[int, int], frame: int):
    """(1, 1, low, low) logits of a disc of 1/8 of the image's side, positive inside."""
    import torch

    scale = low / frame
    yy, xx = torch.meshgrid(torch.arange(low, dtype=torch.float32), torch.arange(low, dtype=torch.float32),
                            indexing="ij")
    centre_y, centre_x = input_size[0] * scale * 0.4, input_size[1] * scale * 0.6
    radius = min(input_size) * scale / 16
    return (radius - ((yy - centre_y) ** 2 + (xx - centre_x) ** 2).sqrt())[None, None]


def run_size(model, size: int, device) -> dict:
    import torch
    from segment_anything import SamPredictor

    import napari_clipsam as nc
    from napari_clipsam.inference.fast_masks import masks_at_image_size
    from napari_clipsam.inference.sam_frame import to_sam_frame
    from napari_clipsam.model.decoder import decode_prepared, prepare_image

    image = np.random.default_rng(0).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    predictor = nc.ClipSamPredictor(model)
    predictor.set_image(image)
    start = time.perf_counter()
    embedding = predictor.image_embedding  # the encoder runs once, outside the clicks
    encoder_s = time.perf_counter() - start
    step = size / 1024  # the same clicks, in the same places, on both images

    def click(x: int) -> None:
        predictor.predict(point_coords=[[x * step, 500 * step]], point_labels=[1])

    result = {"size": size, "encoder_s": encoder_s}
    with torch.inference_mode():
        # segment_anything's own predictor on the same SAM and embedding (its state set by hand).
        reference = SamPredictor(model.sam)
        reference.features, reference.is_image_set = embedding, True
        reference.original_size, reference.input_size = image.shape[:2], predictor.input_size

        def sam_click(x: int) -> None:
            reference.predict(np.array([[x * step, 500 * step]]), np.array([1]), multimask_output=False)

        # The three take turns, round after round, so that a change in the machine's load
        # (other processes) falls on all of them alike.
        paths = {"new_ms": (click, False), "old_ms": (click, True), "sam_predictor_ms": (sam_click, False)}
        rounds: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(ROUNDS):
            for name, (function, full_resolution) in paths.items():
                predictor.full_resolution_masks = full_resolution
                rounds[name].append(click_latency_ms(function, device, clicks=8))
        predictor.full_resolution_masks = False
        result.update({name: statistics.median(values) for name, values in rounds.items()})
        points, _ = to_sam_frame(np.array([[400 * step, 500 * step]]), np.array([1]), None, image.shape[:2],
                                 model.image_size, device)
        result["parts_ms"] = _decoder_parts(model, embedding, points, device)
        prepared = prepare_image(model, embedding)
        result["prepare_ms"] = _median_ms(lambda: prepare_image(model, embedding), device)
        result["prepared_ms"] = _median_ms(lambda: decode_prepared(model, prepared, points, None, False), device)
        masks, _, low_res = predictor.predict(point_coords=[[400 * step, 500 * step]], point_labels=[1])
        result["mask_fraction"] = float(masks.mean())
        frame, input_size, threshold = model.image_size, predictor.input_size, model.sam.mask_threshold
        for name, logits in (("click", torch.as_tensor(low_res)[None]),
                             ("object", _object_logits(low_res.shape[-1], input_size, frame))):
            for path, full in (("old", True), ("new", False)):
                result[f"masks_{name}_{path}_ms"] = _median_ms(
                    lambda: masks_at_image_size(logits, frame, input_size, image.shape[:2], threshold, full), device
                )

        # Random weights give masks of any size; a click on an object gives an object's mask:
        # the click's decoder and the masks of an object, timed together as one call.
        def object_click() -> None:
            decode_prepared(model, prepared, points, None, False)
            masks_at_image_size(logits, frame, input_size, image.shape[:2], threshold)

        result["object_click_ms"] = _median_ms(object_click, device)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096], help="square image sides (px)")
    parser.add_argument("--sam", default="vit_b", help="SAM variant (tiny: a smoke test in seconds)")
    parser.add_argument("--clip", default="ViT-B-16", help="CLIP model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    args = parser.parse_args(argv)

    import torch

    import napari_clipsam as nc
    from napari_clipsam._machine import cpu_description
    from napari_clipsam.inference.fast_masks import window_is_exact

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = nc.load_model(sam=args.sam, clip=args.clip, sam_checkpoint=None, clip_pretrained=None,
                          device=args.device, precision="fp32")
    device = model.device
    print(f"machine: {cpu_description()}; {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
          f"device {device}")
    print(f"models: SAM {args.sam} + CLIP {args.clip}, random weights; SAM input {model.image_size} px; "
          f"windowed masks exact on this build: {window_is_exact(device)}")
    for size in args.sizes:
        r = run_size(model, size, device)
        met = "met" if r["new_ms"] <= TARGET_MS else "MISSED"
        print(f"\nimage {size}x{size} (encoder once: {r['encoder_s']:.1f} s; the click's mask covers "
              f"{100 * r['mask_fraction']:.0f}% of the image)")
        print(f"  click, new path              {r['new_ms']:8.1f} ms (target <= {TARGET_MS:.0f} ms: {met})")
        print(f"  click on an object of 1/64   {r['object_click_ms']:8.1f} ms (decoder + that object's masks, "
              f"target <= {TARGET_MS:.0f} ms: {'met' if r['object_click_ms'] <= TARGET_MS else 'MISSED'})")
        print(f"  click, old full-res path     {r['old_ms']:8.1f} ms (ratio old / new {r['old_ms'] / r['new_ms']:.2f})")
        print(f"  click, SamPredictor          {r['sam_predictor_ms']:8.1f} ms (segment_anything, same embedding)")
        print(f"  decoder, image prepared      {r['prepared_ms']:8.1f} ms (model/decoder.py: the click's path)")
        print(f"  preparing the image          {r['prepare_ms']:8.1f} ms (once per image, at its first click)")
        parts = r["parts_ms"]
        print(f"  SAM's decoder (model.decode) {parts.pop('decoder'):8.1f} ms")
        for name, ms in parts.items():
            print(f"    {name:26} {ms:8.1f} ms")
        for name, label in (("click", "the click's logits"), ("object", "an object of 1/64 of the image")):
            old, new = r[f"masks_{name}_old_ms"], r[f"masks_{name}_new_ms"]
            print(f"  masks from {label:31} old {old:7.1f} ms  new {new:7.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
