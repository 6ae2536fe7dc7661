"""Parsers of the segment command's option values: each refuses a bad value with what to give."""

from __future__ import annotations

import argparse
import math


def tile_shape(text: str):
    if text.strip().lower() in ("auto", "none"):
        return None if text.strip().lower() == "none" else "auto"
    return pixels(text, "--tile-shape", least=1)


def encoder_batch(text: str):
    if text.strip().lower() == "auto":
        return "auto"
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"give a number of tiles or planes of 1 or more, or auto; got {text!r}")
    return int(text)


def other_concepts(text: str):
    if text.strip().lower() in ("auto", "none"):
        return "auto" if text.strip().lower() == "auto" else None
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"give concept names separated by commas, auto or none; got {text!r}")
    return names


def halo(text: str):
    return "auto" if text.strip().lower() == "auto" else pixels(text, "--halo", least=0)


def pixels(text: str, what: str, least: int) -> tuple[int, int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values) < least:
        raise argparse.ArgumentTypeError(
            f"{what} must be pixels ({'more than 0' if least else '0 or more'}) as N or H,W, or auto, got {text!r}")
    return (values[0], values[-1])


def scale(text: str):
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(
            f"give image pixels per pixel the model reads (more than 0; 2: at half size), or auto; got {text!r}")
    return value


__all__ = ["encoder_batch", "halo", "other_concepts", "pixels", "scale", "tile_shape"]
