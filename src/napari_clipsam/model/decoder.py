"""SAM's mask decoder for the prompts of one image, with the image's share computed once.

SAM's ``MaskDecoder`` copies the image embedding once per prompt and, in the first layer
of its two-way transformer, projects it three times (keys and values for the tokens'
attention to the image, queries for the image's attention to the tokens), although these
depend on the image and its dense prompt alone. :func:`prepare_image` computes that share
once (a :class:`DecoderImage`); :func:`decode_prepared` runs the rest for any number of
prompts with SAM's own modules and weights, attention through
``scaled_dot_product_attention``. Logits equal SAM's decoder up to float rounding
(tests/model/test_decoder.py, within 3e-7 for vit_b). On a 2-core CPU a vit_b click's
decoder took 22 ms instead of 38 ms, preparing the image 6 ms once
(``python benchmarks/bench_click.py``), and B prompts on one image share one image.

:class:`PreparedDecoder` keeps the latest image's share for a predictor, so that clicks on
one image prepare it once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .prompt_encoder import sized_prompt_encoder

if TYPE_CHECKING:
    from .clipsam import ClipSamModel


@dataclass(frozen=True)
class DecoderImage:
    """What the decoder computes of one image embedding and dense prompt, for every prompt alike.

    Attributes:
        keys: (1, h*w, C) the embedding plus the dense prompt, as the transformer's image tokens.
        position: (1, h*w, C) the image's positional encoding.
        token_keys, token_values: (1, heads, h*w, d) the first layer's keys and values for the
            tokens' attention to the image.
        image_queries: (1, heads, h*w, d) the first layer's queries for the image's attention to the tokens.
        grid: (h, w) of the embedding.
        source: what it was made from (embedding and mask prompt by storage and version,
            weights version, input size).
        inputs: the embedding and mask prompt themselves, held so that their storage is not
            reused by other tensors while this lives.
    """

    keys: torch.Tensor
    position: torch.Tensor
    token_keys: torch.Tensor
    token_values: torch.Tensor
    image_queries: torch.Tensor
    grid: tuple[int, int]
    source: tuple
    inputs: tuple = field(compare=False, repr=False)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return self.keys, self.position, self.token_keys, self.token_values, self.image_queries


def _tensor_key(tensor: torch.Tensor | None):
    """Identifies a tensor's values while it lives: storage address, in-place version, layout.

    Tensors made under ``torch.inference_mode`` keep no version: an in-place change of one
    (inside inference mode) goes unseen, as in every cache of PyTorch's own.
    """
    if tensor is None:
        return None
    strides = tuple(stride if size > 1 else 0 for size, stride in zip(tensor.shape, tensor.stride()))
    version = None if tensor.is_inference() else tensor._version
    return tensor.data_ptr(), version, tensor.dtype, tensor.device, tuple(tensor.shape), strides


def _source(model: ClipSamModel, embedding: torch.Tensor, mask_prompt: torch.Tensor | None) -> tuple:
    return _tensor_key(embedding), _tensor_key(mask_prompt), model.weights_version, model.image_size


def _heads(projection: nn.Linear, x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, C) projected and split into (B, heads, N, d)."""
    return projection(x).unflatten(-1, (heads, -1)).transpose(1, 2)


def prepare_image(model: ClipSamModel, embedding: torch.Tensor, mask_prompt: torch.Tensor | None = None
                  ) -> DecoderImage:
    """The decoder's share of one image embedding (1, C, h, w) and dense prompt (1, 1, H, W) or None."""
    if embedding.shape[0] != 1 or (mask_prompt is not None and mask_prompt.shape[0] != 1):
        raise ValueError("prepare_image takes one embedding and at most one mask prompt (batch size 1); "
                         f"got {tuple(embedding.shape)} and {None if mask_prompt is None else tuple(mask_prompt.shape)}.")
    with sized_prompt_encoder(model) as encoder:
        position = encoder.get_dense_pe()
        if mask_prompt is None:
            dense = encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        else:
            dense = encoder.mask_downscaling(mask_prompt)
    keys = (embedding + dense).flatten(2).transpose(1, 2).contiguous()
    position = position.flatten(2).transpose(1, 2).contiguous()
    token_keys, token_values, image_queries = _image_side(model.sam.mask_decoder.transformer.layers[0], keys, position)
    return DecoderImage(
        keys=keys, position=position, token_keys=token_keys, token_values=token_values, image_queries=image_queries,
        grid=tuple(embedding.shape[-2:]), source=_source(model, embedding, mask_prompt),
        inputs=(embedding, mask_prompt),
    )


def _image_side(layer: nn.Module, keys: torch.Tensor, key_pe: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """A two-way layer's projections of the image tokens, computed before the tokens change them:
    keys and values for the tokens' attention to the image, queries for the image's attention to the tokens."""
    to_image, to_tokens = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
    with_position = keys + key_pe
    return (_heads(to_image.k_proj, with_position, to_image.num_heads),
            _heads(to_image.v_proj, keys, to_image.num_heads),
            _heads(to_tokens.q_proj, with_position, to_tokens.num_heads))


def _attend(attention: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """SAM ``Attention`` after its input projections: heads (B, heads, N, d) in, (B, N, C) out.

    Keys of one image (batch 1) serve queries of many prompts as one batch: each query row
    attends to the same keys, so the rows of all prompts go through one call.
    """
    if k.shape[0] == 1 and q.shape[0] > 1:
        batch, heads, rows, width = q.shape
        folded = q.transpose(0, 1).reshape(1, heads, batch * rows, width)
        out = F.scaled_dot_product_attention(folded, k, v).reshape(heads, batch, rows, width).transpose(0, 1)
    else:
        if q.shape[0] == 1 and k.shape[0] > 1:
            q = q.expand(k.shape[0], -1, -1, -1)
        out = F.scaled_dot_product_attention(q, k, v)
    return attention.out_proj(out.transpose(1, 2).flatten(2))


def _project_and_attend(attention: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    heads = attention.num_heads
    return _attend(attention, _heads(attention.q_proj, q, heads), _heads(attention.k_proj, k, heads),
                   _heads(attention.v_proj, v, heads))


def _two_way_layer(layer: nn.Module, queries, keys, query_pe, key_pe, first: tuple | None):
    """One ``TwoWayAttentionBlock``; ``first``: the prepared (token keys, token values, image queries)."""
    if layer.skip_first_layer_pe:
        queries = _project_and_attend(layer.self_attn, queries, queries, queries)
    else:
        q = queries + query_pe
        queries = queries + _project_and_attend(layer.self_attn, q, q, queries)
    queries = layer.norm1(queries)

    to_image, to_tokens = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
    q = queries + query_pe
    token_keys, token_values, image_queries = _image_side(layer, keys, key_pe) if first is None else first
    queries = layer.norm2(queries + _attend(to_image, _heads(to_image.q_proj, q, to_image.num_heads),
                                            token_keys, token_values))
    queries = layer.norm3(queries + layer.mlp(queries))

    q = queries + query_pe
    out = _attend(to_tokens, image_queries, _heads(to_tokens.k_proj, q, to_tokens.num_heads),
                  _heads(to_tokens.v_proj, queries, to_tokens.num_heads))
    return queries, layer.norm4(keys + out)


def run_decoder(decoder: nn.Module, tokens: torch.Tensor, keys: torch.Tensor, position: torch.Tensor,
                token_keys: torch.Tensor, token_values: torch.Tensor, image_queries: torch.Tensor,
                grid: tuple[int, int], multimask_output: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's two-way transformer and heads for prompt tokens (B, T, C) on one prepared image.

    Tensors only (no locks, no Python state), so ``torch.compile`` takes it whole
    (``model/compile.py``).
    """
    transformer = decoder.transformer
    queries = tokens
    for index, layer in enumerate(transformer.layers):
        first = (token_keys, token_values, image_queries) if index == 0 else None
        queries, keys = _two_way_layer(layer, queries, keys, tokens, position, first)
    final = transformer.final_attn_token_to_image
    out = _project_and_attend(final, queries + tokens, keys + position, keys)
    hidden = transformer.norm_final_attn(queries + out)
    return masks_and_scores(decoder, hidden, keys, grid, multimask_output)


def masks_and_scores(decoder: nn.Module, hidden: torch.Tensor, image_out: torch.Tensor, grid: tuple[int, int],
                     multimask_output: bool, every_head: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's output heads: mask logits (B, C, 4h, 4w) and predicted IoU (B, C) from the transformer's outputs.

    Args:
        hidden: (B, T, C) output tokens (IoU token, then the mask tokens).
        image_out: (B, h*w, C) image tokens.
        every_head: run every mask token's hypernetwork, also those not returned (training
            does, so that the optimiser sees the parameters SAM's decoder uses).
    """
    batch, channels = image_out.shape[0], image_out.shape[-1]
    upscaled = decoder.output_upscaling(image_out.transpose(1, 2).reshape(batch, channels, *grid))
    chosen = slice(1, None) if multimask_output else slice(0, 1)  # SAM's choice of mask tokens
    run = range(decoder.num_mask_tokens) if every_head else range(decoder.num_mask_tokens)[chosen]
    hyper = torch.stack([decoder.output_hypernetworks_mlps[i](hidden[:, 1 + i]) for i in run], dim=1)
    batch, channels, height, width = upscaled.shape
    masks = (hyper @ upscaled.reshape(batch, channels, height * width)).reshape(batch, -1, height, width)
    if every_head:
        masks = masks[:, chosen]
    iou = decoder.iou_prediction_head(hidden[:, 0])[:, chosen]
    return masks, iou


def decode_prepared(model: ClipSamModel, image: DecoderImage, points, boxes, multimask_output: bool,
                    runner=run_decoder) -> tuple[torch.Tensor, torch.Tensor]:
    """Low-resolution logits (B, C, 4h, 4w) and predicted IoU (B, C) of B prompts on one prepared image.

    Prompts as for :meth:`ClipSamModel.decode` (SAM's input frame, XY).
    """
    decoder = model.sam.mask_decoder
    with sized_prompt_encoder(model) as encoder:
        sparse, _ = encoder(points=points, boxes=boxes, masks=None)
    return runner(decoder, prompt_tokens(decoder, sparse), *image.tensors(), image.grid, multimask_output)


def prompt_tokens(decoder: nn.Module, sparse: torch.Tensor) -> torch.Tensor:
    """The transformer's tokens (B, T, C): SAM's IoU and mask tokens, then the prompts' sparse embeddings (B, N, C)."""
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    return torch.cat([output_tokens.expand(sparse.shape[0], -1, -1), sparse], dim=1)


class PreparedDecoder:
    """A predictor's decoder: the latest image's share kept (see :func:`prepare_image`), SAM's decoder otherwise.

    Several mask prompts that differ per prompt go through SAM's own decoder
    (``model.decode``); one mask prompt for all (or none) uses the kept share.
    """

    def __init__(self) -> None:
        self._image: DecoderImage | None = None

    def decode(self, model: ClipSamModel, embedding: torch.Tensor, points, boxes, mask_prompt: torch.Tensor | None,
               multimask_output: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if mask_prompt is not None and mask_prompt.shape[0] > 1:
            if mask_prompt.stride(0) != 0:  # a different mask prompt per prompt
                return model.decode(embedding, points, boxes, mask_prompt, multimask_output)
            mask_prompt = mask_prompt[:1]  # one mask prompt, expanded to every prompt
        if embedding.shape[0] != 1:
            return model.decode(embedding, points, boxes, mask_prompt, multimask_output)
        image = self._image
        if image is None or image.source != _source(model, embedding, mask_prompt):
            image = self._image = prepare_image(model, embedding, mask_prompt)
        return decode_prepared(model, image, points, boxes, multimask_output, getattr(model, "decoder_runner", run_decoder))
