"""``napari-clipsam segment``: label images from images, by concept and optional prompts."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from .common import job_progress, load_model, model_arguments


def add_parser(commands, parents) -> None:
    seg = commands.add_parser(
        "segment",
        parents=parents,
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
    model_arguments(seg)
    seg.set_defaults(run=run)


def _pairs(text: str, size: int, what: str) -> np.ndarray:
    try:
        values = [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be numbers separated by commas, got {text!r}") from None
    if not values or len(values) % size:
        raise argparse.ArgumentTypeError(f"{what} needs a multiple of {size} numbers, got {text!r}")
    return np.asarray(values).reshape(-1, size)


def run(args: argparse.Namespace) -> int:
    from .._io import read_image, write_labels
    from ..inference.pipeline import SegmentOptions, iter_segment_stack
    from ..inference.predictor import ClipSamPredictor

    inputs: list[tuple[str, np.ndarray | Path]] = [(str(p), p) for p in args.images]
    if args.sample:
        from .._sample_data import sample_image

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
    if (args.refine or args.min_area) and not args.instances:
        raise ValueError("--refine and --min-area apply to objects: add --instances.")
    options = SegmentOptions(
        instances=args.instances, refine=args.refine, min_area=args.min_area, channel=args.channel
    )

    model = load_model(args)
    predictor = ClipSamPredictor(model, image_size=args.image_size)
    for (name, source), output in zip(inputs, outputs):
        image = read_image(source) if isinstance(source, Path) else source
        job = iter_segment_stack(predictor, image, args.concept, args.points, None, args.box, options)
        labels = job_progress(job, name)
        write_labels(output, labels)
        count = int(labels.max()) if args.instances else int((labels > 0).sum())
        unit = "objects" if args.instances else "pixels"
        print(f"{name}: {count} {unit} of '{args.concept}' -> {output}")
    return 0


