"""Building CLIP-guided SAM: find the weights, build the networks, load, attach adapters.

The builder is apart from the networks (``clipsam.py``), as ``build_sam.py`` is in
segment-anything; files and formats live in ``napari_clipsam.weights``.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..errors import AdaptersMismatchError, CheckpointMismatchError
from ..weights.download import ProgressCallback
from .build_sam import build_sam
from .config import ClipSamConfig
from .device import avoid_triton_on_cpu_only_machines, resolve_device, resolve_precision

if TYPE_CHECKING:  # imported in load_model, after the process is ready for them (see there)
    from .clipsam import ClipSamModel


def load_model(
    sam: str = "vit_b",
    clip: str = "ViT-B-16",
    sam_checkpoint: str | os.PathLike | None = "default",
    clip_pretrained: str | os.PathLike | None = "default",
    adapters: str | os.PathLike | None = None,
    device: str | torch.device = "auto",
    precision: str = "auto",
    config: ClipSamConfig | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: ProgressCallback | None = None,
    preset: str | None = None,
) -> ClipSamModel:
    """Build CLIP-guided SAM and load its weights.

    Args:
        preset: a model shipped in the package instead of downloaded weights:
            ``"demo"``, small CLIP-guided SAM trained on generated scenes (its concepts
            in ``model.concepts``; for trying the plugin offline, not for real data).
            ``sam``, ``clip``, the checkpoints and ``config`` then come from the preset;
            ``adapters`` may still add weights fine-tuned on top of it.
        sam: SAM variant, ``"vit_b"``, ``"vit_l"``, ``"vit_h"`` or ``"tiny"`` (tests).
        clip: open_clip model name (``"ViT-B-16"``), an ``"hf-hub:"`` name, or ``"tiny"``.
        sam_checkpoint: ``"default"`` (the official checkpoint of the variant), a
            registry name such as ``"vit_b_lm"`` (micro-sam), a file path, or None
            for random weights (no network).
        clip_pretrained: ``"default"``, an open_clip pretrained tag (``"openai"``), a
            file path, or None for random weights.
        adapters: a safetensors file saved by :meth:`ClipSamModel.save_adapters`; its
            configuration is used.
        device: ``"auto"`` (CUDA, MPS, CPU), or a torch device name.
        precision: ``"auto"``, ``"fp32"`` or ``"bf16"`` (autocast of the image towers).
        config: model configuration; defaults to the paper's.
        cache_dir: where downloaded weights live (default: ``NAPARI_CLIPSAM_CACHE`` or the
            platform's cache folder).
        progress: ``progress(bytes_done, bytes_total)`` during downloads.

    Raises:
        WeightsUnavailableError: weights are neither on disk nor downloadable; the message
            lists every missing file with its URL, the path to save it as and its hash.
        AmbiguousWeightsError: a CLIP weights file fits a QuickGELU and a GELU network alike.
    """
    # Before open_clip and segment_anything import torchvision, which imports triton: with
    # napari drawing through Mesa's software OpenGL that would crash the process, and on any
    # machine without CUDA it costs ~75 MB of resident memory and ~1.5 s for nothing.
    avoid_triton_on_cpu_only_machines()
    from ..weights.adapters_file import read_adapters_config
    from ..weights.checkpoints import load_sam_state_dict, load_state_dict_checked
    from ..weights.registry import resolve_weights
    from .clip import build_clip, clip_file_cfg, get_tokenizer
    from .clipsam import ClipSamModel

    if preset is not None:
        return _load_preset(preset, adapters, device, precision, config)
    if adapters is not None:
        # Checked (InvalidAdaptersError naming the file) before anything is built.
        file_config = read_adapters_config(adapters, ClipSamConfig.from_json)
        if config is not None and config != file_config:
            raise AdaptersMismatchError(
                f"The adapters {adapters} were trained with configuration "
                f"{file_config.to_dict()}, which differs from the one given. Leave config=None."
            )
        config = file_config
    config = config or ClipSamConfig()
    torch_device = resolve_device(device)
    resolved_precision = resolve_precision(precision, torch_device)

    # Every file is found (or downloaded) before anything is built: one error lists all
    # that are missing, and a CLIP file of unclear network fails before any download.
    sam_path, clip_path, clip_cfg = resolve_weights(
        sam, sam_checkpoint, clip, clip_pretrained, cache_dir=cache_dir, progress=progress,
        clip_file_cfg=partial(clip_file_cfg, cache_dir=cache_dir),
    )

    sam_model = build_sam(sam)
    if sam_path is not None:
        dtypes = _free_weights(sam_model)
        state_dict = load_sam_state_dict(sam_path)
        load_state_dict_checked(sam_model, state_dict, what=f"SAM {sam} checkpoint {sam_path}", assign=True)
        del state_dict
        _restore_dtypes(sam_model, dtypes)

    clip_model = build_clip(
        clip,
        quick_gelu=bool(clip_cfg.get("quick_gelu", False)),
        model_cfg=clip_cfg.get("model_cfg"),
        preprocess_cfg=clip_cfg,
    )
    if clip_path is not None:
        _load_clip_weights(clip_model, clip, clip_path)

    model = ClipSamModel(
        sam_model,
        clip_model,
        get_tokenizer(clip, model_cfg=clip_cfg.get("model_cfg")),
        config,
        sam_name=sam,
        clip_name=clip,
        device=torch_device,
        precision=resolved_precision,
    )
    if adapters is not None:
        model.load_adapters(adapters)
    return model


def _load_preset(name: str, adapters, device, precision: str, config: ClipSamConfig | None) -> ClipSamModel:
    """A model shipped in the package (``weights/presets.py``), with optional adapters trained on it."""
    from ..weights.presets import get_preset, preset_path

    preset = get_preset(name)
    path = preset_path(name)
    model = load_model(preset.sam, preset.clip, None, None, adapters=path, device=device, precision=precision,
                       config=config)
    if adapters is not None:
        model.load_adapters(adapters)
    model.concept_diameters = dict(preset.concept_diameters)
    return model


def _free_weights(module: nn.Module) -> dict[str, torch.dtype]:
    """Move the weights a checkpoint will replace to the meta device; returns their dtypes by name.

    Reading a checkpoint while the randomly initialised weights are still in memory holds every
    weight twice (SAM vit_b 375 MB, CLIP ViT-B-16 600 MB): freed first, the file's tensors then
    become the weights (``load_state_dict(..., assign=True)``), and :func:`_restore_dtypes` gives
    each the dtype it was built with. Buffers that are not saved (SAM's pixel mean and std, CLIP's
    causal mask) stay as built. A load that fails leaves the module unusable; it is not returned.
    Weights read from a ``.safetensors`` file stay mapped from it (safetensors maps the file):
    their pages are read when first used, and count in the resident set only from then on.
    """
    dtypes = {}
    for name, tensor in module.state_dict(keep_vars=True).items():
        dtypes[name] = tensor.dtype
        _replace_tensor(module, name, tensor, tensor.detach().to("meta"))
    return dtypes


def _restore_dtypes(module: nn.Module, dtypes: dict[str, torch.dtype]) -> None:
    """Give the weights assigned from a file the dtype the model was built with (a float16 file
    loads as float32, as copying into the built weights did), in contiguous memory."""
    for name, tensor in module.state_dict(keep_vars=True).items():
        if tensor.dtype != dtypes[name] or not tensor.is_contiguous():
            _replace_tensor(module, name, tensor, tensor.detach().to(dtypes[name], memory_format=torch.contiguous_format))


def _replace_tensor(module: nn.Module, name: str, tensor: torch.Tensor, value: torch.Tensor) -> None:
    """Put ``value`` in place of the parameter or buffer ``name`` (now ``tensor``), a parameter keeping its requires_grad."""
    owner_name, _, attribute = name.rpartition(".")
    owner = module.get_submodule(owner_name)
    if isinstance(tensor, nn.Parameter):
        setattr(owner, attribute, nn.Parameter(value, requires_grad=tensor.requires_grad))
    else:
        owner.register_buffer(attribute, value)


def _load_clip_weights(clip_model: nn.Module, clip_name: str, path: Path) -> None:
    import open_clip

    from ..weights.checkpoints import load_state_dict_checked, read_checkpoint

    # open_clip's big_vision reader copies into the built weights: those must stay.
    assign = path.suffix not in (".npz", ".npy")
    dtypes = _free_weights(clip_model) if assign else {}
    try:
        if assign:
            # open_clip converts the file's keys and then calls the model's load_state_dict:
            # this instance's takes the file's tensors as they are (see _free_weights).
            clip_model.load_state_dict = partial(type(clip_model).load_state_dict, clip_model, assign=True)
        try:
            open_clip.load_checkpoint(clip_model, str(path), strict=True, weights_only=True)
        finally:
            if assign:
                del clip_model.load_state_dict
        _restore_dtypes(clip_model, dtypes)
    except Exception as err:
        # Read the file again for a message that says what is wrong: pickled code
        # (UnsafeCheckpointError), a damaged file, or the keys and shapes that do not fit.
        read_checkpoint(path)
        state_dict = open_clip.factory.load_state_dict(str(path), weights_only=True)
        load_state_dict_checked(clip_model, state_dict, what=f"CLIP {clip_name} weights {path}")
        raise CheckpointMismatchError(f"CLIP {clip_name} weights {path} do not fit: {err}") from err


__all__ = ["load_model"]
