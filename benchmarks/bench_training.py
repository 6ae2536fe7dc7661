"""Training benchmark: seconds per training step and peak memory, gradient checkpointing on and off.

The default training setup of ``napari-clipsam train`` (vit_b + ViT-B-16, SAM input
1024 unless ``--image-size``, batch 1, text mode, augmentation on), one synthetic
512x512 image with a few objects as the only sample. Each step's time is measured from
the training engine's progress events; the figure is the median of ``--steps`` steps
after one warm-up step. With augmentation, some steps recompute CLIP's features (random
crops) and some reuse them (flips and rotations are cached), as in a real run; the seed
fixes which.

Peak memory is that of the process: resident set on CPU, allocated CUDA memory on GPU.
Each setting runs in its own process so that its peak is its own. Weights are random:
speed does not depend on their values, and no download is needed.

    python benchmarks/bench_training.py                          # vit_b, 3 steps, --device auto
    python benchmarks/bench_training.py --device cuda --steps 5
    python benchmarks/bench_training.py --image-size 512         # the cheaper CPU setting
    python benchmarks/bench_training.py --sam tiny --clip tiny   # a smoke test in seconds
    python benchmarks/bench_training.py --preset demo --device cuda --steps 10   # the demo model's training

``--preset demo`` times the training of the demo model instead (``scripts/train_demo_model.py``:
the demo SAM and CLIP from scratch, every weight trained, text and manual modes, SAM
input 256, batch ``--batch-size``, default 16) on 24 generated scenes.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _common import peak_memory_gb, sync


def _sample(size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """(size, size) uint8 image with six bright discs on a noisy background, and their labels."""
    rng = np.random.default_rng(0)
    image = rng.normal(40, 8, size=(size, size))
    labels = np.zeros((size, size), dtype=np.int32)
    yy, xx = np.mgrid[:size, :size]
    for index, (cy, cx, r) in enumerate(((100, 120, 40), (300, 90, 55), (420, 260, 35),
                                         (150, 380, 50), (330, 400, 45), (250, 250, 30)), start=1):
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        image[disc] = rng.normal(200, 10, size=int(disc.sum()))
        labels[disc] = index
    return np.clip(image, 0, 255).astype(np.uint8), labels


def run_part(checkpointing: bool, args: argparse.Namespace) -> dict:
    import torch

    import napari_clipsam as nc
    from napari_clipsam.training.config import TrainingConfig
    from napari_clipsam.training.data import ConceptDataset
    from napari_clipsam.training.engine import iter_train

    torch.manual_seed(0)
    if args.preset == "demo":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
        from train_demo_model import demo_config, scenes_dataset

        model = nc.load_model(sam="demo", clip="demo", sam_checkpoint=None, clip_pretrained=None,
                              device=args.device, precision="fp32", config=demo_config())
        dataset = scenes_dataset(24, 0, 256)
        config = TrainingConfig(
            mode="both", steps=args.steps + 1, batch_size=args.batch_size or 16, augment=not args.no_augment,
            gradient_checkpointing=checkpointing, image_size=256, patience=0, seed=0, train_base=True,
        )
    else:
        model = nc.load_model(
            sam=args.sam, clip=args.clip, sam_checkpoint=None, clip_pretrained=None,
            device=args.device, precision=args.precision,
        )
        image, labels = _sample()
        dataset = ConceptDataset.from_arrays([(image, labels, "nucleus")])
        config = TrainingConfig(
            mode="text", steps=args.steps + 1, batch_size=args.batch_size or 1, augment=not args.no_augment,
            gradient_checkpointing=checkpointing, image_size=args.image_size, patience=0, seed=0,
        )
    device = model.device
    loaded_gb = peak_memory_gb(device)
    job = iter_train(model, dataset, None, config)
    times = []
    while True:
        sync(device)
        start = time.perf_counter()
        try:
            event = next(job)
        except StopIteration:
            break
        sync(device)
        if event.stage == "training":
            times.append(time.perf_counter() - start)
    return {
        "checkpointing": checkpointing,
        "device": str(device),
        "precision": model.precision,
        "sam_input": config.image_size or model.image_size,
        "batch_size": config.batch_size,
        "mode": config.mode,
        "trainable": model.count_parameters()["trainable"],
        "step_s": statistics.median(times[1:]),  # the first step warms up kernels and allocators
        "steps": times,
        "loaded_gb": loaded_gb,
        "peak_gb": peak_memory_gb(device),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="measured steps after one warm-up step (default 3)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--sam", default="vit_b", help="SAM variant (tiny: a quick smoke test)")
    parser.add_argument("--clip", default="ViT-B-16", help="open_clip model name (tiny: a quick smoke test)")
    parser.add_argument("--image-size", type=int, help="SAM input side (default: the model's, 1024 for vit_b)")
    parser.add_argument("--no-augment", action="store_true", help="train without augmentation")
    parser.add_argument("--preset", choices=["default", "demo"], default="default",
                        help="demo: time the demo model's training (scripts/train_demo_model.py) instead")
    parser.add_argument("--batch-size", type=int, help="samples per step (default 1, 16 with --preset demo)")
    parser.add_argument("--part", choices=["on", "off"], help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    if args.part:
        print(json.dumps(run_part(args.part == "on", args)))
        return 0

    import torch

    import napari_clipsam as nc
    from napari_clipsam._machine import cpu_description

    device = nc.resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"machine: {name}, CPU {cpu_description()}, torch {torch.__version__}, device {device}")
    results = {}
    for part in ("on", "off"):
        completed = subprocess.run([sys.executable, __file__, *argv, "--part", part], capture_output=True, text=True)
        if completed.returncode == 0:
            results[part] = json.loads(completed.stdout.strip().splitlines()[-1])
        else:  # e.g. out of GPU memory without checkpointing: report it, measure the rest
            lines = completed.stderr.strip().splitlines() or [f"exit status {completed.returncode}"]
            results[part] = {"error": lines[-1]}

    some = next((r for r in results.values() if "error" not in r), None)
    if some is not None:
        what = ("demo + demo from scratch, 24 generated 256x256 scenes" if args.preset == "demo"
                else f"{args.sam} + {args.clip}, 512x512 sample")
        print(f"model: {what} (random weights), {some['trainable'] / 1e6:.2f} M trainable, "
              f"{some['precision']}, SAM input {some['sam_input']}, batch {some['batch_size']}, {some['mode']} mode, "
              f"augmentation {'off' if args.no_augment else 'on'}")
    memory = "peak GPU memory allocated" if device.type == "cuda" else "peak resident memory"
    print(f"\ncheckpointing  s/step (median of {args.steps})  {memory:>26}  after loading")
    for part, result in results.items():
        if "error" in result:
            print(f"{part:13}  failed: {result['error']}")
            continue
        print(f"{part:13}  {result['step_s']:21.3f}  {result['peak_gb']:23.2f} GB  {result['loaded_gb']:10.2f} GB")
    if some is not None:
        print("each step, warm-up first (s): " + "; ".join(
            f"{part}: " + " ".join(f"{t:.3f}" for t in result["steps"]) for part, result in results.items()
            if "error" not in result
        ))
    command = " ".join(shlex.quote(a) for a in ["python", "benchmarks/bench_training.py", *argv])
    print(f"\ncommand: {command}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
