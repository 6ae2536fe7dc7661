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
CHUNK = 8  # masks refined at a time: bounds the activations (width x frame x frame floats each)


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


def refine_logits(model, low_res: torch.Tensor, sam_input: torch.Tensor) -> torch.Tensor:
    """The decoder's logits (B, C, h, w) refined at SAM's input frame, (B, C, S, S); as they are without a refiner.

    ``sam_input`` is the image as SAM's encoder got it, (B or 1, 3, S, S), padding included.
    """
    refiner = getattr(model.sam.mask_decoder, "refiner", None)
    if refiner is None:
        return low_res
    frame = sam_input.shape[-2:]
    logits = F.interpolate(low_res.float(), size=frame, mode="bilinear", align_corners=False)
    image = sam_input.float()
    if image.shape[0] == 1 or image.shape[0] != logits.shape[0]:
        return torch.cat([refiner(chunk, image) for chunk in logits.split(CHUNK)])
    return torch.cat([refiner(chunk, part) for chunk, part in zip(logits.split(CHUNK), image.split(CHUNK))])


__all__ = ["MaskRefiner", "attach_refiner", "has_refiner", "refine_logits"]
