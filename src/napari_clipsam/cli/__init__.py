"""The ``napari-clipsam`` command: ``segment`` for batches, ``train`` and ``evaluate`` for
few-shot adaptation, ``weights`` for the cache.

Each command lives in its own module (``segment.py``, ``train.py``, ``weights.py``) and
imports the model code only when it runs, so ``--help`` and ``weights list`` are quick.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from . import segment, train, weights
from .common import verbose_parent


def build_parser() -> argparse.ArgumentParser:
    parents = [verbose_parent()]
    parser = argparse.ArgumentParser(
        prog="napari-clipsam",
        description="CLIP-Guided SAM: segment the objects a text concept names.",
        parents=parents,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    segment.add_parser(commands, parents)
    train.add_parsers(commands, parents)
    weights.add_parser(commands, parents)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``napari-clipsam`` console script."""
    from ..errors import ClipSamError

    args = build_parser().parse_args(argv)
    verbose = getattr(args, "verbose", False)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print(f"napari-clipsam: {args.command} interrupted", file=sys.stderr)
        return 130
    except (ClipSamError, ValueError, OSError, RuntimeError) as err:
        # Expected failures (bad input, offline, missing files) read as one clear message.
        if verbose:
            raise
        print(f"napari-clipsam: error: {err}", file=sys.stderr)
        return 2


__all__ = ["build_parser", "main"]
