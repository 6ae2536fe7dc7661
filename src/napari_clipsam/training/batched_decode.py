"""SAM's prompt decoding for a batch of images, each with its own prompts, in few decoder calls.

SAM's ``MaskDecoder`` decodes one image with many prompts: it repeats the image
embedding once per prompt set, so B embeddings with B prompt sets would give B x B
masks. Training has B images with one prompt set each (sample i's prompts go with
embedding i), so this runs the decoder's parts here instead, giving for each sample
what :meth:`ClipSamModel.decode` gives it alone (up to float summation order).

The two-way transformer attends over a sample's sparse tokens, so samples can share a
transformer call only when they have as many tokens (a padding token would change the
attention): one transformer call per token count, the prompt encoder once per sparse
layout, and the upscaling, mask and IoU heads once for the whole batch.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..model.clipsam import ClipSamModel
from ..model.decoder import masks_and_scores, prompt_tokens
from ..model.prompt_encoder import sized_prompt_encoder

PointPrompt = tuple[torch.Tensor, torch.Tensor]  # coords (1, N, 2) XY, labels (1, N): to_sam_frame's batch of one


def decode_batch(
    model: ClipSamModel,
    embeddings: torch.Tensor,
    points: Sequence[PointPrompt | None],
    boxes: Sequence[torch.Tensor | None],
    mask_prompts: Sequence[torch.Tensor | None],
    multimask_output: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Low-resolution mask logits (B, C, h, w) and predicted IoU (B, C) of B images, sample i with prompts i.

    Args:
        embeddings: (B, 256, g, g) image embeddings at the model's current resolution.
        points: per sample, ``(coords (1, N, 2), labels (1, N))`` in SAM's input frame
            (as :func:`to_sam_frame` gives them), or None. Prompts may be on the CPU: they
            are sent to the embeddings' device one group at a time.
        boxes: per sample, a (1, 4) XYXY box in SAM's input frame, or None.
        mask_prompts: per sample, a (1, 1, h, w) dense mask prompt, or None.
        multimask_output: C = 3 masks (SAM's multimask outputs) instead of 1.
    """
    count = embeddings.shape[0]
    if not len(points) == len(boxes) == len(mask_prompts) == count:
        raise ValueError(f"{count} embeddings need as many prompts; got {len(points)} point sets, "
                         f"{len(boxes)} boxes and {len(mask_prompts)} mask prompts.")
    layouts, dense, position = _embed_prompts(model, points, boxes, mask_prompts, count, embeddings.device)
    decoder = model.sam.mask_decoder
    source = embeddings + dense

    by_length: dict[int, list[tuple[list[int], torch.Tensor]]] = {}
    for members, sparse in layouts:
        by_length.setdefault(sparse.shape[1], []).append((members, sparse))
    token_outputs, image_outputs, order = [], [], []
    for length, groups in sorted(by_length.items()):
        members = [i for group_members, _ in groups for i in group_members]
        sparse = torch.cat([group_sparse for _, group_sparse in groups])
        tokens = prompt_tokens(decoder, sparse)
        group = source[_sent(torch.tensor(members), source.device)] if len(members) < count else source
        tokens_out, image_out = decoder.transformer(group, position.expand(len(members), -1, -1, -1), tokens)
        token_outputs.append(tokens_out[:, : 1 + decoder.num_mask_tokens])  # the output tokens, same count for all
        image_outputs.append(image_out)
        order += members
    hidden, image_out = torch.cat(token_outputs), torch.cat(image_outputs)
    if order != list(range(count)):
        back = torch.empty(count, dtype=torch.long)
        back[torch.tensor(order)] = torch.arange(count)
        back = _sent(back, hidden.device)
        hidden, image_out = hidden[back], image_out[back]

    # Every mask token's head runs, as in SAM, so that the optimiser sees the same parameters with gradients.
    return masks_and_scores(decoder, hidden, image_out, tuple(source.shape[-2:]), multimask_output, every_head=True)


def _embed_prompts(model: ClipSamModel, points, boxes, mask_prompts, count: int, device: torch.device):
    """Sparse embeddings per layout, [(sample indices, (G, T, D))]; (B, D, g, g) dense; (1, D, g, g) positions.

    A layout is a point count and box or not (without a box SAM's prompt encoder appends a
    padding point); the prompt encoder runs once per layout, at the model's current input
    and embedding sizes.
    """
    by_layout: dict[tuple[int | None, bool], list[int]] = {}
    for i in range(count):
        by_layout.setdefault((None if points[i] is None else points[i][0].shape[1], boxes[i] is not None), []).append(i)
    layouts = []
    with sized_prompt_encoder(model) as encoder:
        for (point_count, has_box), members in by_layout.items():
            group_points = None if point_count is None else (
                _sent(torch.cat([points[i][0] for i in members]), device),
                _sent(torch.cat([points[i][1] for i in members]), device))
            group_boxes = _sent(torch.cat([boxes[i] for i in members]), device) if has_box else None
            sparse, _ = encoder(points=group_points, boxes=group_boxes, masks=None)
            # Without points or box SAM embeds one empty set, whatever the batch.
            layouts.append((members, sparse.expand(len(members), -1, -1) if sparse.shape[1] == 0 else sparse))
        position = encoder.get_dense_pe()
    grid = position.shape[-1]
    with_mask = [i for i in range(count) if mask_prompts[i] is not None]
    dense = encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(count, -1, grid, grid)
    if with_mask:
        embedded_masks = encoder.mask_downscaling(_sent(torch.cat([mask_prompts[i] for i in with_mask]), device))
        if len(with_mask) == count:
            dense = embedded_masks
        else:
            dense = dense.clone()
            dense[_sent(torch.tensor(with_mask), device)] = embedded_masks
    return layouts, dense, position


def _sent(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    # Prompts and indices made on the CPU go without waiting for the device: a blocking copy (or
    # indexing with a list) would wait for the encoder. A copy from pageable memory is staged
    # before the call returns, so the CPU tensor may go away at once.
    return tensor.to(device, non_blocking=True)
