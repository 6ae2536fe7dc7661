"""A mask refiner: the decoder's logits corrected at the full resolution of SAM's input.

SAM's decoder predicts logits at 4x its embedding grid, a quarter of the input's side for the
published models and half of it for the demo model; upsampled bilinearly they place an
outline only to within a pixel or two, and most wrong pixels of the demo model's masks lie
within a pixel of an object's rim (docs/quality.md). The refiner is a few 3x3 convolutions
at the input's resolution that see the upsampled logits beside SAM's input image and add a
correction to the logits. Its last layer starts at zero, so a model given a refiner makes
exactly the masks it made before until the refiner is trained. It belongs to the mask
decoder (``sam.mask_decoder.refiner``): it trains, is saved and is loaded with it.
``ClipSamConfig.mask_refiner`` is its width; 0 (the paper's model) has none.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

REFINER_DEPTH = 3  # hidden convolutions: with the output's, a 9x9 pixel view of logits and image
LOGIT_SCALE = 8.0  # logits reach about +-20; the refiner sees them divided by this
MAX_CHUNK = 8  # masks refined at a time, at most
# Floats one activation of a chunk may hold (256 MB): a refiner of width w on an S px frame holds
# w x S x S floats per mask and activation, so wide refiners and large frames refine fewer masks at a
# time (the demo model's 16 x 256 x 256: 8 masks; width 16 on published SAM's 1024 px frame: 4; width
# 256 there: 1 mask, 1 GB an activation, the least a whole-frame refiner can hold).
ACTIVATION_BUDGET = 2**26


class MaskRefiner(nn.Module):
    """Logits (B, C, S, S) at SAM's input resolution and the input image (B or 1, 3, S, S) -> logits (B, C, S, S)."""

    def __init__(self, width: int, image_channels: int = 3, depth: int = REFINER_DEPTH) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = image_channels + 1
        for _ in range(depth):
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.GELU()]
            channels = width
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv2d(width, 1, 3, padding=1)
        nn.init.zeros_(self.out.weight)  # the identity until trained
        nn.init.zeros_(self.out.bias)

    def forward(self, logits: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        batch, masks, height, width = logits.shape
        if image.shape[0] == 1 and batch > 1:  # one image, many prompts (the predictor)
            image = image.expand(batch, -1, -1, -1)
        if image.shape[0] != batch or image.shape[-2:] != logits.shape[-2:]:
            raise ValueError(f"The refiner needs one image per mask's batch at the logits' size; got logits "
                             f"{tuple(logits.shape)} and image {tuple(image.shape)}.")
        flat = logits.reshape(batch * masks, 1, height, width)
        pixels = image.to(flat.dtype).repeat_interleave(masks, dim=0)
        correction = self.out(self.body(torch.cat([pixels, flat / LOGIT_SCALE], dim=1)))
        return (flat + correction).reshape(batch, masks, height, width)


def attach_refiner(sam: nn.Module, width: int) -> None:
    """Give SAM's mask decoder a refiner of ``width`` channels (none for 0)."""
    if width:
        # Channels-last convolutions run about twice as fast on CPU (45 -> 23 ms a 256 px mask); same values.
        sam.mask_decoder.refiner = MaskRefiner(width).to(memory_format=torch.channels_last)


def has_refiner(model) -> bool:
    return getattr(model.sam.mask_decoder, "refiner", None) is not None


def masks_per_chunk(width: int, frame: tuple[int, int]) -> int:
    """How many masks :func:`refine_logits` refines at a time for a refiner of ``width`` on ``frame``."""
    per_mask = max(width, 1) * frame[0] * frame[1]
    return max(1, min(MAX_CHUNK, ACTIVATION_BUDGET // per_mask))


def refine_logits(model, low_res: torch.Tensor, sam_input: torch.Tensor) -> torch.Tensor:
    """The decoder's logits (B, C, h, w) refined at SAM's input frame, (B, C, S, S); as they are without a refiner.

    ``sam_input`` is the image as SAM's encoder got it, (B or 1, 3, S, S), padding included.
    Masks are refined a few at a time (:func:`masks_per_chunk`), which bounds the memory.
    """
    refiner = getattr(model.sam.mask_decoder, "refiner", None)
    if refiner is None:
        return low_res
    batch, masks = low_res.shape[:2]
    frame = tuple(sam_input.shape[-2:])
    image = sam_input.float()
    if image.shape[0] == 1:  # one image, many prompts (the predictor): a view, no copies
        image = image.expand(batch * masks, -1, -1, -1)
    elif image.shape[0] == batch:
        image = image.repeat_interleave(masks, dim=0)  # each mask beside its own image
    else:
        raise ValueError(f"The refiner needs one image, or one per mask's batch; got logits {tuple(low_res.shape)} "
                         f"and image {tuple(sam_input.shape)}.")
    flat = low_res.reshape(batch * masks, 1, *low_res.shape[-2:])
    chunk = masks_per_chunk(refiner.out.in_channels, frame)
    refined = [refiner(F.interpolate(part.float(), size=frame, mode="bilinear", align_corners=False), pixels)
               for part, pixels in zip(flat.split(chunk), image.split(chunk))]
    return torch.cat(refined).reshape(batch, masks, *frame)


__all__ = ["MaskRefiner", "attach_refiner", "has_refiner", "masks_per_chunk", "refine_logits"]
