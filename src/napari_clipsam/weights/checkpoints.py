"""Reading checkpoints safely, and loading them with a check of every key and shape.

Files are read with ``torch.load(..., weights_only=True)`` or safetensors, so loading one can
never run code.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointMismatchError, CorruptFileError, UnsafeCheckpointError

# Encoder width of the published SAM variants, to name the variant a file was made for.
_EMBED_DIM_TO_VARIANT = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}
_PATCH_EMBED_KEY = "image_encoder.patch_embed.proj.weight"

# Wrapper keys of training frameworks (micro-sam / torch_em, Lightning, plain dicts) and module
# prefixes (torch_em's TrainableSAM, DataParallel) around a SAM state dict.
_WRAPPER_KEYS = ("model_state", "state_dict", "model")
_KEY_PREFIXES = ("module.", "sam.")


def read_checkpoint(path: str | os.PathLike) -> Any:
    """What a ``.safetensors`` or PyTorch file holds, read without unpickling any Python object.

    Raises:
        UnsafeCheckpointError: the file holds pickled Python objects (not loaded).
        CorruptFileError: the file is no readable checkpoint (truncated, damaged, another format);
            names the file. A ``ValueError``.
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        message = str(err).lower()
        # PyTorch's safe loader reports a byte that is no pickle instruction ("unsupported
        # operand") like a refused object: that is damage, not code.
        if "weights only" not in message or "unsupported operand" in message:
            raise CorruptFileError(f"{path} is not a readable PyTorch checkpoint (damaged or another kind of "
                                   f"file): {err}") from err
        raise UnsafeCheckpointError(
            f"{path} contains pickled Python objects (not only tensors), which could run code when loaded; "
            "it is not loaded, for safety. If you trust the file, re-save its state dict (tensors only) "
            "with torch.save or safetensors."
        ) from err
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except Exception as err:
        # torch and safetensors report a damaged or foreign file with whatever their parser
        # hit first (SafetensorError, KeyError, RuntimeError, EOFError, ...).
        kind = "safetensors file" if path.suffix == ".safetensors" else "PyTorch checkpoint"
        raise CorruptFileError(
            f"{path} is not a readable {kind} (truncated or another format?): {type(err).__name__}: {err}"
        ) from err


def load_sam_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a SAM state dict (see :func:`read_checkpoint`), unwrapped to SAM's own keys."""
    state = read_checkpoint(path)
    # Frameworks nest the weights: {"model_state": {...}}, {"state_dict": {...}}, ...
    while isinstance(state, Mapping) and not any(isinstance(value, torch.Tensor) for value in state.values()):
        inner = next((state[key] for key in _WRAPPER_KEYS if isinstance(state.get(key), Mapping)), None)
        if inner is None:
            break
        state = inner
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict.")
    tensors = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            name = str(key)
            while name.startswith(_KEY_PREFIXES):
                name = name.split(".", 1)[1]
            tensors[name] = value
    if not tensors:
        raise ValueError(f"{path} holds no tensors at the places a state dict is expected.")
    return tensors


def _architecture_hint(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor]) -> str | None:
    if _PATCH_EMBED_KEY in expected and _PATCH_EMBED_KEY in found:
        want, have = expected[_PATCH_EMBED_KEY].shape[0], found[_PATCH_EMBED_KEY].shape[0]
        if want != have:
            want_name = _EMBED_DIM_TO_VARIANT.get(want, "this model")
            if have in _EMBED_DIM_TO_VARIANT:
                return (f"This looks like a {_EMBED_DIM_TO_VARIANT[have]} checkpoint (encoder embed dim {have}), "
                        f"but the model is {want_name} (embed dim {want}).")
            return f"The checkpoint has encoder embed dim {have}; {want_name} has embed dim {want}."
    if expected and found and not set(expected) & set(found):
        head = next(iter(found)).split(".", 1)[0] + "."
        if all(key.startswith(head) for key in found):
            return f"Every key of the file starts with {head!r}; it may wrap another model."
        return "No key of the file fits the model; it may be a checkpoint of another model."
    return None


def _listed(title: str, lines: list[str], limit: int = 10) -> list[str]:
    more = [f"... and {len(lines) - limit} more"] if len(lines) > limit else []
    return [f"{title} ({len(lines)}):", *[f"  {line}" for line in lines[:limit]], *more] if lines else []


def load_state_dict_checked(
    module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], what: str, assign: bool = False
) -> None:
    """Load ``state_dict`` into ``module`` after checking every key and shape.

    Args:
        what: names the weights in the error, e.g. ``"SAM vit_b checkpoint /path/x.pth"``.
        assign: make the file's tensors the module's weights instead of copying them in (no
            second copy in memory; the module's weights may be on the meta device, and take
            the file's dtypes).

    Raises:
        CheckpointMismatchError: keys are missing or unexpected, or shapes differ; the message
            lists them (10 of each at most) with a hint at the cause.
    """
    expected = module.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    shapes = [
        f"{key}: model {tuple(expected[key].shape)}, file {tuple(state_dict[key].shape)}"
        for key in state_dict
        if key in expected and tuple(expected[key].shape) != tuple(state_dict[key].shape)
    ]
    if missing or unexpected or shapes:
        hint = _architecture_hint(expected, state_dict)
        raise CheckpointMismatchError("\n".join([
            f"The {what} does not fit the model.", *_listed("Missing keys", missing),
            *_listed("Unexpected keys", unexpected), *_listed("Shape mismatches, expected vs found", shapes),
            *([f"Hint: {hint}"] if hint else []),
        ]))
    module.load_state_dict(dict(state_dict), strict=True, assign=assign)


__all__ = ["load_sam_state_dict", "load_state_dict_checked", "read_checkpoint"]
