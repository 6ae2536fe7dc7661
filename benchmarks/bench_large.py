"""Large images: peak memory and time of tiled segmentation from a zarr image into a zarr output.

For each size, one process (so its peak memory is its own) writes a square zarr image of
generated nuclei (fields of 1024 px from napari_clipsam.synthetic, placed side by side),
then segments it with the demo model at native resolution, tile by tile, into a zarr
labels array, and prints the peak resident memory, the time, the number of tiles and the
time per tile. Memory should stay flat as the image grows (bounded by the tile), time
grow with the number of tiles.

    python benchmarks/bench_large.py                          # 2048 and 8192 px
    python benchmarks/bench_large.py --sizes 2048 4096 16384 --instances
    python benchmarks/bench_large.py --sizes 2048 --tile-shape 448 --halo 32   # bigger tiles, resized
    python benchmarks/bench_large.py --sizes 2048 --device cuda --encoder-batch 8   # tiles 8 at a time
    python benchmarks/bench_large.py --sizes 2048 8192 --device cuda         # on a GPU (its peak printed too)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FIELD = 1024


def _write_image(path: Path, size: int):
    import numpy as np
    import zarr

    from napari_clipsam.synthetic import generate_scene

    image = zarr.open_array(str(path), mode="w", shape=(size, size), chunks=(FIELD, FIELD), dtype="uint8")
    fields = {}
    for r in range(0, size, FIELD):
        for c in range(0, size, FIELD):
            seed = (r // FIELD * 7 + c // FIELD) % 4  # four different fields, repeated
            if seed not in fields:
                fields[seed] = np.asarray(generate_scene(3_000_000 + seed, size=FIELD, kind="nuclei").image)
            image[r : r + FIELD, c : c + FIELD] = fields[seed][: size - r, : size - c]
    return image


def run_size(size: int, tile_shape, halo, instances: bool, threads: int | None, device: str = "cpu",
             encoder_batch="auto", other_concepts="auto") -> dict:
    import torch
    import zarr

    import napari_clipsam as nc
    from napari_clipsam._jobs import run
    from napari_clipsam.inference.pipeline import SegmentOptions, iter_segment_stack
    from napari_clipsam.inference.tiling import plan_tiles, resolve_tiling

    if threads:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as folder:
        image = _write_image(Path(folder) / "image.zarr", size)
        labels = zarr.open_array(str(Path(folder) / "labels.zarr"), mode="w", shape=(size, size),
                                 chunks=(FIELD, FIELD), dtype="int32")
        model = nc.load_model(preset="demo", device=device, precision="fp32")
        predictor = nc.ClipSamPredictor(model)
        options = SegmentOptions(instances=instances, instance_method="components" if instances else "seeds",
                                 tile_shape=tile_shape, halo=halo, encoder_batch=encoder_batch,
                                 other_concepts=None if other_concepts == "none" else "auto")
        tiling = resolve_tiling((size, size), model.image_size, tile_shape, halo)
        tiles = len(plan_tiles((size, size), *tiling)) if tiling else 1
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        run(iter_segment_stack(predictor, image, "nucleus", options=options, out=labels))
        seconds = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # before the count below reads the labels
        objects = max(int(labels[r : r + FIELD].max()) for r in range(0, size, FIELD))
    gpu_gb = torch.cuda.max_memory_allocated() / 1e9 if model.device.type == "cuda" else None
    return {"size": size, "tiles": tiles, "seconds": seconds, "seconds_per_tile": seconds / tiles,
            "peak_gb": peak * 1024 / 1e9, "peak_before_gb": before * 1024 / 1e9, "objects": objects,
            "gpu_gb": gpu_gb}


def _tiles_arg(text: str):
    return text if text in ("auto",) else int(text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--tile-shape", type=_tiles_arg, default="auto")
    parser.add_argument("--halo", type=_tiles_arg, default="auto")
    parser.add_argument("--instances", action="store_true", help="objects (connected components per tile, stitched)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ...: where the model runs")
    parser.add_argument("--encoder-batch", type=lambda t: t if t == "auto" else int(t), default="auto",
                        help="tiles per encoder call (auto: 8 on CUDA, 1 on CPU)")
    parser.add_argument("--other-concepts", choices=["auto", "none"], default="auto",
                        help="auto: the demo model's other concepts compete (nc.segment's default); none: nucleus alone")
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.size:
        print(json.dumps(run_size(args.size, args.tile_shape, args.halo, args.instances, args.threads,
                                  args.device, args.encoder_batch, args.other_concepts)))
        return 0
    from napari_clipsam._machine import cpu_description

    print(f"machine: {cpu_description()}; device {args.device}; demo model (256 px input), tile_shape {args.tile_shape}, halo {args.halo}, "
          f"encoder batch {args.encoder_batch}, {'instances' if args.instances else 'semantic'}, "
          f"other concepts {args.other_concepts}")
    print(f"{'size':>7} {'tiles':>6} {'time s':>8} {'s/tile':>7} {'peak GB':>8} {'(before) GB':>11} {'objects':>8}")
    for size in args.sizes:
        command = [sys.executable, __file__, "--size", str(size), "--tile-shape", str(args.tile_shape),
                   "--halo", str(args.halo), "--device", args.device, "--encoder-batch", str(args.encoder_batch),
                   "--other-concepts", args.other_concepts] + (["--instances"] if args.instances else []) + (
                   ["--threads", str(args.threads)] if args.threads else [])
        result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        print(f"{size:>7} {result['tiles']:>6} {result['seconds']:>8.1f} {result['seconds_per_tile']:>7.3f} "
              f"{result['peak_gb']:>8.2f} {result['peak_before_gb']:>11.2f} {str(result['objects']):>8}"
              + (f"  GPU peak {result['gpu_gb']:.2f} GB" if result["gpu_gb"] is not None else ""), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
