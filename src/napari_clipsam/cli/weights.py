"""``napari-clipsam weights``: list the known weights and where they are, or fetch them."""

from __future__ import annotations

import argparse

from .common import DownloadBars, cache_argument

_NAMES_HELP = (
    "with fetch: SAM registry names (vit_b, vit_b_lm, ...), CLIP weights as MODEL/TAG (ViT-B-16/openai), "
    "MODEL (its default tag) or hf-hub:ORG/REPO"
)
_EPILOG = (
    "examples: napari-clipsam weights list; napari-clipsam weights fetch vit_b ViT-B-16/openai "
    "(the default model's weights, for use offline later)"
)


def add_parser(commands, parents) -> None:
    weights = commands.add_parser(
        "weights", parents=parents, help="list known weights, or download them into the cache", epilog=_EPILOG,
        description="List the known weights and whether they are in the cache, or download them into it.",
    )
    weights.add_argument("action", choices=["list", "fetch"], help="list the weights, or fetch the named ones")
    weights.add_argument("names", nargs="*", metavar="NAME", help=_NAMES_HELP)
    cache_argument(weights)
    weights.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..weights.download import find_on_disk
    from ..weights.registry import DEFAULT_CLIP_WEIGHTS, SAM_WEIGHTS, cache_dir, clip_file, fetch_weights, sam_file

    folder = cache_dir(args.cache_dir)
    if args.action == "list":
        print(f"cache: {folder}")
        print(f"SAM checkpoints, in {folder / 'sam'}:")
        for name, entry in SAM_WEIGHTS.items():
            status = "cached " if sam_file(entry, folder).path.is_file() else "missing"
            print(f"  {name:22} {entry.architecture:6} {status} {entry.filename:34} {entry.description}")
        print("CLIP weights (each model's default tag), placed by hand in the folder shown or in the Hub cache:")
        for model, (tag, repo_id) in DEFAULT_CLIP_WEIGHTS.items():
            file = clip_file(model, tag, repo_id, folder)
            found = find_on_disk(file)
            print(f"  {model + '/' + tag:22} {'cached ' if found else 'missing'} {found or file.path}")
        print("Any other open_clip MODEL/TAG and hf-hub:ORG/REPO is fetched on first use too.")
        return 0
    if not args.names:
        raise ValueError(f"Name the weights to fetch: {', '.join(SAM_WEIGHTS)}, or CLIP as MODEL/TAG.")
    with DownloadBars() as progress:
        paths = fetch_weights(args.names, cache_dir=folder, progress=progress)
    for name, path in zip(args.names, paths):
        print(f"{name}: {path}")
    return 0
