"""Prompts in SAM's input frame (torch): the similarity map as mask prompt, the text-only
mode's points, the one conversion of image-pixel prompts into SAM's frame, and the way
back from SAM's logits to the image.

Inference (the predictor) and training both use these, so a model is trained on the
prompts it will be given.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .prompts import points_from_similarity


def resize_map(grid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (B, g, g) maps to (B, H, W)."""
    return F.interpolate(grid[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]


def similarity_in_sam_frame(grid: torch.Tensor, input_size: tuple[int, int], frame: int) -> torch.Tensor:
    """Place (B, g, g) similarity maps of the whole image into SAM's padded input frame.

    The image occupies the top-left ``input_size`` of SAM's ``frame x frame`` input
    (``ResizeLongestSide`` then padding); the padding gets 0.
    """
    resized = resize_map(grid, input_size)
    return F.pad(resized, (0, frame - input_size[1], 0, frame - input_size[0]))


def mask_prompt_from_similarity(
    grid: torch.Tensor,
    threshold: float,
    input_size: tuple[int, int],
    frame: int,
    mask_size: tuple[int, int],
) -> torch.Tensor:
    """SAM's dense mask prompt (B, 1, h, w): the thresholded map B scaled to {0, 255}."""
    in_frame = similarity_in_sam_frame(grid, input_size, frame)
    low_res = F.interpolate(in_frame[:, None], size=mask_size, mode="bilinear", align_corners=False)
    return (low_res >= threshold).float() * 255.0


def mask_prompt_from_logits(mask_input, mask_size: tuple[int, int], device, frame: int | None = None) -> torch.Tensor:
    """SAM's dense prompt (1, 1, h, w) from a previous call's logits (1, h, w).

    Logits a mask refiner gave at SAM's ``frame x frame`` input are averaged down to ``mask_size``.
    """
    prompt = torch.as_tensor(np.asarray(mask_input), dtype=torch.float32, device=device)
    side = tuple(prompt.shape[-2:])
    allowed = [tuple(mask_size)] + ([(frame, frame)] if frame and frame != mask_size[0] else [])
    if side not in allowed or prompt.numel() != side[0] * side[1]:
        shapes = " or ".join(f"(1, {h}, {w})" for h, w in allowed)
        raise ValueError(f"mask_input must have shape {shapes}: the logits of one mask from an earlier predict(); "
                         f"got {tuple(prompt.shape)}.")
    prompt = prompt.reshape(1, 1, *side)
    return prompt if side == tuple(mask_size) else F.adaptive_avg_pool2d(prompt, mask_size)


def text_mode_points(grid: torch.Tensor, image_size: tuple[int, int], config) -> tuple[np.ndarray, np.ndarray]:
    """The text-only mode's prompts for a (1, g, g) similarity grid of an image of ``image_size``.

    Returns (N, 2) XY points and (N,) labels (all positive). Inference and training
    both use this, so a model is trained on the prompts it will be given.
    """
    similarity = resize_map(grid, image_size)[0].clamp(0, 1).cpu().numpy()
    points = points_from_similarity(similarity, config.similarity_threshold, config.num_points)
    return points, np.ones(len(points), dtype=np.int64)


def to_sam_frame(
    points: np.ndarray | None,
    labels: np.ndarray | None,
    box: np.ndarray | None,
    original_size: tuple[int, int],
    sam_size: int,
    device: torch.device,
) -> tuple[tuple[torch.Tensor, torch.Tensor] | None, torch.Tensor | None]:
    """Image-pixel prompts (checked, see :func:`check_prompts`) in SAM's input frame, as a batch of one.

    The frame is segment_anything's ``ResizeLongestSide(sam_size)`` of an image of
    ``original_size`` (H, W). Inference and training both convert here.

    Returns:
        ``((coords (1, N, 2) float32 XY, labels (1, N) int32), box (1, 4) float32 XYXY)``;
        None where a prompt is absent.
    """
    from segment_anything.utils.transforms import ResizeLongestSide

    transform = ResizeLongestSide(sam_size)
    point_prompt = None
    if points is not None:
        coords = transform.apply_coords(np.asarray(points, dtype=np.float64), original_size)
        point_prompt = (
            torch.as_tensor(coords, dtype=torch.float32, device=device)[None],
            torch.as_tensor(labels, dtype=torch.int, device=device)[None],
        )
    box_prompt = None
    if box is not None:
        box_prompt = torch.as_tensor(
            transform.apply_boxes(np.asarray(box, dtype=np.float64)[None], original_size),
            dtype=torch.float32, device=device,
        )
    return point_prompt, box_prompt


def logits_in_frame(logits: torch.Tensor, frame: int) -> torch.Tensor:
    """Low-resolution logits (B, C, h, w) upsampled (bilinear) to SAM's padded ``frame x frame`` input."""
    return F.interpolate(logits, size=(frame, frame), mode="bilinear", align_corners=False)


def logits_to_image(
    logits: torch.Tensor, frame: int, input_size: tuple[int, int], original_size: tuple[int, int]
) -> torch.Tensor:
    """Low-resolution logits (B, C, h, w) of SAM's padded ``frame x frame`` input, at the image's (H, W).

    Upsampled to the frame, the padding cut off, resized to ``original_size``: what
    segment_anything's ``Sam.postprocess_masks`` does, but with the frame passed in,
    since SAM's own method reads it from the shared model (see ``at_resolution``).
    """
    image_part = logits_in_frame(logits, frame)[..., : input_size[0], : input_size[1]]
    return F.interpolate(image_part, size=original_size, mode="bilinear", align_corners=False)
