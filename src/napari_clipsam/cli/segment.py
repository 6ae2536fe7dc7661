"""``napari-clipsam segment``: label images from images, by concept and optional prompts."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from functools import partial
from pathlib import Path

import numpy as np

from .._zarr_files import is_zarr
from . import values as option_values
from .common import check_outputs, job_progress, load_model, model_arguments

# The pipeline's INSTANCE_METHODS, spelled out: importing the pipeline (scipy) would slow
# every command's start, --help included (a test keeps the two equal).
INSTANCE_METHODS = ("seeds", "components")
DEFAULT_SCORE_THRESHOLD = 0.1  # inference.seeds.DEFAULT_SCORE_THRESHOLD (a test keeps the two equal)


def add_parser(commands, parents) -> None:
    seg = commands.add_parser(
        "segment",
        parents=parents,
        help="segment images (files or a sample) by concept and write label images",
        description=(
            "Segment each image by a text concept and write one label image per input. "
            "TIFF, OME-TIFF and OME-Zarr inputs are read by the axes they name (channels C or S, "
            "planes of T, Z, ... segmented one by one, read lazily); their pixel size goes to the labels. "
            "A 3-D input that names no axes (.npy, a plain zarr array) whose last axis is longer than 8 "
            "is read as a stack of 2-D planes. "
            "Paths are checked before the model loads; a batch stops at the first input that fails, "
            "and the outputs written before it stay."
        ),
    )
    seg.add_argument("images", nargs="*", type=Path,
                     help="image files (TIFF, OME-TIFF, PNG, JPEG, .npy, ...) or zarr folders (OME-Zarr)")
    seg.add_argument("--sample", choices=["nuclei", "cell", "coins", "demo"],
                     help="use a bundled sample image (demo: a generated scene for the demo model, --preset demo)")
    seg.add_argument("-c", "--concept", required=True, help="what to segment, e.g. 'nucleus'")
    seg.add_argument(
        "-o", "--output", type=Path, required=True,
        help="output file (one input) or folder (several inputs); .tif, .png, .npy or .zarr "
             "(a zarr folder, written plane by plane; an OME-Zarr labels group for an OME-Zarr input)",
    )
    seg.add_argument("--instances", action="store_true", help="distinct labels for separate objects")
    seg.add_argument("--refine", action="store_true", help="with --instances: re-prompt SAM per object")
    seg.add_argument("--min-area", type=int, default=0, help="with --instances: drop smaller objects (pixels)")
    seg.add_argument(
        "--instance-method", choices=INSTANCE_METHODS, default=None,
        help="with --instances: 'seeds' keeps touching objects apart, one SAM click per object, "
             "the --points when given (default); 'components' labels connected regions (fast)",
    )
    seg.add_argument("--diameter", type=option_values.diameter, metavar="PX|LENGTH",
                     help="object diameter (a rod's length) in px, or with a unit (10um, 10µm: each file's pixel "
                          "size turns it into its pixels): with --scale auto it picks the reading scale (models that "
                          "list their concepts' diameters: the demo model), with --instances (seeds) it sizes the "
                          "objects (default: estimated)")
    seg.add_argument("--score-threshold", type=float, metavar="X",
                     help="with --instance-method seeds: drop objects SAM scores lower, 0 to 1 "
                          f"(default {DEFAULT_SCORE_THRESHOLD})")
    seg.add_argument(
        "--tile-shape", type=option_values.tile_shape, default="auto", metavar="PX|H,W|auto|none",
        help="segment images larger than SAM's input in tiles of this core size, at native resolution "
             "(default auto: tiles when the image is more than twice the input, or any larger than the input with the "
             "demo model; none: resize the image to the input)",
    )
    seg.add_argument("--halo", type=option_values.halo, default="auto", metavar="PX|H,W|auto",
                     help="pixels of context around each tile (default auto: a quarter of the input)")
    seg.add_argument("--scale", type=option_values.scale, default="auto", metavar="X|auto",
                     help="image pixels per pixel the model reads: 2 reads at half size, for objects larger than the "
                          "model was trained on (default auto: 1, or with --diameter the scale that brings it into the "
                          "diameters the model lists for the concept: the demo model's)")
    seg.add_argument("--encoder-batch", type=option_values.encoder_batch, default="auto", metavar="N|auto",
                     help="tiles or planes per encoder call (default auto: 8 on a GPU, where batches are faster, 1 on a CPU)")
    seg.add_argument(
        "--other-concepts", type=option_values.other_concepts, default="auto", metavar="NAME,NAME|auto|none",
        help="from text alone, concepts that compete for pixels: each region of the mask goes to the concept "
             "that claims most of it, e.g. 'bacterium,spot' (default auto: the concepts the model lists, the demo model's four, "
             "none for the published weights); each costs one more encoder pass",
    )
    seg.add_argument("--augment", choices=("auto", "on", "off"), default="auto",  # views.AUGMENT_WORDS
                     help="from text alone, average the logits over the image's 8 flips and quarter turns, 8 encoder "
                          "passes instead of 1 (default auto: on for the demo model on an image read in one pass, "
                          "off in tiles and stacks and for the published weights)")
    seg.add_argument("--points", type=lambda t: _pairs(t, 2, "--points"), help="positive points 'x,y;x,y'")
    seg.add_argument("--negative-points", type=lambda t: _pairs(t, 2, "--negative-points"), metavar="'x,y;x,y'",
                     help="negative points, with --points or --box: not the object here (a negative point inside "
                          "the mask of --points cuts away the part nearer it than the positive points)")
    seg.add_argument("--box", type=lambda t: _pairs(t, 4, "--box")[0], help="box 'x0,y0,x1,y1'")
    seg.add_argument("--channel", type=_channel, metavar="N|NAME",
                     help="the channel to segment in a multi-channel image: its number (0 first) or its name "
                          "(OME-TIFF, OME-Zarr); default: all channels mixed (RGB stays RGB)")
    seg.add_argument("--overwrite", action="store_true", help="replace existing output files")
    seg.add_argument("--embedding-cache", type=Path, metavar="DIR",
                     help="keep each image's (and tile's) features in this folder, so that a later run on it "
                          "skips the encoders (another concept reuses CLIP's image features only); the folder "
                          "grows: delete it to free the space")
    seg.add_argument(
        "--workers", type=_positive, metavar="N",
        help="segment the files on a local dask cluster of N worker processes, one model each: outputs already "
             "there are skipped (a re-run does what is left), a failing file is reported at the end without "
             "stopping the others (exit status 1)",
    )
    seg.add_argument("--scheduler", metavar="ADDRESS",
                     help="like --workers, on a running dask scheduler (e.g. tcp://host:8786) and its workers")
    model_arguments(seg)
    seg.set_defaults(run=run)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return value


def _channel(text: str) -> int | str:
    try:
        return int(text)
    except ValueError:
        return text


def _pairs(text: str, size: int, what: str) -> np.ndarray:
    try:
        values = [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be numbers separated by commas, got {text!r}") from None
    if not values or len(values) % size:
        raise argparse.ArgumentTypeError(f"{what} needs a multiple of {size} numbers, got {text!r}")
    return np.asarray(values).reshape(-1, size)


def _points(args: argparse.Namespace) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The points of --points and --negative-points together, and their labels (1 positive, 0 negative)."""
    if args.negative_points is None:
        return args.points, None
    if args.points is None and args.box is None:
        raise ValueError("--negative-points say where the object is not: give the object with --points or --box too.")
    positive = np.zeros((0, 2)) if args.points is None else args.points
    labels = np.concatenate([np.ones(len(positive), np.int64), np.zeros(len(args.negative_points), np.int64)])
    return np.concatenate([positive, args.negative_points]), labels


def run(args: argparse.Namespace) -> int:
    from ..batch import segment_to_file

    options = _options(args)
    points, point_labels = _points(args)
    # Everything that can be told from the paths is checked before the model loads (seconds to
    # minutes): a batch must not fail, or lose a file, after that wait.
    inputs = _inputs(args)
    outputs = _outputs(args, inputs)
    _refuse_shared_outputs(inputs, outputs)
    _refuse_replacing_an_input(inputs, outputs)
    distributed = bool(args.workers or args.scheduler)
    if distributed and args.sample:
        raise ValueError("--workers and --scheduler segment files; a --sample is segmented without them.")
    # Distributed runs skip outputs that are there (a re-run does what is left).
    check_outputs([o for o in outputs if args.overwrite or not distributed or not os.path.lexists(o)],
                  overwrite=args.overwrite)
    for name, source in inputs if not distributed else ():  # there a bad file is one failure among the others
        _check_axes_and_channel(name, source, args.channel)

    if distributed:
        return _run_distributed(args, inputs, outputs, options, points, point_labels)
    model = load_model(args)
    # Imported after load_model, which first keeps triton out of CPU-only processes (model/build.py).
    from ..inference.predictor import ClipSamPredictor

    predictor = ClipSamPredictor(model, image_size=args.image_size, embedding_cache=args.embedding_cache)
    for index, ((name, source), output) in enumerate(zip(inputs, outputs)):
        try:
            # Without --overwrite the write never replaces: a file another run wrote meanwhile stays.
            written = segment_to_file(predictor, name, source, output, args.concept, options, points,
                                          args.box, args.channel, args.overwrite,
                                          drain=partial(_drain_naming_the_input, name=name), point_labels=point_labels)
        except (Exception, KeyboardInterrupt):
            if len(inputs) > 1:
                _report_stopped_batch(inputs, index)
            raise
        how = f" ({written.read})" if written.read else ""
        print(f"{name}: {written.count} {written.unit} of '{args.concept}' -> {output}{how}")
    return 0


def _check_axes_and_channel(name: str, source: np.ndarray | Path, channel: int | str | None) -> None:
    """Refuse axes and channels that cannot be segmented, from a TIFF's or zarr's metadata alone."""
    from .._image_files import open_image, refuse_channel_name

    if isinstance(source, Path) and (source.suffix.lower() in {".tif", ".tiff"} or is_zarr(source)):
        open_image(source, channel).close()
    else:  # other files are read whole: that waits for their turn
        refuse_channel_name(name, channel)


def _options(args: argparse.Namespace):
    """The pipeline options the flags say; flags that do not apply are refused with the fix."""
    from ..inference.pipeline import SegmentOptions
    from ..inference.views import augment_from_word

    # --refine and --min-area default to off and 0; the others to None (not given).
    given = [flag for flag, value in (("--refine", args.refine), ("--min-area", args.min_area)) if value]
    given += [flag for flag, value in (("--instance-method", args.instance_method),
                                       ("--score-threshold", args.score_threshold)) if value is not None]
    if given and not args.instances:
        raise ValueError(f"{' and '.join(given)} apply to objects: add --instances.")
    method = args.instance_method or "seeds"
    if "--score-threshold" in given and method != "seeds":
        raise ValueError(f"--score-threshold applies to --instance-method seeds, not to {method}.")
    diameter, unit = args.diameter or (None, "px")
    if diameter is not None and not diameter > 0:
        raise ValueError(f"--diameter must be more than 0 {'pixels' if unit == 'px' else 'µm'} (leave it out to "
                         f"estimate it), got {diameter:g}.")
    if diameter is not None and args.scale != "auto" and not (args.instances and method == "seeds"):
        raise ValueError(f"--diameter sizes the objects of --instances (seeds) and, with --scale auto, picks the "
                         f"reading scale; with --scale {args.scale:g} and no seeded instances it would do nothing: "
                         "leave it out, or use --scale auto.")
    if args.score_threshold is not None and not 0 <= args.score_threshold <= 1:
        raise ValueError(f"--score-threshold must be between 0 and 1, got {args.score_threshold}.")
    extra = {} if args.score_threshold is None else {"score_threshold": args.score_threshold}
    return SegmentOptions(
        instances=args.instances, refine=args.refine, min_area=args.min_area,
        instance_method=method, diameter=diameter, diameter_unit=unit, tile_shape=args.tile_shape, halo=args.halo, scale=args.scale,
        encoder_batch=args.encoder_batch, other_concepts=args.other_concepts,
        augment=augment_from_word(args.augment), **extra,
    )


# What a folder given as input is searched for (zarr folders inside it are inputs too).
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".npy", ".zarr")


def _expand(path: Path) -> list[Path]:
    """An input as files: a folder's images (sorted), a quoted glob's matches, else the path itself."""
    if path.is_dir() and not is_zarr(path):
        found = sorted(child for child in path.iterdir()
                       if child.suffix.lower() in IMAGE_SUFFIXES and not child.name.startswith("."))
        if not found:
            raise FileNotFoundError(errno.ENOENT, f"No images ({', '.join(IMAGE_SUFFIXES)}) in the folder", str(path))
        return found
    if not path.exists() and any(char in str(path) for char in "*?["):
        import glob

        found = sorted(Path(match) for match in glob.glob(str(path)))
        if not found:
            raise FileNotFoundError(errno.ENOENT, "No file matches", str(path))
        return found
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, "No such input file", str(path))
    return [path]


def _inputs(args: argparse.Namespace) -> list[tuple[str, np.ndarray | Path]]:
    """``(name, file or array)`` per input; folders and quoted globs give their files, which must exist."""
    files = [found for path in args.images for found in _expand(path)]
    inputs: list[tuple[str, np.ndarray | Path]] = [(str(p), p) for p in files]
    if args.sample:
        from .._sample_data import sample_image

        inputs.append((f"sample {args.sample}", sample_image(args.sample)))
    if not inputs:
        raise ValueError("Give image files or --sample.")
    return inputs


def _outputs(args: argparse.Namespace, inputs: list[tuple[str, np.ndarray | Path]]) -> list[Path]:
    """One output per input; in a batch folder ``<input>_labels.tif`` (``.zarr`` for a zarr input)."""
    from .._io import LABEL_SUFFIXES

    if len(inputs) == 1 and args.output.suffix:
        if args.output.suffix.lower() not in LABEL_SUFFIXES:
            raise ValueError(f"{args.output}: unknown output format {args.output.suffix!r}; "
                             f"use {', '.join(LABEL_SUFFIXES)}.")
        return [args.output]
    if args.output.suffix:
        raise ValueError(f"Several inputs need an output folder, not the file {args.output}.")
    return [
        args.output / (f"{source.stem}_labels{'.zarr' if is_zarr(source) else '.tif'}" if isinstance(source, Path)
                       else f"{args.sample}_labels.tif")
        for _, source in inputs
    ]


def _refuse_shared_outputs(inputs: list[tuple[str, np.ndarray | Path]], outputs: list[Path]) -> None:
    """Refuse a batch where two inputs would write one file: the later would replace the earlier."""
    groups: dict[str, list[int]] = {}
    for index, output in enumerate(outputs):
        # Names that differ only in letter case are one file on macOS's and Windows' usual
        # filesystems: refused everywhere, so a batch does the same on every system.
        groups.setdefault(os.path.normcase(str(output.resolve())).casefold(), []).append(index)
    for indices in groups.values():
        if len(indices) == 1:
            continue
        names = [inputs[i][0] for i in indices]
        sources = {inputs[i][1].resolve() if isinstance(inputs[i][1], Path) else inputs[i][0] for i in indices}
        if len(sources) == 1:
            raise ValueError(f"The input {names[0]} is given {len(indices)} times; give each input once.")
        targets = list(dict.fromkeys(str(outputs[i]) for i in indices))
        target = targets[0] if len(targets) == 1 else " and ".join(targets) + ", which are one file"
        if len({name.casefold() for name in targets}) < len(targets):
            target += " on macOS and Windows (the names differ only in letter case)"
        raise ValueError(
            f"The inputs {', '.join(names)} would all be written to {target}: outputs are named after "
            "the input file's name, so the later would replace the earlier. Segment them in separate "
            "runs, each with its own --output folder, or rename one of the files."
        )


def _refuse_replacing_an_input(inputs: list[tuple[str, np.ndarray | Path]], outputs: list[Path]) -> None:
    files = [(name, source) for name, source in inputs if isinstance(source, Path)]
    for output in outputs:
        for name, source in files:
            # resolve() sees through other spellings and symbolic links, samefile also hard links.
            if source.resolve() == output.resolve() or (output.exists() and os.path.samefile(source, output)):
                raise ValueError(
                    f"The output {output} is the input {name} itself: its labels would replace the image. "
                    "Choose another --output."
                )


def _run_distributed(args: argparse.Namespace, inputs, outputs: list[Path], options, points, point_labels) -> int:
    """The files on dask.distributed (``napari_clipsam.batch``); exit status 1 when any failed."""
    from ..batch import segment_files
    from .common import model_kwargs

    def report(source: str, output: str | None, error: str | None) -> None:
        if error is None:
            print(f"{source} -> {output}", flush=True)
        else:
            print(f"{source}: FAILED: {error}", file=sys.stderr, flush=True)

    result = segment_files(
        [(source, output) for (_, source), output in zip(inputs, outputs)], args.concept,
        model_args=model_kwargs(args), options=options, image_size=args.image_size, points=points, box=args.box,
        point_labels=point_labels, overwrite=args.overwrite, workers=args.workers, scheduler=args.scheduler, channel=args.channel,
        on_result=report, embedding_cache=args.embedding_cache,
    )
    summary = f"{len(result.written)} written, {len(result.skipped)} already there (skipped)"
    if result.failed:
        print(f"napari-clipsam: {summary}, {len(result.failed)} failed (no output written for them):\n"
              + "\n".join(f"  {source}: {error}" for source, error in result.failed.items()), file=sys.stderr)
        return 1
    print(f"napari-clipsam: {summary}.")
    return 0


def _drain_naming_the_input(job, name: str) -> np.ndarray:
    """The job's labels; an image the pipeline refuses is reported with the input's name."""
    try:
        return job_progress(job, name)
    except ValueError as err:
        if name in str(err):
            raise
        raise ValueError(f"{name}: {err}") from err


def _report_stopped_batch(inputs: list[tuple[str, np.ndarray | Path]], failed: int) -> None:
    # Written outputs are complete and stay (each was named on stdout); the failed input's
    # output was never put in place (writes are atomic). Say where to resume.
    rest = [name for name, _ in inputs[failed + 1:]]
    parts = [f"napari-clipsam: segment stopped at input {failed + 1} of {len(inputs)}, {inputs[failed][0]}, "
             "and wrote nothing for it"]
    if failed:
        parts.append(f"the {failed} output{'s' if failed > 1 else ''} written before it "
                     f"stay{'' if failed > 1 else 's'}")
    if rest:
        parts.append(f"not segmented: {', '.join(rest)}")
    print("; ".join(parts) + ".", file=sys.stderr)
