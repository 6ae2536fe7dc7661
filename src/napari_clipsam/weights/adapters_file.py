"""The adapters file: trained weights in safetensors, with metadata that names what they fit.

The file holds every trainable tensor (adapters, prompt encoder, mask decoder, and
CLIP's attention when it was co-trained) under the model's own parameter names or, for a
model trained from scratch such as the demo model (metadata ``weights: "all"``), every
weight of the model, and
string metadata: the format and its version, the SAM and CLIP names, the model
configuration as JSON, the concepts trained on, and the package version. Only this
module reads and writes the format; it knows nothing of the model's code (the model
hands in its configuration parser and its parameter shapes).

Adapters files are shared between people, so a file is untrusted input: every entry is
checked against :data:`METADATA_SCHEMA` and every tensor for its name, type, shape and
finiteness before anything is handed to a model (:func:`read_adapters`). A refusal is
one :class:`~napari_clipsam.errors.InvalidAdaptersError` that names the file and the entry.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence, TypeVar

from ..errors import AdaptersMismatchError, InvalidAdaptersError

if TYPE_CHECKING:
    import torch

ADAPTERS_FORMAT = "napari-clipsam-adapters"
ADAPTERS_FORMAT_VERSION = "1"

# SAM's patch is 16 px at every variant; below 4 patches SAM's grid degenerates, and above
# 4096 px one image asks for tens of GB (a file could otherwise make the first predict
# allocate whatever it names).
TRAINING_IMAGE_SIZE_MULTIPLE = 16
TRAINING_IMAGE_SIZE_RANGE = (64, 4096)
_MAX_NAME_CHARACTERS = 256
_MAX_CONCEPTS = 4096
_MAX_CONCEPT_CHARACTERS = 1000
_MAX_DESCRIPTION_CHARACTERS = 2000
# What the tensors cover: the trainable weights (adapters, decoder...) on a base model
# loaded apart, or every weight of the model (trained from scratch).
WEIGHTS_KINDS = ("trainable", "all")

# Names as safetensors spells the dtypes it stores; anything else (integers, bool, fp8) is
# refused rather than cast, which would silently turn a wrong file into weights.
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")

T = TypeVar("T")


def _package_version() -> str:
    try:
        from .._version import version
    except ImportError:
        return "unknown"
    return version


def _name(value: str) -> str | None:
    if not value or len(value) > _MAX_NAME_CHARACTERS or not value.isprintable():
        return f"must be a non-empty printable text of at most {_MAX_NAME_CHARACTERS} characters"
    return None


def _json_object(value: str) -> str | None:
    try:
        parsed = json.loads(value)
    except ValueError:
        return "is not valid JSON"
    return None if isinstance(parsed, dict) else "must be a JSON object"


def _concepts(value: str) -> str | None:
    try:
        parsed = json.loads(value)
    except ValueError:
        return "is not valid JSON"
    if (not isinstance(parsed, list) or len(parsed) > _MAX_CONCEPTS
            or not all(isinstance(c, str) and 0 < len(c) <= _MAX_CONCEPT_CHARACTERS for c in parsed)):
        return (f"must be a JSON list of at most {_MAX_CONCEPTS} non-empty texts of at most "
                f"{_MAX_CONCEPT_CHARACTERS} characters")
    return None


def _training_image_size(value: str) -> str | None:
    low, high = TRAINING_IMAGE_SIZE_RANGE
    if not (value.isascii() and value.isdigit() and low <= int(value) <= high
            and int(value) % TRAINING_IMAGE_SIZE_MULTIPLE == 0):
        return f"must be a multiple of {TRAINING_IMAGE_SIZE_MULTIPLE} from {low} to {high}"
    return None


def _training_mode(value: str) -> str | None:
    from ..training.config import MODES  # no torch there

    return None if value in MODES else f"must be one of {', '.join(MODES)}"


def _description(value: str) -> str | None:
    if not value or len(value) > _MAX_DESCRIPTION_CHARACTERS or not value.replace("\n", " ").isprintable():
        return f"must be a non-empty printable text of at most {_MAX_DESCRIPTION_CHARACTERS} characters"
    return None


def _equals(expected: str, problem: str) -> Callable[[str], str | None]:
    return lambda value: None if value == expected else problem


# Every entry a file may hold: name -> (required, check returning a problem or None).
METADATA_SCHEMA: dict[str, tuple[bool, Callable[[str], str | None]]] = {
    "format": (True, _equals(ADAPTERS_FORMAT, f"must be {ADAPTERS_FORMAT!r}")),
    "format_version": (True, _equals(
        ADAPTERS_FORMAT_VERSION, f"must be {ADAPTERS_FORMAT_VERSION!r}, the version this napari-clipsam reads "
                                 "(update napari-clipsam for a newer file)")),
    "sam": (True, _name),
    "clip": (True, _name),
    "config": (True, _json_object),
    "concepts": (True, _concepts),
    "napari_clipsam_version": (True, _name),
    "training_mode": (False, _training_mode),
    "training_image_size": (False, _training_image_size),
    "weights": (False, lambda value: None if value in WEIGHTS_KINDS else f"must be one of {', '.join(WEIGHTS_KINDS)}"),
    "description": (False, _description),
}


def holds_all_weights(metadata: Mapping[str, str]) -> bool:
    """Whether a (checked) file's tensors are every weight of the model, not only the trainable ones."""
    return metadata.get("weights") == "all"


def _invalid(path: str | os.PathLike, entry: str, problem: str) -> InvalidAdaptersError:
    return InvalidAdaptersError(f"{path} is not a valid adapters file: {entry} {problem}. Nothing of it was loaded.")


def check_adapters_metadata(path: str | os.PathLike, metadata: Mapping[str, Any]) -> None:
    """Check ``metadata`` against :data:`METADATA_SCHEMA`; ``path`` names the file in the error.

    Raises:
        InvalidAdaptersError: an entry is missing, unknown, not a string, or out of range.
    """
    if metadata.get("format") != ADAPTERS_FORMAT:
        raise InvalidAdaptersError(
            f"{path} is not a napari-clipsam adapters file (its metadata has no format={ADAPTERS_FORMAT!r})."
        )
    # The version first: a newer file's new entries are best explained by its version.
    _check_entry(path, metadata, "format_version")
    unknown = sorted(str(key) for key in set(metadata) - set(METADATA_SCHEMA))
    if unknown:
        raise _invalid(path, "metadata", f"has unknown entries {unknown[:10]}")
    for key in METADATA_SCHEMA:
        _check_entry(path, metadata, key)


def _check_entry(path: str | os.PathLike, metadata: Mapping[str, Any], key: str) -> None:
    required, check = METADATA_SCHEMA[key]
    if key not in metadata:
        if required:
            raise _invalid(path, f"metadata entry {key!r}", "is missing")
        return
    value = metadata[key]
    problem = "must be a string" if not isinstance(value, str) else check(value)
    if problem:
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        raise _invalid(path, f"metadata entry {key!r} ({shown})", problem)


def adapters_metadata(
    *, sam: str, clip: str, config_json: str, concepts: Sequence[str] = (), extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The metadata block of an adapters file (all values strings, as safetensors requires).

    ``extra`` holds the optional entries of :data:`METADATA_SCHEMA` (``training_mode``,
    ``training_image_size``); the block is checked as a reader will check it.
    """
    metadata = {
        **(extra or {}),
        "format": ADAPTERS_FORMAT,
        "format_version": ADAPTERS_FORMAT_VERSION,
        "sam": sam,
        "clip": clip,
        "config": config_json,
        "concepts": json.dumps(list(concepts)),
        "napari_clipsam_version": _package_version(),
    }
    check_adapters_metadata("the adapters to write", metadata)
    return metadata


def write_adapters_file(
    path: str | os.PathLike, tensors: Mapping, metadata: Mapping[str, str], *, replace: bool = True
) -> Path:
    """Write ``tensors`` with ``metadata`` atomically: a crash mid-write leaves an earlier file intact.

    The file is checked as a reader checks it first, so nothing is written that would be
    refused when loaded (non-finite or non-float weights, bad metadata).

    Raises:
        InvalidAdaptersError: the tensors or metadata would make an invalid file (nothing written).
        OutputExistsError: ``replace=False`` and a file is at ``path`` (it stays as it was).
    """
    from safetensors.torch import save_file

    from .._io import write_atomically

    check_adapters_metadata(path, metadata)
    for name, tensor in tensors.items():
        problem = _tensor_problem(tensor)
        if problem:
            raise InvalidAdaptersError(f"Refusing to write {path}: tensor {name!r} {problem}.")
    return write_atomically(
        path, lambda temporary: save_file(dict(tensors), temporary, metadata=dict(metadata)), replace=replace
    )


def _open(path: Path):
    from safetensors import safe_open

    if not path.is_file():
        raise FileNotFoundError(f"Adapters file {path} does not exist.")
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except Exception as err:  # safetensors reports every damage as SafetensorError
        raise InvalidAdaptersError(
            f"{path} is not a readable safetensors file (damaged or truncated?): {err}"
        ) from err


def read_adapters_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata of an adapters file, checked against :data:`METADATA_SCHEMA`.

    Raises:
        FileNotFoundError: no file at ``path``.
        InvalidAdaptersError: not a readable adapters file of a version this package reads,
            or an entry missing, unknown or out of range; the message names the entry.
    """
    path = Path(path)
    with _open(path) as handle:
        metadata = handle.metadata() or {}
    check_adapters_metadata(path, metadata)
    return metadata


def read_adapters_config(path: str | os.PathLike, parse_config: Callable[[str], T],
                         metadata: Mapping[str, str] | None = None) -> T:
    """The model configuration recorded in an adapters file, parsed by ``parse_config``
    (``ClipSamConfig.from_json``), whose own checks (types, ranges) apply.

    Raises:
        InvalidAdaptersError: the configuration is refused by ``parse_config``; names the file.
    """
    metadata = read_adapters_metadata(path) if metadata is None else metadata
    try:
        return parse_config(metadata["config"])
    except (ValueError, TypeError, KeyError) as err:
        raise _invalid(path, "metadata entry 'config'", f"is refused: {err}") from None


def _tensor_problem(tensor: torch.Tensor) -> str | None:
    import torch

    if not tensor.is_floating_point() or tensor.dtype not in (torch.float16, torch.bfloat16, torch.float32,
                                                               torch.float64):
        return f"has dtype {tensor.dtype}; adapters weights must be floating point (float16, bfloat16, float32, float64)"
    # Checked in float32, the models' dtype: float64 values beyond its range would become inf.
    if not bool(torch.isfinite(tensor.detach().to(torch.float32)).all()):
        return "has NaN or infinite values"
    return None


def read_adapters_tensors(
    path: str | os.PathLike, shapes: Mapping[str, Sequence[int]] | None = None
) -> dict[str, torch.Tensor]:
    """The tensors of an adapters file, on the CPU, checked to be floating point and finite and,
    with ``shapes`` (name -> shape of the model's trainable parameters), to be exactly those.

    Names, dtypes and shapes are read from the file's header before any tensor is loaded,
    so a wrong file costs no memory.

    Raises:
        InvalidAdaptersError: a tensor missing, unknown, of another shape or dtype, or not finite.
    """
    path = Path(path)
    with _open(path) as handle:
        names = set(handle.keys())
        expected = names if shapes is None else set(shapes)
        missing, unexpected = sorted(expected - names), sorted(names - expected)
        if missing or unexpected:
            raise _invalid(path, "its tensors", f"do not match the model's trainable weights: missing "
                           f"{missing[:10]}{' ...' if len(missing) > 10 else ''}, unexpected "
                           f"{unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}")
        for name in sorted(names):
            header = handle.get_slice(name)
            if header.get_dtype() not in FLOAT_DTYPES:
                raise _invalid(path, f"tensor {name!r}", f"has dtype {header.get_dtype()}; adapters weights "
                               f"must be floating point ({', '.join(FLOAT_DTYPES)})")
            if shapes is not None and tuple(header.get_shape()) != tuple(shapes[name]):
                raise _invalid(path, f"tensor {name!r}", f"has shape {tuple(header.get_shape())}; the model's "
                               f"is {tuple(shapes[name])}")
        tensors = {name: handle.get_tensor(name) for name in sorted(names)}
    for name, tensor in tensors.items():
        problem = _tensor_problem(tensor)
        if problem:
            raise _invalid(path, f"tensor {name!r}", problem)
    return tensors


def read_adapters(
    path: str | os.PathLike,
    *,
    sam: str,
    clip: str,
    config: Any,
    parse_config: Callable[[str], Any],
    shapes: Mapping[str, Sequence[int]],
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of an adapters file, checked to be valid and to fit a model.

    Args:
        sam, clip: the model's SAM and CLIP names.
        config: the model's configuration; ``parse_config(text)`` (``ClipSamConfig.from_json``)
            parses the file's, and the two must be equal.
        shapes: name -> shape of the model's trainable parameters.

    Everything is checked before this returns, so a caller that assigns the tensors only
    afterwards leaves its model untouched by any refusal.

    Raises:
        InvalidAdaptersError: the file is damaged, malformed or unsafe (see
            :func:`read_adapters_metadata`, :func:`read_adapters_tensors`).
        AdaptersMismatchError: a valid file made for another base model or configuration.
    """
    metadata = read_adapters_metadata(path)
    file_config = read_adapters_config(path, parse_config, metadata)
    problems = []
    if metadata["sam"] != sam:
        problems.append(f"SAM {metadata['sam']!r} in the file, {sam!r} in the model")
    if metadata["clip"] != clip:
        problems.append(f"CLIP {metadata['clip']!r} in the file, {clip!r} in the model")
    if file_config != config:
        problems.append(f"configuration {file_config.to_dict()} in the file, {config.to_dict()} in the model")
    if problems:
        raise AdaptersMismatchError(
            f"Adapters {path} do not fit this model: " + "; ".join(problems)
            + ". Load them with napari_clipsam.load_model(sam=..., clip=..., adapters=path) "
            "using the names in the file, which also applies the file's configuration."
        )
    return read_adapters_tensors(path, shapes), metadata


def preferred_image_size(metadata: Mapping[str, str], native_size: int) -> int | None:
    """The SAM input side the adapters were trained at, None when it is the model's own."""
    size = metadata.get("training_image_size")
    return int(size) if size and int(size) != native_size else None


__all__ = [
    "ADAPTERS_FORMAT",
    "ADAPTERS_FORMAT_VERSION",
    "METADATA_SCHEMA",
    "TRAINING_IMAGE_SIZE_MULTIPLE",
    "TRAINING_IMAGE_SIZE_RANGE",
    "adapters_metadata",
    "check_adapters_metadata",
    "preferred_image_size",
    "read_adapters",
    "read_adapters_config",
    "read_adapters_metadata",
    "read_adapters_tensors",
    "write_adapters_file",
]
