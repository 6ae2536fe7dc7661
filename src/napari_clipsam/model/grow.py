"""Grow a trained model into a deeper one that computes the same thing, to train on from there.

:func:`deepen_encoder` puts a new SAM encoder block after each block of a trained model.
A SAM block is pre-norm and residual (``x + attn(norm(x))``, then ``x + mlp(norm(x))``), and
each CLIP-guided adapter adds its output to a branch; with the attention's output
projection, the MLP's last layer and both adapters' up-projections at zero, a new block
passes its input through unchanged. So the grown model gives the small one's masks to the
last bit of rounding, and training goes on from there with the extra capacity (the zeroed
layers get gradients from the first step: their inputs are not zero). This is how the
demo model gained encoder depth without training from random weights again.
:func:`add_mask_refiner` gives a trained model a mask refiner (``model/refine.py``) the same way:
its last layer starts at zero, so the masks stay the model's until it trains.
"""

from __future__ import annotations

import re

import torch

from .clipsam import ClipSamModel
from .refine import has_refiner

_BLOCK = re.compile(r"^sam\.image_encoder\.blocks\.(\d+)\.")
# The layers whose output a block adds to its residual stream (adapters: ``after_attention``, ``after_mlp``).
_BRANCH_OUTPUTS = ("attn.proj", "mlp.lin2", "clipsam.space.up", "clipsam.semantic.up")


def deepen_encoder(source: ClipSamModel, target: ClipSamModel) -> None:
    """Load ``source`` into ``target``, whose encoder has twice as many blocks of the same width.

    Source block ``i`` becomes target block ``2i``; target blocks ``2i + 1`` start as the
    identity (their branch outputs zeroed, their other weights as ``target`` was built).
    Every other weight (patch embedding, neck, prompt encoder, decoder, CLIP) is copied.
    The concepts, description and preferred image size go with them.

    Raises:
        ValueError: the models differ in anything but encoder depth, ``target`` does not
            have twice the blocks, or a source block's attention (windowed or global) is
            not its target block's.
    """
    source_blocks, target_blocks = source.sam.image_encoder.blocks, target.sam.image_encoder.blocks
    if len(target_blocks) != 2 * len(source_blocks):
        raise ValueError(f"deepen_encoder needs a target with twice the source's {len(source_blocks)} encoder "
                         f"blocks; it has {len(target_blocks)}.")
    if source.clip_name != target.clip_name or source.config != target.config:
        raise ValueError("deepen_encoder needs the same CLIP and CLIP-guided configuration in both models; "
                         f"got {source.clip_name!r} / {target.clip_name!r} and {source.config} / {target.config}.")
    for index, block in enumerate(source_blocks):
        if block.window_size != target_blocks[2 * index].window_size:
            raise ValueError(f"Source block {index} has window size {block.window_size}, its target block "
                             f"{2 * index} {target_blocks[2 * index].window_size} (0 is global attention).")
    wanted = target.every_weight()
    tensors = {}
    for name, tensor in source.every_weight().items():
        found = _BLOCK.match(name)
        if found:
            name = f"sam.image_encoder.blocks.{2 * int(found.group(1))}.{name[found.end():]}"
        if name not in wanted or wanted[name].shape != tensor.shape:
            shape = None if name not in wanted else tuple(wanted[name].shape)
            raise ValueError(f"The target has no weight {name} of shape {tuple(tensor.shape)} (it has {shape}): "
                             "the models must differ only in encoder depth.")
        tensors[name] = tensor.detach()
    for index in range(1, len(target_blocks), 2):
        for layer in _BRANCH_OUTPUTS:
            for kind in ("weight", "bias"):
                name = f"sam.image_encoder.blocks.{index}.{layer}.{kind}"
                tensors[name] = torch.zeros_like(wanted[name])
    _assign(source, target, tensors)


def add_mask_refiner(source: ClipSamModel, target: ClipSamModel) -> None:
    """Load ``source`` into ``target``, the same model with a mask refiner (``config.mask_refiner``) added.

    Every weight is copied; the refiner keeps the weights ``target`` was built with (its
    last layer zero: the masks are ``source``'s until it trains). The concepts, description
    and preferred image size go with them.

    Raises:
        ValueError: ``source`` has a refiner, ``target`` has none, or they differ otherwise.
    """
    if has_refiner(source) or not has_refiner(target):
        raise ValueError("add_mask_refiner needs a source without a mask refiner and a target with one "
                         f"(config.mask_refiner); got {source.config.mask_refiner} and {target.config.mask_refiner}.")
    if (source.sam_name, source.clip_name) != (target.sam_name, target.clip_name) or \
            source.config.replace(mask_refiner=target.config.mask_refiner) != target.config:
        raise ValueError("add_mask_refiner needs the same SAM, CLIP and configuration apart from the refiner; got "
                         f"{source.sam_name!r} / {target.sam_name!r}, {source.clip_name!r} / {target.clip_name!r}, "
                         f"{source.config} / {target.config}.")
    _assign(source, target, {name: tensor.detach() for name, tensor in source.every_weight().items()})


def _assign(source: ClipSamModel, target: ClipSamModel, tensors: dict[str, torch.Tensor]) -> None:
    target.assign_trainable(tensors, every_weight=True)
    target.concepts = source.concepts
    target.description = source.description
    target.preferred_image_size = source.preferred_image_size


__all__ = ["add_mask_refiner", "deepen_encoder"]
