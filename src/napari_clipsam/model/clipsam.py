"""The CLIP-guided SAM network: SAM with adapters, and CLIP with surgery features.

Built by :func:`napari_clipsam.load_model` (``model/build.py``); the adapters file
format is in ``weights/adapters_file.py``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from collections import OrderedDict
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .adapters import Conditioning, attach_adapters, first_semantic_block, run_blocks
from .attention import use_banded_global_attention, use_fused_windowed_attention
from .build_sam import DEMO_VARIANTS, auto_downscale
from .config import ClipSamConfig
from .device import autocast
from .prompt_encoder import sized_prompt_encoder
from .refine import attach_refiner
from .surgery import SurgeryVisionEncoder, TextEmbedder, similarity_map

# The SAM input side each model runs at in this thread or asyncio task (see at_resolution).
# A context variable, not state on the shared model, so that predictors in other threads
# keep their own size; the image encoder reads no size, so encoder passes at different
# sizes run side by side.
_RESOLUTION: ContextVar[dict[ClipSamModel, int]] = ContextVar("clipsam_resolution", default={})
# Threads share a model's text cache, and some tokenizers fail when two threads use them.
_TEXT_EMBEDDINGS = threading.Lock()


class ClipSamModel(nn.Module):
    """SAM with CLIP-guided adapters, and the CLIP model that guides it.

    ``model.sam`` is a ``segment_anything`` ``Sam`` whose encoder blocks carry adapters
    (``model.sam.image_encoder.blocks[i].clipsam``); ``model.clip`` is the open_clip
    model. Build it with :func:`load_model`.
    """

    def __init__(
        self,
        sam: nn.Module,
        clip_model: nn.Module,
        tokenizer,
        config: ClipSamConfig,
        *,
        sam_name: str,
        clip_name: str,
        device: torch.device,
        precision: str,
    ) -> None:
        super().__init__()
        self.sam = sam
        self.clip = clip_model
        self.config = config
        self.sam_name = sam_name
        self.clip_name = clip_name
        self.precision = precision
        # Kept out of the module tree: the surgery encoder only re-uses clip.visual.
        object.__setattr__(self, "surgery", SurgeryVisionEncoder(clip_model.visual, config.surgery_blocks))
        object.__setattr__(self, "adapters", attach_adapters(sam, self.surgery.output_dim, config))
        attach_refiner(sam, config.mask_refiner)  # in the decoder: trains and is saved with it
        # The same attention through fused SDPA kernels (the relative-position term as a bias):
        # global blocks in bands of queries on CPU (bounds peak memory), in one call on CUDA.
        use_banded_global_attention(sam.image_encoder)
        use_fused_windowed_attention(sam.image_encoder)
        self.text_embedder = TextEmbedder(clip_model, tokenizer, config.template_list())
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        # SAM input side the loaded adapters were trained at (None: native); predictors
        # without an explicit image_size run at it.
        self.preferred_image_size: int | None = None
        # How many times tile_shape="auto" may shrink an image to SAM's input before it tiles
        # at native resolution instead: 2 for the published SAM, 1 for the demo model.
        self.max_auto_downscale = auto_downscale(sam_name)
        self.is_demo = sam_name in DEMO_VARIANTS  # trained on generated scenes only: the widget says so
        # Whether augment="auto" averages text-only logits over 8 views (inference/views.py): for the cheap demo.
        self.auto_augment = self.is_demo
        # Counts changes to the trainable weights (loading, training): predictors compare
        # it with the count their cached features were computed at.
        self.weights_version = 0
        # The concepts the loaded weights were trained on (from the adapters file), the object diameters
        # each was trained at (a preset's: (low, high) px, inference/rescale.py), and the file's description.
        self.concepts: tuple[str, ...] = ()
        self.concept_diameters: dict[str, tuple[float, float]] = {}
        self.description: str | None = None
        self.freeze_base()
        self.to(device)
        # The decoder's transposed convolutions run about twice as fast in channels-last
        # layout on CPU (a point prompt gets ~15 ms cheaper for vit_b); same values.
        sam.mask_decoder.output_upscaling.to(memory_format=torch.channels_last)
        self.eval()

    # ----------------------------------------------------------------- basics
    @property
    def device(self) -> torch.device:
        return next(self.sam.parameters()).device

    @property
    def image_size(self) -> int:
        """Side of SAM's square input, in pixels (1024 for the published models; see at_resolution)."""
        return _RESOLUTION.get().get(self, self.sam.image_encoder.img_size)

    @contextmanager
    def at_resolution(self, size: int | None) -> Iterator[None]:
        """Run SAM at a square input of ``size`` pixels instead of its native size (1024).

        A smaller input makes the encoder several times cheaper (tokens fall with the
        square of the size) at some cost in detail; the absolute position embedding is
        resized to the new grid and the relative ones are resized by SAM itself. Inside
        the block, :attr:`image_size`, :attr:`mask_input_size`, :meth:`sam_input` and
        :meth:`decode` follow ``size`` in this thread (or asyncio task) only: other
        threads keep theirs, and SAM's own attributes (``model.sam``) keep the native
        size. None, or the current size, changes nothing.
        """
        patch = self.sam.image_encoder.patch_embed.proj.kernel_size[0]
        if size is None or size == self.image_size:
            yield
            return
        if size % patch or size < 4 * patch:
            raise ValueError(f"The SAM input size must be a multiple of {patch} and at least {4 * patch}, got {size}.")
        token = _RESOLUTION.set({**_RESOLUTION.get(), self: size})
        try:
            yield
        finally:
            _RESOLUTION.reset(token)

    @property
    def mask_input_size(self) -> tuple[int, int]:
        """Size of SAM's low-resolution mask prompt and logits, (256, 256) for published models."""
        grid = self.image_size // self.sam.image_encoder.patch_embed.proj.kernel_size[0]
        return 4 * grid, 4 * grid  # as SAM's prompt encoder sets it for its own size

    def autocast(self):
        """Context in which the image towers run at the model's precision."""
        return autocast(self.device, self.precision)

    def freeze_base(self) -> None:
        """Freeze SAM's backbone and CLIP; unfreeze adapters, prompt encoder, mask decoder.

        CLIP's vision attention is trainable too when ``config.train_clip_attention``.
        """
        self.requires_grad_(False)
        for adapter in self.adapters:
            adapter.requires_grad_(True)
        self.sam.prompt_encoder.requires_grad_(True)
        self.sam.mask_decoder.requires_grad_(True)
        if self.config.train_clip_attention:
            for attention in self.surgery.attention_modules():
                attention.requires_grad_(True)

    def set_clip_attention_trainable(self, trainable: bool) -> None:
        """Choose whether fine-tuning also updates CLIP's vision attention (co-training).

        The choice is part of :attr:`config`, so adapters saved afterwards carry CLIP's
        attention weights and record it; loading them applies it again.
        """
        if trainable != self.config.train_clip_attention:
            self.config = dataclasses.replace(self.config, train_clip_attention=trainable)
        self.freeze_base()

    def assign_trainable(self, tensors: dict[str, torch.Tensor], every_weight: bool = False) -> None:
        """Copy ``tensors`` into the trainable parameters (or, ``every_weight``, any parameters) of the same names.

        Every replacement of trainable weights goes through here, so that predictors
        learn (through :attr:`weights_version`) that their cached features are stale.
        """
        parameters = self.every_weight() if every_weight else dict(self.trainable_parameters())
        with torch.no_grad():
            for name, value in tensors.items():
                parameter = parameters[name]
                parameter.copy_(value.to(parameter.device, parameter.dtype))
        self.weights_version += 1
        if every_weight:
            self.forget_text_embeddings()

    def every_weight(self) -> dict[str, torch.Tensor]:
        """Every parameter and saved buffer by name (SAM's random Fourier features of prompt
        positions are a buffer that a model trained from scratch must keep)."""
        return {name: tensor for name, tensor in self.state_dict(keep_vars=True).items() if tensor.is_floating_point()}

    def trainable_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        return ((name, p) for name, p in self.named_parameters() if p.requires_grad)

    def count_parameters(self) -> dict[str, int]:
        """Parameter counts by part: adapters, SAM encoder, decoder, CLIP vision attention..."""
        def total(params: Iterable[nn.Parameter]) -> int:
            return sum(p.numel() for p in params)

        adapters = total(p for a in self.adapters for p in a.parameters())
        clip_attention = total(p for attention in self.surgery.attention_modules() for p in attention.parameters())
        return {
            "adapters": adapters,
            "adapters_per_block": [total(a.parameters()) for a in self.adapters],
            "sam_image_encoder": total(self.sam.image_encoder.parameters()) - adapters,
            "sam_prompt_encoder": total(self.sam.prompt_encoder.parameters()),
            "sam_mask_decoder": total(self.sam.mask_decoder.parameters()),
            "clip_vision": total(self.clip.visual.parameters()),
            "clip_vision_attention": clip_attention,
            "trainable": total(p for _, p in self.trainable_parameters()),
        }

    # ------------------------------------------------------------------- CLIP
    def text_embedding(self, concept: str) -> torch.Tensor:
        """(D,) float32 unit text embedding of ``concept`` (template ensemble, empty removed)."""
        with _TEXT_EMBEDDINGS:
            cached = self._text_cache.get(concept)
            if cached is not None:
                self._text_cache.move_to_end(concept)
                return cached
            embedding = self.text_embedder(concept, self.device)
            self._text_cache[concept] = embedding
            while len(self._text_cache) > 256:
                self._text_cache.popitem(last=False)
            return embedding

    def forget_text_embeddings(self) -> None:
        """Drop cached text embeddings: the text tower changed (training it from scratch)."""
        with _TEXT_EMBEDDINGS:
            self._text_cache.clear()
            self.text_embedder.forget()

    def clip_input(self, image: np.ndarray) -> torch.Tensor:
        """(1, 3, S, S) CLIP input from an (H, W, 3) uint8 RGB image, S = config.clip_image_size."""
        return self.surgery.preprocess(image, self.config.clip_image_size, self.device)

    def clip_features(self, clip_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CLIP CLS (B, D) and surgery patch features (B, g, g, D), float32."""
        with self.autocast():
            cls, patches = self.surgery(clip_input)
        return cls.float(), patches.float()

    @staticmethod
    def similarity(patches: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(B, g, g) min-max normalised patch-text cosine similarity."""
        return similarity_map(patches, text)

    def conditioning(
        self,
        text: torch.Tensor | None,
        patches: torch.Tensor | None,
        similarity: torch.Tensor | None,
    ) -> Conditioning | None:
        """The signals the configured modalities inject; None when no concept is set."""
        return None if text is None else Conditioning.of_modalities(self.config.modalities, text, patches, similarity)

    # -------------------------------------------------------------------- SAM
    def sam_input(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """SAM's (1, 3, S, S) normalised, padded input from (H, W, 3) uint8 RGB, and the resized size.

        Resizing is segment_anything's own ``ResizeLongestSide``, so the input equals
        what ``SamPredictor.set_image`` computes.
        """
        from segment_anything.utils.transforms import ResizeLongestSide

        size = self.image_size
        resized = ResizeLongestSide(size).apply_image(image)
        tensor = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None]
        # SAM's own preprocess pads to its attribute's size, not this thread's.
        normalised = (tensor - self.sam.pixel_mean) / self.sam.pixel_std
        return F.pad(normalised, (0, size - resized.shape[1], 0, size - resized.shape[0])), tuple(resized.shape[:2])

    @property
    def first_semantic_block(self) -> int:
        return first_semantic_block(self.adapters)

    def encoder_prefix(self, sam_input: torch.Tensor, checkpointing: bool = False) -> torch.Tensor:
        """Encoder tokens (B, H, W, C) after the blocks that do not depend on the concept."""
        encoder = self.sam.image_encoder
        with self.autocast():
            x = encoder.patch_embed(sam_input)
            if encoder.pos_embed is not None:
                position = encoder.pos_embed
                if position.shape[1:3] != x.shape[1:3]:  # see at_resolution
                    position = F.interpolate(
                        position.permute(0, 3, 1, 2), size=x.shape[1:3], mode="bicubic", align_corners=False
                    ).permute(0, 2, 3, 1)
                x = x + position
            x = run_blocks(encoder.blocks[: self.first_semantic_block], x, None, checkpointing)
        return x

    def encoder_suffix(
        self, prefix: torch.Tensor, conditioning: Conditioning | None, checkpointing: bool = False
    ) -> torch.Tensor:
        """SAM image embedding (B, 256, 64, 64 for published SAM) from :meth:`encoder_prefix`.

        ``conditioning`` is passed to these blocks as arguments, so it holds for this call
        only and goes with checkpointed blocks into their recomputation in backward.
        """
        encoder = self.sam.image_encoder
        with self.autocast():
            x = run_blocks(encoder.blocks[self.first_semantic_block :], prefix, conditioning, checkpointing)
            x = encoder.neck(x.permute(0, 3, 1, 2))
        return x.float()

    def encode_image(
        self, sam_input: torch.Tensor, conditioning: Conditioning | None, checkpointing: bool = False
    ) -> torch.Tensor:
        return self.encoder_suffix(self.encoder_prefix(sam_input, checkpointing), conditioning, checkpointing)

    def decode(
        self,
        image_embedding: torch.Tensor,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        mask_prompt: torch.Tensor | None,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-resolution mask logits (B, C, 256, 256) and predicted IoU (B, C).

        Prompts are in SAM's input frame (after ``ResizeLongestSide``), XY order.
        """
        with sized_prompt_encoder(self) as prompt_encoder:
            sparse, dense = prompt_encoder(points=points, boxes=boxes, masks=mask_prompt)
            position = prompt_encoder.get_dense_pe()
        return self.sam.mask_decoder(image_embeddings=image_embedding, image_pe=position, sparse_prompt_embeddings=sparse,
                                     dense_prompt_embeddings=dense, multimask_output=multimask_output)

    def compile_decoder(self, warm_up: bool = True) -> bool:
        """Compile SAM's prompt decoder with ``torch.compile`` for faster clicks (see ``model/compile.py``).

        Returns False, leaving the eager decoder in place, where compilation fails.
        """
        from .compile import compile_decoder

        return compile_decoder(self, warm_up)

    # --------------------------------------------------------------- adapters
    def trainable_state_dict(self, every_weight: bool = False) -> dict[str, torch.Tensor]:
        """Everything trainable (adapters, prompt encoder, mask decoder, optional CLIP attention), or every weight."""
        parameters = self.every_weight().items() if every_weight else self.trainable_parameters()
        return {name: p.detach().cpu().contiguous() for name, p in parameters}

    def save_adapters(
        self, path: str | os.PathLike, concepts: Sequence[str] = (), extra_metadata: dict[str, str] | None = None,
        *, replace: bool = True, every_weight: bool = False, dtype: torch.dtype | None = None,
    ) -> Path:
        """Write the trainable weights and what they fit to an adapters file, atomically.

        The file appears only once complete: a crash mid-write leaves any previous
        file at ``path`` untouched. With ``replace=False`` an existing file stays as it is
        (:class:`OutputExistsError`). Weights that are not finite are never written
        (:class:`InvalidAdaptersError`).

        Args:
            every_weight: write every weight of the model (a model trained from scratch,
                such as the demo model), loadable onto a randomly initialised model of the
                same architecture.
            dtype: store floating-point tensors in this type (float16 halves the file).
        """
        from ..weights.adapters_file import adapters_metadata, write_adapters_file

        extra = dict(extra_metadata or {})
        if every_weight:
            extra["weights"] = "all"
        metadata = adapters_metadata(
            sam=self.sam_name, clip=self.clip_name, config_json=self.config.to_json(), concepts=concepts, extra=extra,
        )
        tensors = self.trainable_state_dict(every_weight)
        if dtype is not None:
            tensors = {name: tensor.to(dtype) for name, tensor in tensors.items()}
        return write_adapters_file(path, tensors, metadata, replace=replace)

    def load_adapters(self, path: str | os.PathLike) -> dict[str, str]:
        """Load weights saved by :meth:`save_adapters`; returns the file's metadata.

        The whole file is checked before any weight is copied in (``weights/adapters_file.py``):
        after a refusal the model is as it was. A file of every weight (``every_weight``)
        replaces all of the model's weights.

        Raises:
            InvalidAdaptersError: the file is damaged, malformed or unsafe (an entry missing,
                unknown or out of range, a tensor of another name, shape or dtype, or not finite).
            AdaptersMismatchError: a valid file made for another base model or configuration.
        """
        from ..weights import adapters_file as files

        every_weight = files.holds_all_weights(files.read_adapters_metadata(path))  # which shapes to expect
        parameters = self.every_weight().items() if every_weight else self.trainable_parameters()
        tensors, metadata = files.read_adapters(
            path, sam=self.sam_name, clip=self.clip_name, config=self.config, parse_config=ClipSamConfig.from_json,
            shapes={name: tuple(p.shape) for name, p in parameters},
        )
        self.assign_trainable(tensors, every_weight=every_weight)
        self.preferred_image_size = files.preferred_image_size(metadata, self.image_size)
        self.concepts = tuple(json.loads(metadata["concepts"]))
        self.description = metadata.get("description")
        return metadata


__all__ = ["ClipSamModel"]
