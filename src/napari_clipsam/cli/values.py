"""Parsers of the segment command's option values: each refuses a bad value with what to give."""

from __future__ import annotations

import argparse
import math
import re


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


def diameter(text: str) -> tuple[float, str]:
    """(value, ``"px"`` or ``"um"``): pixels (``24``, ``24px``) or a length (``10um``, ``10 µm``,
    ``0.01mm``) in micrometres, which each file's pixel size turns into its pixels."""
    from .._zarr_files import micrometres_per_unit
    from ..inference.rescale import PIXEL_WORDS

    match = re.fullmatch(r"\s*([-+0-9.eE]+)\s*([^\s0-9.+-][^\s]*)?\s*", text)
    try:
        value = float(match.group(1)) if match else math.nan
    except ValueError:
        value = math.nan
    unit = (match.group(2) or "px").lower() if match else ""
    pixels = unit in PIXEL_WORDS
    factor = 1.0 if pixels else micrometres_per_unit(unit)
    if not math.isfinite(value) or factor is None:
        raise argparse.ArgumentTypeError(
            f"give the object diameter in pixels (24) or with a unit of length (10um, 10µm, 0.01mm); got {text!r}")
    return (value, "px") if pixels else (value * factor, "um")


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


__all__ = ["diameter", "encoder_batch", "halo", "other_concepts", "pixels", "scale", "tile_shape"]
