"""Command line: ``napari-clipsam segment`` for batches, ``napari-clipsam weights`` for the cache."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

_NONE_WORDS = {"none", "random"}


def _optional(value: str) -> str | None:
    """'none' (or 'random') on the command line means random weights, i.e. None."""
    return None if value.lower() in _NONE_WORDS else value


def _pairs(text: str, size: int, what: str) -> np.ndarray:
    try:
        values = [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be numbers separated by commas, got {text!r}") from None
    if not values or len(values) % size:
        raise argparse.ArgumentTypeError(f"{what} needs a multiple of {size} numbers, got {text!r}")
    return np.asarray(values).reshape(-1, size)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-clipsam",
        description="CLIP-Guided SAM: segment the objects a text concept names.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress and downloads")
    commands = parser.add_subparsers(dest="command", required=True)

    seg = commands.add_parser(
        "segment",
        help="segment images (files or a sample) by concept and write label images",
        description=(
            "Segment each image by a text concept and write one label image per input. "
            "A 3-D input whose last axis is longer than 8 is read as a stack of 2-D planes."
        ),
    )
    seg.add_argument("images", nargs="*", type=Path, help="image files (TIFF, PNG, JPEG, ...)")
    seg.add_argument("--sample", choices=["nuclei", "cell", "coins"], help="use a bundled sample image")
    seg.add_argument("-c", "--concept", required=True, help="what to segment, e.g. 'nucleus'")
    seg.add_argument(
        "-o", "--output", type=Path, required=True,
        help="output file (one input) or folder (several inputs); .tif, .png or .npy",
    )
    seg.add_argument("--instances", action="store_true", help="distinct labels for separate objects")
    seg.add_argument("--refine", action="store_true", help="with --instances: re-prompt SAM per object")
    seg.add_argument("--min-area", type=int, default=0, help="with --instances: drop smaller objects (pixels)")
    seg.add_argument("--points", type=lambda t: _pairs(t, 2, "--points"), help="positive points 'x,y;x,y'")
    seg.add_argument("--box", type=lambda t: _pairs(t, 4, "--box")[0], help="box 'x0,y0,x1,y1'")
    seg.add_argument("--channel", type=int, help="channel to use in multi-channel images")
    seg.add_argument("--overwrite", action="store_true", help="replace existing output files")
    _model_arguments(seg)

    weights = commands.add_parser("weights", help="list known weights, or download them into the cache")
    weights.add_argument("action", choices=["list", "fetch"], help="list the registry, or fetch weights")
    weights.add_argument("names", nargs="*", help="with fetch: SAM registry names, e.g. vit_b vit_b_lm")
    weights.add_argument("--cache-dir", type=Path, help="weights cache (default: NAPARI_CLIPSAM_CACHE or the platform's)")
    return parser


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--sam", default="vit_b", help="SAM variant: vit_b, vit_l, vit_h (default vit_b)")
    group.add_argument(
        "--sam-checkpoint", type=_optional, default="default",
        help="'default' (official), a registry name (e.g. vit_b_lm), a file, or 'none' (random)",
    )
    group.add_argument("--clip", default="ViT-B-16", help="open_clip model name (default ViT-B-16)")
    group.add_argument(
        "--clip-pretrained", type=_optional, default="default",
        help="'default', an open_clip tag (e.g. openai), a file, or 'none' (random)",
    )
    group.add_argument("--adapters", type=Path, help="trained adapters (.safetensors)")
    group.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    group.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    group.add_argument("--cache-dir", type=Path, help="weights cache (default: NAPARI_CLIPSAM_CACHE or the platform's)")


def _is_stack(image: np.ndarray) -> bool:
    from ._image import MAX_CHANNELS

    return image.ndim == 3 and image.shape[-1] > MAX_CHANNELS or image.ndim == 4


def _segment_command(args: argparse.Namespace) -> int:
    from ._io import read_image, write_labels
    from ._model import load_model
    from ._predictor import ClipSamPredictor
    from ._segment import masks_to_instances, refine_instances

    inputs: list[tuple[str, np.ndarray | Path]] = [(str(p), p) for p in args.images]
    if args.sample:
        from ._sample_data import sample_image

        inputs.append((f"sample {args.sample}", sample_image(args.sample)))
    if not inputs:
        raise ValueError("Give image files or --sample.")
    if len(inputs) == 1 and args.output.suffix:
        outputs = [args.output]
    else:
        if args.output.suffix:
            raise ValueError(f"Several inputs need an output folder, not the file {args.output}.")
        outputs = [
            args.output / (f"{Path(name).stem}_labels.tif" if isinstance(src, Path) else f"{args.sample}_labels.tif")
            for name, src in inputs
        ]
    existing = [str(p) for p in outputs if p.exists()]
    if existing and not args.overwrite:
        raise FileExistsError(f"Output exists: {', '.join(existing)}. Choose another --output or add --overwrite.")

    model = load_model(
        sam=args.sam, clip=args.clip, sam_checkpoint=args.sam_checkpoint, clip_pretrained=args.clip_pretrained,
        adapters=args.adapters, device=args.device, precision=args.precision, cache_dir=args.cache_dir,
        progress=_download_printer() if args.verbose else None,
    )
    predictor = ClipSamPredictor(model)
    predictor.set_concept(args.concept)

    def segment_plane(plane: np.ndarray) -> np.ndarray:
        predictor.set_image(plane, channel=args.channel)
        masks, _, _ = predictor.predict(point_coords=args.points, box=args.box)
        if not args.instances:
            return masks[0].astype(np.int32)
        labels = masks_to_instances(masks[0], min_area=args.min_area)
        return refine_instances(predictor, labels) if args.refine else labels

    for (name, source), output in zip(inputs, outputs):
        image = read_image(source) if isinstance(source, Path) else source
        if _is_stack(image):
            planes = [segment_plane(plane) for plane in image]
            labels = np.stack(planes)
            if args.instances:  # keep labels distinct across planes
                offsets = np.cumsum([0] + [int(p.max()) for p in planes[:-1]])
                labels = np.where(labels > 0, labels + offsets[:, None, None], 0).astype(np.int32)
        else:
            labels = segment_plane(image)
        write_labels(output, labels)
        count = int(labels.max()) if args.instances else int((labels > 0).sum())
        unit = "objects" if args.instances else "pixels"
        print(f"{name}: {count} {unit} of '{args.concept}' -> {output}")
    return 0


def _download_printer():
    def report(done: int, total: int | None) -> None:
        total_text = f"{total / 1e6:.0f} MB" if total else "?"
        print(f"\rdownloading {done / 1e6:.0f} / {total_text}", end="", file=sys.stderr, flush=True)
        if total and done >= total:
            print(file=sys.stderr)

    return report


def _weights_command(args: argparse.Namespace) -> int:
    from ._weights import SAM_WEIGHTS, cache_dir, fetch

    folder = cache_dir(args.cache_dir)
    if args.action == "list":
        print(f"cache: {folder}")
        for name, entry in SAM_WEIGHTS.items():
            cached = (folder / entry.filename).is_file()
            print(f"{name:24} {entry.architecture:6} {'cached ' if cached else 'missing'} {entry.url}")
        print("CLIP weights: open_clip pretrained tags (default 'openai' for ViT-B-16) and hf-hub: names.")
        return 0
    unknown = [name for name in args.names if name not in SAM_WEIGHTS]
    if unknown or not args.names:
        raise ValueError(f"Name SAM weights to fetch, from: {', '.join(SAM_WEIGHTS)}.")
    for name in args.names:
        path = fetch(SAM_WEIGHTS[name], cache_dir=folder, progress=_download_printer())
        print(f"{name}: {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``napari-clipsam`` console script."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        if args.command == "segment":
            return _segment_command(args)
        return _weights_command(args)
    except (ValueError, OSError, RuntimeError) as err:
        # Expected failures (bad input, offline, missing files) read as one clear message.
        if args.verbose:
            raise
        print(f"napari-clipsam: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
