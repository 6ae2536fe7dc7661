"""What every ``napari-clipsam`` command shares: the model options, loading, progress bars."""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ..weights.registry import parse_weights_choice


def verbose_parent() -> argparse.ArgumentParser:
    """``-v/--verbose``, accepted before or after the command's name."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log progress and downloads"
    )
    return parent


def model_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that choose and load the model (see :func:`napari_clipsam.load_model`)."""
    from ..model.build_sam import list_sam_variants
    from ..weights.presets import PRESETS

    group = parser.add_argument_group("model")
    group.add_argument(
        "--preset", choices=list(PRESETS),
        help="a model shipped with the plugin instead of SAM and CLIP weights: 'demo' is small CLIP-guided SAM "
        "trained on generated scenes (nucleus, cell membrane, spot, bacterium) for trying the plugin offline, "
        "not for real data; --sam, --clip and their weights are then ignored",
    )
    group.add_argument("--sam", default="vit_b", choices=list_sam_variants(), help="SAM variant (default vit_b)")
    group.add_argument(
        "--sam-checkpoint", type=parse_weights_choice, default="default",
        help="'default' (official), a registry name (e.g. vit_b_lm), a file, or 'none' (random)",
    )
    group.add_argument(
        "--clip", default="ViT-B-16",
        help="open_clip model name, an hf-hub: name, or tiny (default ViT-B-16); "
        "napari_clipsam.list_clip_models() lists them",
    )
    group.add_argument(
        "--clip-pretrained", type=parse_weights_choice, default="default",
        help="'default', an open_clip tag (e.g. openai), a file, or 'none' (random)",
    )
    group.add_argument("--adapters", type=Path, help="trained adapters (.safetensors)")
    group.add_argument(
        "--image-size", type=int, metavar="N",
        help="SAM input side in pixels (default: the size --adapters were trained at, else 1024); "
        "512 is several times faster on a CPU",
    )
    group.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    group.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    cache_argument(group)


def cache_argument(parser) -> None:
    parser.add_argument(
        "--cache-dir", type=Path, help="weights cache (default: NAPARI_CLIPSAM_CACHE or the platform's)"
    )


def check_outputs(paths: Sequence[Path], *, overwrite: bool, option: str = "--output") -> None:
    """Refuse at once, before any work, outputs that exist (unless ``overwrite``) or cannot be written.

    An output named ``*.zarr`` is a zarr folder: replaced (with ``overwrite``) only if it is one.

    Raises:
        OutputExistsError: an output exists and ``overwrite`` is false.
        IsADirectoryError: an output is an existing folder (not a zarr output).
        FileExistsError: a ``*.zarr`` output exists and is not a zarr folder.
        OSError: an output's folder cannot be made or written (the message names the output).
    """
    from .._zarr_files import is_zarr
    from ..errors import OutputExistsError

    zarr_outputs = {path for path in paths if path.suffix.lower() == ".zarr"}
    for path in paths:
        if path.is_dir() and path not in zarr_outputs:
            raise IsADirectoryError(f"The output {path} is a folder, not a file. Choose another {option}.")
    existing = [str(path) for path in paths if os.path.lexists(path)]
    if existing and not overwrite:
        raise OutputExistsError(f"Output exists: {', '.join(existing)}. Choose another {option} or add --overwrite.")
    for path in zarr_outputs:
        if os.path.lexists(path) and not is_zarr(path):
            raise FileExistsError(f"The output {path} exists and is not a zarr folder; it is not replaced. "
                                  f"Choose another {option}.")
    first_in_folder: dict[Path, Path] = {}
    for path in paths:
        first_in_folder.setdefault(path.parent, path)
    for path in first_in_folder.values():
        refuse_unwritable_folder(path)


def refuse_unwritable_folder(output: Path) -> None:
    # The folder may not exist yet: the nearest existing one must take new entries. Making a file
    # there is the only test that also holds for root, read-only mounts and ACLs (os.access is not).
    folder = output.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise NotADirectoryError(f"Cannot write {output}: {folder} is a file, not a folder.")
    try:
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".napari-clipsam-write-test-")
    except OSError as err:
        raise OSError(f"Cannot write {output}: no file can be made in {folder} ({err.strerror or err}).") from err
    os.close(handle)
    os.unlink(probe)


def model_kwargs(args: argparse.Namespace) -> dict:
    """:func:`napari_clipsam.load_model`'s arguments from the model options (:func:`model_arguments`)."""
    return dict(
        sam=args.sam, clip=args.clip, sam_checkpoint=args.sam_checkpoint, clip_pretrained=args.clip_pretrained,
        adapters=args.adapters, device=args.device, precision=args.precision, cache_dir=args.cache_dir,
        preset=args.preset,
    )


def load_model(args: argparse.Namespace):
    """The model the model options (:func:`model_arguments`) describe, with a download bar."""
    from ..model.build import load_model

    with DownloadBars() as progress:
        return load_model(**model_kwargs(args), progress=progress)


class DownloadBars:
    """A ``progress(bytes_done, bytes_total)`` callback drawing one tqdm bar per file (stderr, terminals only)."""

    def __init__(self) -> None:
        self._bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._close()

    def __call__(self, done: int, total: int | None) -> None:
        from tqdm import tqdm

        if self._bar is None or done < self._bar.n or (total is not None and self._bar.total != total):
            self._close()
            self._bar = tqdm(
                total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="downloading", disable=None
            )
        self._bar.update(done - self._bar.n)
        if total is not None and done >= total:
            self._close()

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def job_progress(job, desc: str, unit: str = "step"):
    """Drain a job, showing its ``Progress`` events as a tqdm bar (stderr, terminals only); returns its result."""
    from tqdm import tqdm

    from .._jobs import run

    with tqdm(desc=desc, unit=unit, leave=False, disable=None) as bar:
        def show(event) -> None:
            total = getattr(event, "total", None)
            if total is not None and bar.total != total:
                bar.total = total
                bar.refresh()
            bar.n = getattr(event, "done", bar.n)
            bar.set_postfix_str(event.stage, refresh=True)

        return run(job, show)
