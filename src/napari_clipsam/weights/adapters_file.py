"""The adapters file: trained weights in safetensors, with metadata that names what they fit.

The file holds every trainable tensor (adapters, prompt encoder, mask decoder, and
CLIP's attention when it was co-trained) under the model's own parameter names, and
string metadata: the format and its version, the SAM and CLIP names, the model
configuration as JSON, the concepts trained on, and the package version. Only this
module reads and writes the format; it knows nothing of the model's code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping, Sequence

ADAPTERS_FORMAT = "napari-clipsam-adapters"
ADAPTERS_FORMAT_VERSION = "1"


def _package_version() -> str:
    try:
        from .._version import version
    except ImportError:
        return "unknown"
    return version


def adapters_metadata(
    *, sam: str, clip: str, config_json: str, concepts: Sequence[str] = (), extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The metadata block of an adapters file (all values strings, as safetensors requires)."""
    return {
        **(extra or {}),
        "format": ADAPTERS_FORMAT,
        "format_version": ADAPTERS_FORMAT_VERSION,
        "sam": sam,
        "clip": clip,
        "config": config_json,
        "concepts": json.dumps(list(concepts)),
        "napari_clipsam_version": _package_version(),
    }


def write_adapters_file(path: str | os.PathLike, tensors: Mapping, metadata: Mapping[str, str]) -> Path:
    """Write ``tensors`` with ``metadata`` atomically: a crash mid-write leaves an earlier file intact."""
    from safetensors.torch import save_file

    from .._io import write_atomically

    return write_atomically(path, lambda temporary: save_file(dict(tensors), temporary, metadata=dict(metadata)))


def read_adapters_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata of an adapters file, checked to be ours and of a version we read."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Adapters file {path} does not exist.")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as err:
        raise ValueError(f"{path} is not a readable safetensors file: {err}") from err
    if metadata.get("format") != ADAPTERS_FORMAT:
        raise ValueError(
            f"{path} is not a napari-clipsam adapters file (its metadata has no format={ADAPTERS_FORMAT!r})."
        )
    if metadata.get("format_version") != ADAPTERS_FORMAT_VERSION:
        raise ValueError(
            f"{path} has adapters format version {metadata.get('format_version')}; this "
            f"napari-clipsam reads version {ADAPTERS_FORMAT_VERSION}. Update napari-clipsam."
        )
    return metadata


def read_adapters_tensors(path: str | os.PathLike) -> dict:
    """The tensors of an adapters file, on the CPU."""
    from safetensors.torch import load_file

    return load_file(str(path), device="cpu")


__all__ = [
    "ADAPTERS_FORMAT",
    "ADAPTERS_FORMAT_VERSION",
    "adapters_metadata",
    "read_adapters_metadata",
    "read_adapters_tensors",
    "write_adapters_file",
]
