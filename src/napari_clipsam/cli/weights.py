"""``napari-clipsam weights``: list the known weights and where they are, or fetch them."""

from __future__ import annotations

import argparse

from .common import DownloadBars, cache_argument


def add_parser(commands, parents) -> None:
    weights = commands.add_parser(
        "weights", parents=parents, help="list known weights, or download them into the cache"
    )
    weights.add_argument("action", choices=["list", "fetch"], help="list the registry, or fetch weights")
    weights.add_argument("names", nargs="*", help="with fetch: SAM registry names, e.g. vit_b vit_b_lm")
    cache_argument(weights)
    weights.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..weights.registry import SAM_WEIGHTS, cache_dir, fetch, weights_path

    folder = cache_dir(args.cache_dir)
    if args.action == "list":
        print(f"cache: {folder}")
        for name, entry in SAM_WEIGHTS.items():
            cached = weights_path(entry, folder).is_file()
            print(f"{name:24} {entry.architecture:6} {'cached ' if cached else 'missing'} {entry.url}")
        print("CLIP weights: open_clip pretrained tags (default 'openai' for ViT-B-16) and hf-hub: names.")
        return 0
    unknown = [name for name in args.names if name not in SAM_WEIGHTS]
    if unknown or not args.names:
        raise ValueError(f"Name SAM weights to fetch, from: {', '.join(SAM_WEIGHTS)}.")
    with DownloadBars() as progress:
        for name in args.names:
            path = fetch(SAM_WEIGHTS[name], cache_dir=folder, progress=progress)
            print(f"{name}: {path}")
    return 0
