"""Reading checkpoints safely and loading them with a check of every key and shape.

Checkpoints are read with ``torch.load(..., weights_only=True)`` or safetensors, so a
file can never run code when it is loaded.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointMismatchError, UnsafeCheckpointError

# Encoder width of the published SAM variants, to name the variant a file was made for.
_EMBED_DIM_TO_VARIANT = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}
_PATCH_EMBED_KEY = "image_encoder.patch_embed.proj.weight"

# Wrapper keys of training frameworks (micro-sam / torch_em, Lightning, plain dicts)
# and module prefixes (torch_em's TrainableSAM, DataParallel) around a SAM state dict.
_WRAPPER_KEYS = ("model_state", "state_dict", "model")
_KEY_PREFIXES = ("module.", "sam.")


def load_sam_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a SAM state dict from a ``.safetensors`` or PyTorch file, unwrapped to SAM's own keys.

    Raises:
        UnsafeCheckpointError: the file holds pickled Python objects (not loaded).
        ValueError: the file is no readable checkpoint.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            loaded: Any = load_file(str(path), device="cpu")
        except Exception as err:
            raise ValueError(f"{path} is not a readable safetensors file: {err}") from err
    else:
        loaded = _torch_load_weights_only(path)
    return _unwrap_state_dict(loaded, path)


def _torch_load_weights_only(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" in str(err).lower():
            raise UnsafeCheckpointError(
                f"{path} contains pickled Python objects (not only tensors), which could run "
                "code when loaded; it is not loaded, for safety. If you trust the file, "
                "re-save its state dict (tensors only) with torch.save or safetensors."
            ) from err
        raise ValueError(f"{path} is not a readable PyTorch checkpoint: {err}") from err
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except Exception as err:
        # torch reports a damaged or foreign file with whatever its parser hit first
        # (KeyError, IndexError, RuntimeError, EOFError, ...).
        raise ValueError(
            f"{path} is not a readable PyTorch checkpoint (truncated or another format?): "
            f"{type(err).__name__}: {err}"
        ) from err


def _unwrap_state_dict(loaded: Any, path: Path) -> dict[str, torch.Tensor]:
    state = loaded
    # Frameworks nest the weights: {"model_state": {...}}, {"state_dict": {...}}, ...
    for _ in range(4):
        if not isinstance(state, Mapping):
            break
        if any(isinstance(value, torch.Tensor) for value in state.values()):
            break
        inner = next(
            (state[key] for key in _WRAPPER_KEYS if isinstance(state.get(key), Mapping)), None
        )
        if inner is None:
            break
        state = inner
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict.")
    tensors = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        name = str(key)
        stripped = True
        while stripped:
            stripped = False
            for prefix in _KEY_PREFIXES:
                if name.startswith(prefix):
                    name = name[len(prefix) :]
                    stripped = True
        tensors[name] = value
    if not tensors:
        raise ValueError(f"{path} holds no tensors at the places a state dict is expected.")
    return tensors


def _is_ignored(key: str, ignore_prefixes: tuple[str, ...]) -> bool:
    for prefix in ignore_prefixes:
        bare = prefix.lstrip(".")
        if key.startswith(bare) or f".{bare}" in key:
            return True
    return False


def _capped(lines: list[str], limit: int = 10) -> list[str]:
    if len(lines) <= limit:
        return lines
    return [*lines[:limit], f"... and {len(lines) - limit} more"]


def _architecture_hint(
    expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor]
) -> str | None:
    if _PATCH_EMBED_KEY in expected and _PATCH_EMBED_KEY in found:
        want = expected[_PATCH_EMBED_KEY].shape[0]
        have = found[_PATCH_EMBED_KEY].shape[0]
        if want != have:
            have_name = _EMBED_DIM_TO_VARIANT.get(have)
            want_name = _EMBED_DIM_TO_VARIANT.get(want, "this model")
            if have_name:
                return (
                    f"This looks like a {have_name} checkpoint (encoder embed dim {have}), "
                    f"but the model is {want_name} (embed dim {want})."
                )
            return f"The checkpoint has encoder embed dim {have}; {want_name} has embed dim {want}."
    if expected and found and not set(expected) & set(found):
        first = next(iter(found))
        head = first.split(".", 1)[0] + "."
        if len(first.split(".")) > 1 and all(key.startswith(head) for key in found):
            return f"Every key of the file starts with {head!r}; it may wrap another model."
        return "No key of the file fits the model; it may be a checkpoint of another model."
    return None


def load_state_dict_checked(
    module: torch.nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    what: str,
    ignore_prefixes: tuple[str, ...] = (),
) -> None:
    """Load ``state_dict`` into ``module`` after checking every key and shape.

    Args:
        what: names the weights in the error, e.g. ``"SAM vit_b checkpoint /path/x.pth"``.
        ignore_prefixes: module parameters whose key starts with one of these, or has a
            dotted component that does (``"clipsam_"`` matches
            ``"image_encoder.blocks.0.clipsam_adapter.weight"``), need not be in the file.

    Raises:
        CheckpointMismatchError: keys are missing or unexpected, or shapes differ; the
            message lists them (10 of each at most) with a hint at the cause.
    """
    ignore_prefixes = tuple(ignore_prefixes)
    expected = module.state_dict()
    ignored = {key for key in expected if _is_ignored(key, ignore_prefixes)}
    missing = [key for key in expected if key not in state_dict and key not in ignored]
    unexpected = [key for key in state_dict if key not in expected]
    shapes = [
        f"{key}: model {tuple(expected[key].shape)}, file {tuple(state_dict[key].shape)}"
        for key in state_dict
        if key in expected and tuple(expected[key].shape) != tuple(state_dict[key].shape)
    ]
    if missing or unexpected or shapes:
        parts = [f"The {what} does not fit the model."]
        if missing:
            parts += [f"Missing keys ({len(missing)}):", *_capped([f"  {k}" for k in missing])]
        if unexpected:
            parts += [
                f"Unexpected keys ({len(unexpected)}):",
                *_capped([f"  {k}" for k in unexpected]),
            ]
        if shapes:
            parts += [
                f"Shape mismatches ({len(shapes)}), expected vs found:",
                *_capped([f"  {line}" for line in shapes]),
            ]
        hint = _architecture_hint(expected, state_dict)
        if hint:
            parts.append(f"Hint: {hint}")
        raise CheckpointMismatchError("\n".join(parts))
    absent_ignored = ignored - set(state_dict)
    result = module.load_state_dict(dict(state_dict), strict=not absent_ignored)
    leftovers = set(result.missing_keys) - absent_ignored
    if leftovers or result.unexpected_keys:
        raise CheckpointMismatchError(
            f"The {what} did not load: missing {sorted(leftovers)[:10]}, "
            f"unexpected {result.unexpected_keys[:10]}."
        )


__all__ = ["load_sam_state_dict", "load_state_dict_checked"]
