"""The CLIP-guided SAM model: SAM with adapters, CLIP with surgery features, and loading."""

from __future__ import annotations

import dataclasses
import json
import os
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._adapters import (
    ADAPTER_KEY,
    BlockAdapter,
    Conditioning,
    attach_adapters,
    conditioned,
    first_semantic_block,
)
from ._attention import use_banded_global_attention
from ._clip import SurgeryVisionEncoder, TextEmbedder, build_clip, get_tokenizer, similarity_map
from ._config import ClipSamConfig
from ._device import autocast, resolve_device, resolve_precision
from ._sam import build_sam

ADAPTERS_FORMAT = "napari-clipsam-adapters"
ADAPTERS_FORMAT_VERSION = "1"

# CLIP's own normalisation constants, used when the tower does not carry its own.
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

ProgressCallback = Callable[[int, "int | None"], None]


class AdaptersMismatchError(ValueError):
    """Saved adapters do not fit the model they are loaded onto."""


def _package_version() -> str:
    try:
        from ._version import version
    except ImportError:
        return "unknown"
    return version


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
        # Same attention, a band of queries at a time: bounds the encoder's peak memory.
        use_banded_global_attention(sam.image_encoder)
        self.text_embedder = TextEmbedder(clip_model, tokenizer, config.template_list())
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        # SAM input side the loaded adapters were trained at (None: native); predictors
        # without an explicit image_size run at it.
        self.preferred_image_size: int | None = None
        # Counts changes to the trainable weights (loading, training): predictors compare
        # it with the count their cached features were computed at.
        self.weights_version = 0
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
        """Side of SAM's square input, in pixels (1024 for the published models)."""
        return self.sam.image_encoder.img_size

    @contextmanager
    def at_resolution(self, size: int | None) -> Iterator[None]:
        """Run SAM at a square input of ``size`` pixels instead of its native size (1024).

        A smaller input makes the encoder several times cheaper (tokens fall with the
        square of the size) at some cost in detail; the absolute position embedding is
        resized to the new grid and the relative ones are resized by SAM itself. Inside
        the block, :attr:`image_size`, :attr:`mask_input_size` and SAM's own sizes follow
        ``size``. None, or the current size, changes nothing. Not for concurrent use.
        """
        encoder, prompt_encoder = self.sam.image_encoder, self.sam.prompt_encoder
        if size is None or size == encoder.img_size:
            yield
            return
        patch = encoder.patch_embed.proj.kernel_size[0]
        if size % patch or size < 4 * patch:
            raise ValueError(f"The SAM input size must be a multiple of {patch} and at least {4 * patch}, got {size}.")
        saved = (encoder.img_size, prompt_encoder.input_image_size, prompt_encoder.image_embedding_size,
                 prompt_encoder.mask_input_size)
        grid = size // patch
        encoder.img_size = size
        prompt_encoder.input_image_size = (size, size)
        prompt_encoder.image_embedding_size = (grid, grid)
        prompt_encoder.mask_input_size = (4 * grid, 4 * grid)
        try:
            yield
        finally:
            (encoder.img_size, prompt_encoder.input_image_size, prompt_encoder.image_embedding_size,
             prompt_encoder.mask_input_size) = saved

    @property
    def mask_input_size(self) -> tuple[int, int]:
        """Size of SAM's low-resolution mask prompt and logits, (256, 256) for published models."""
        return tuple(self.sam.prompt_encoder.mask_input_size)

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

    def assign_trainable(self, tensors: dict[str, torch.Tensor]) -> None:
        """Copy ``tensors`` into the trainable parameters of the same names.

        Every replacement of trainable weights goes through here, so that predictors
        learn (through :attr:`weights_version`) that their cached features are stale.
        """
        parameters = dict(self.trainable_parameters())
        with torch.no_grad():
            for name, value in tensors.items():
                parameter = parameters[name]
                parameter.copy_(value.to(parameter.device, parameter.dtype))
        self.weights_version += 1

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
        cached = self._text_cache.get(concept)
        if cached is not None:
            self._text_cache.move_to_end(concept)
            return cached
        embedding = self.text_embedder(concept, self.device)
        self._text_cache[concept] = embedding
        while len(self._text_cache) > 256:
            self._text_cache.popitem(last=False)
        return embedding

    def clip_input(self, image: np.ndarray) -> torch.Tensor:
        """(1, 3, S, S) CLIP input from an (H, W, 3) uint8 RGB image, S = config.clip_image_size."""
        size = self.config.clip_image_size
        patch = self.surgery.patch_size
        size = max(patch, size // patch * patch)
        tensor = torch.as_tensor(image, device=self.device).permute(2, 0, 1)[None].float() / 255.0
        tensor = F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        mean = getattr(self.clip.visual, "image_mean", None) or _CLIP_MEAN
        std = getattr(self.clip.visual, "image_std", None) or _CLIP_STD
        mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        return (tensor - mean) / std

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
        if text is None:
            return None
        if text.ndim == 1:
            text = text[None]
        modalities = self.config.modalities
        return Conditioning(
            text=text if "text" in modalities else None,
            patches=patches if "vision" in modalities else None,
            similarity=similarity if "similarity" in modalities else None,
        )

    # -------------------------------------------------------------------- SAM
    def sam_input(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """SAM's (1, 3, S, S) normalised, padded input from (H, W, 3) uint8 RGB, and the resized size.

        Resizing is segment_anything's own ``ResizeLongestSide``, so the input equals
        what ``SamPredictor.set_image`` computes.
        """
        from segment_anything.utils.transforms import ResizeLongestSide

        resized = ResizeLongestSide(self.image_size).apply_image(image)
        tensor = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None]
        return self.sam.preprocess(tensor), tuple(resized.shape[:2])

    @property
    def first_semantic_block(self) -> int:
        return first_semantic_block(self.adapters)

    @staticmethod
    def _run_blocks(blocks: Iterable[nn.Module], x: torch.Tensor, checkpointing: bool) -> torch.Tensor:
        from torch.utils.checkpoint import checkpoint

        for block in blocks:
            # Checkpointing keeps only block inputs for backward and recomputes the rest.
            x = checkpoint(block, x, use_reentrant=False) if checkpointing else block(x)
        return x

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
            x = self._run_blocks(encoder.blocks[: self.first_semantic_block], x, checkpointing)
        return x

    def encoder_suffix(
        self, prefix: torch.Tensor, conditioning: Conditioning | None, checkpointing: bool = False
    ) -> torch.Tensor:
        """SAM image embedding (B, 256, 64, 64 for published SAM) from :meth:`encoder_prefix`.

        With ``checkpointing`` (training), keep the same conditioning in force around the
        backward pass too (``conditioned(model.adapters, conditioning)``), since
        checkpointed blocks are recomputed there.
        """
        encoder = self.sam.image_encoder
        with self.autocast(), conditioned(self.adapters, conditioning):
            x = self._run_blocks(encoder.blocks[self.first_semantic_block :], prefix, checkpointing)
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
        sparse, dense = self.sam.prompt_encoder(points=points, boxes=boxes, masks=mask_prompt)
        return self.sam.mask_decoder(
            image_embeddings=image_embedding,
            image_pe=self.sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
        )

    def compile_decoder(self, warm_up: bool = True) -> bool:
        """Compile SAM's prompt decoder with ``torch.compile`` for faster clicks.

        On a 2-core CPU this cut the latency of a point prompt by 8 to 32 % in our
        benchmark runs (docs/benchmarks.md), but compiling takes tens of seconds (once
        per process), so call it in the background. Shapes are dynamic, so any number
        of points reuses one compilation; ``warm_up`` runs the point, box and mask-prompt variants once to compile them
        all now. Parameter names do not change. Returns False, leaving the eager
        decoder in place, where compilation fails (e.g. no C++ compiler).
        """
        decoder = self.sam.mask_decoder
        decoder.compile(dynamic=True)
        if not warm_up:
            return True
        try:
            with torch.no_grad():
                embedding = torch.zeros(
                    1, self.sam.prompt_encoder.embed_dim, *self.sam.prompt_encoder.image_embedding_size,
                    device=self.device,
                )
                points = (torch.zeros(1, 2, 2, device=self.device), torch.ones(1, 2, dtype=torch.int, device=self.device))
                box = torch.tensor([[0.0, 0.0, 8.0, 8.0]], device=self.device)
                mask = torch.zeros(1, 1, *self.mask_input_size, device=self.device)
                for prompts in ((points, None, None), (points, box, None), (None, box, None), (points, None, mask)):
                    for multimask in (False, True):
                        self.decode(embedding, *prompts, multimask_output=multimask)
        except Exception as err:  # a missing compiler shows up here, at the first call
            import logging

            logging.getLogger(__name__).warning("torch.compile of the decoder failed, staying eager: %s", err)
            decoder._compiled_call_impl = None
            return False
        return True

    # --------------------------------------------------------------- adapters
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Everything trainable (adapters, prompt encoder, mask decoder, optional CLIP attention)."""
        return {name: p.detach().cpu().contiguous() for name, p in self.trainable_parameters()}

    def adapters_metadata(
        self, concepts: Sequence[str] = (), extra_metadata: dict[str, str] | None = None
    ) -> dict[str, str]:
        return {
            **(extra_metadata or {}),
            "format": ADAPTERS_FORMAT,
            "format_version": ADAPTERS_FORMAT_VERSION,
            "sam": self.sam_name,
            "clip": self.clip_name,
            "config": self.config.to_json(),
            "concepts": json.dumps(list(concepts)),
            "napari_clipsam_version": _package_version(),
        }

    def save_adapters(
        self, path: str | os.PathLike, concepts: Sequence[str] = (), extra_metadata: dict[str, str] | None = None
    ) -> Path:
        """Write the trainable weights as safetensors with metadata, atomically.

        The file appears only once complete: a crash mid-write leaves any previous
        file at ``path`` untouched.
        """
        from safetensors.torch import save_file

        from ._io import write_atomically

        metadata = self.adapters_metadata(concepts, extra_metadata)
        tensors = self.trainable_state_dict()
        path = write_atomically(path, lambda temporary: save_file(tensors, temporary, metadata=metadata))
        return path

    def load_adapters(self, path: str | os.PathLike) -> dict[str, str]:
        """Load weights saved by :meth:`save_adapters`; returns the file's metadata.

        Raises:
            AdaptersMismatchError: the file was made for another base model or configuration.
        """
        metadata = read_adapters_metadata(path)
        problems = []
        if metadata.get("sam") != self.sam_name:
            problems.append(f"SAM {metadata.get('sam')!r} in the file, {self.sam_name!r} in the model")
        if metadata.get("clip") != self.clip_name:
            problems.append(f"CLIP {metadata.get('clip')!r} in the file, {self.clip_name!r} in the model")
        file_config = ClipSamConfig.from_json(metadata["config"])
        if file_config != self.config:
            problems.append(
                f"configuration {file_config.to_dict()} in the file, {self.config.to_dict()} in the model"
            )
        if problems:
            raise AdaptersMismatchError(
                f"Adapters {path} do not fit this model: " + "; ".join(problems)
                + ". Load them with napari_clipsam.load_model(sam=..., clip=..., adapters=path) "
                "using the names in the file, which also applies the file's configuration."
            )
        from safetensors.torch import load_file

        tensors = load_file(str(path), device="cpu")
        expected = dict(self.trainable_parameters())
        missing = sorted(set(expected) - set(tensors))
        unexpected = sorted(set(tensors) - set(expected))
        wrong_shape = [
            f"{name}: file {tuple(tensors[name].shape)}, model {tuple(expected[name].shape)}"
            for name in set(tensors) & set(expected)
            if tensors[name].shape != expected[name].shape
        ]
        if missing or unexpected or wrong_shape:
            raise AdaptersMismatchError(
                f"Adapters {path} do not match the model's trainable weights: "
                f"missing {missing[:10]}, unexpected {unexpected[:10]}, shapes {wrong_shape[:10]}."
            )
        self.assign_trainable(tensors)
        size = metadata.get("training_image_size")
        self.preferred_image_size = int(size) if size and int(size) != self.image_size else None
        return metadata


def read_adapters_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata of an adapters file, checked to be ours."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Adapters file {path} does not exist.")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as err:
        raise ValueError(f"{path} is not a readable safetensors file: {err}") from err
    if metadata.get("format") != ADAPTERS_FORMAT:
        raise ValueError(
            f"{path} is not a napari-clipsam adapters file (its metadata has no "
            f"format={ADAPTERS_FORMAT!r})."
        )
    if metadata.get("format_version") != ADAPTERS_FORMAT_VERSION:
        raise ValueError(
            f"{path} has adapters format version {metadata.get('format_version')}; this "
            f"napari-clipsam reads version {ADAPTERS_FORMAT_VERSION}. Update napari-clipsam."
        )
    return metadata


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
) -> ClipSamModel:
    """Build CLIP-guided SAM and load its weights.

    Args:
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
    """
    from ._weights import (
        load_sam_state_dict,
        load_state_dict_checked,
        resolve_clip_checkpoint,
        resolve_sam_checkpoint,
    )

    if adapters is not None:
        metadata = read_adapters_metadata(adapters)
        file_config = ClipSamConfig.from_json(metadata["config"])
        if config is not None and config != file_config:
            raise AdaptersMismatchError(
                f"The adapters {adapters} were trained with configuration "
                f"{file_config.to_dict()}, which differs from the one given. Leave config=None."
            )
        config = file_config
    config = config or ClipSamConfig()
    torch_device = resolve_device(device)
    resolved_precision = resolve_precision(precision, torch_device)

    # Find (or download) every file before building anything, so that a missing
    # file is reported at once.
    sam_path = resolve_sam_checkpoint(sam, sam_checkpoint, cache_dir=cache_dir, progress=progress)
    clip_path, clip_cfg = resolve_clip_checkpoint(clip, clip_pretrained, cache_dir=cache_dir, progress=progress)

    sam_model = build_sam(sam)
    if sam_path is not None:
        state_dict = load_sam_state_dict(sam_path)
        load_state_dict_checked(sam_model, state_dict, what=f"SAM {sam} checkpoint {sam_path}")

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


def _load_clip_weights(clip_model: nn.Module, clip_name: str, path: Path) -> None:
    import open_clip

    from ._weights import CheckpointMismatchError, load_state_dict_checked

    try:
        open_clip.load_checkpoint(clip_model, str(path), strict=True, weights_only=True)
    except RuntimeError as err:
        # Re-check key by key for a message that lists what does not fit.
        state_dict = open_clip.factory.load_state_dict(str(path), weights_only=True)
        load_state_dict_checked(clip_model, state_dict, what=f"CLIP {clip_name} weights {path}")
        raise CheckpointMismatchError(f"CLIP {clip_name} weights {path} do not fit: {err}") from err


def adapter_keys(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Keys of a SAM state dict that belong to our adapters."""
    return [key for key in state_dict if ADAPTER_KEY in key]


__all__ = [
    "AdaptersMismatchError",
    "BlockAdapter",
    "ClipSamModel",
    "adapter_keys",
    "load_model",
    "read_adapters_metadata",
]
