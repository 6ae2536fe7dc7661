"""Configuration of the CLIP-guided SAM model, as data."""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from dataclasses import dataclass
from typing import Any

MODALITIES = ("text", "vision", "similarity")

# Bounds for configurations read from shared adapters files: beyond them a file could make
# the model allocate without limit (CLIP's input grows with the square of its side) or run
# thousands of text passes per concept.
MAX_CLIP_IMAGE_SIZE = 2048
MAX_POINTS = 64
MAX_TEMPLATES = 64
MAX_TEMPLATE_CHARACTERS = 300
MAX_ADAPTER_SCALE = 10.0
MAX_BLOCKS = 256  # more than any SAM or CLIP tower has
MAX_REFINER_WIDTH = 256


def _is_integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)

# Prompt templates for the text-embedding ensemble. "photo" is a subset of CLIP's
# ImageNet templates; "microscopy" phrases the concept the way our users' images look.
TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "photo": (
        "a photo of a {}.",
        "a bad photo of the {}.",
        "a photo of the large {}.",
        "a photo of the small {}.",
        "a cropped photo of a {}.",
        "a close-up photo of a {}.",
        "a bright photo of a {}.",
    ),
    "microscopy": (
        "a microscopy image of a {}.",
        "a fluorescence microscopy image of {}.",
        "an electron microscopy image of a {}.",
        "a light microscopy image of {}.",
        "a {} in a microscopy image.",
        "a stained {} under the microscope.",
        "a close-up microscopy image of a {}.",
    ),
}


@dataclass(frozen=True)
class ClipSamConfig:
    """Hyper-parameters of CLIP-guided SAM (defaults are the paper's).

    Attributes:
        modalities: CLIP signals injected by the semantic adapters, a subset of
            ``("text", "vision", "similarity")``. Empty: semantic adapters see only
            SAM's own features.
        semantic_blocks: indices of SAM encoder blocks that carry a semantic adapter
            (negative indices count from the end); ``None`` means every block. Every
            block carries a space adapter.
        bottleneck_ratio: adapter hidden width as a fraction of the block width.
        adapter_scale: factor on every adapter branch.
        similarity_threshold: threshold in [0, 1] on the min-max normalised
            similarity map that gives the binary map B.
        num_points: positive points drawn from B in the text-only mode.
        templates: name of a set in ``TEMPLATE_SETS`` or an explicit tuple of
            templates, each with one ``{}``.
        clip_image_size: side of the square image given to CLIP, in pixels.
        surgery_blocks: number of last CLIP blocks that run the surgery path.
        similarity_mask_prompt: give B to SAM as its dense mask prompt.
        train_clip_attention: make CLIP's vision attention layers trainable.
        mask_refiner: width of a small convolutional head that refines the decoder's
            logits at the full resolution of SAM's input, from them and the input image
            (``model/refine.py``); 0, the paper's, has none. It starts as the identity
            and trains with the mask decoder.
    """

    modalities: tuple[str, ...] = MODALITIES
    semantic_blocks: tuple[int, ...] | None = None
    bottleneck_ratio: float = 0.25
    adapter_scale: float = 0.5
    similarity_threshold: float = 0.8
    num_points: int = 5
    templates: str | tuple[str, ...] = "photo"
    clip_image_size: int = 512
    surgery_blocks: int = 6
    similarity_mask_prompt: bool = True
    train_clip_attention: bool = False
    mask_refiner: int = 0

    def __post_init__(self) -> None:
        # Types are checked as well as ranges: configurations also come from JSON in shared
        # adapters files, where a string or a huge number must fail here, not inside the model.
        if isinstance(self.modalities, str) or not isinstance(self.modalities, (tuple, list)) or not all(
            isinstance(m, str) for m in self.modalities
        ):
            raise ValueError(f"modalities must be a list of names from {list(MODALITIES)}, got {self.modalities!r}.")
        # Lists from JSON become tuples so that the config stays hashable.
        object.__setattr__(self, "modalities", tuple(self.modalities))
        if self.semantic_blocks is not None:
            if not isinstance(self.semantic_blocks, (tuple, list)) or len(self.semantic_blocks) > MAX_BLOCKS or not all(
                _is_integer(b) and -MAX_BLOCKS <= b < MAX_BLOCKS for b in self.semantic_blocks
            ):
                raise ValueError(f"semantic_blocks must be None or a list of block indices, got {self.semantic_blocks!r}.")
            object.__setattr__(self, "semantic_blocks", tuple(int(b) for b in self.semantic_blocks))
        if isinstance(self.templates, (tuple, list)):
            object.__setattr__(self, "templates", tuple(self.templates))
        elif not isinstance(self.templates, str):
            raise ValueError(f"templates must be a set name or a list of templates, got {self.templates!r}.")
        unknown = set(self.modalities) - set(MODALITIES)
        if unknown:
            raise ValueError(
                f"Unknown modalities {sorted(unknown)}; choose from {list(MODALITIES)}."
            )
        for name in ("bottleneck_ratio", "adapter_scale", "similarity_threshold"):
            if not _is_number(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)!r}.")
        if not 0 < self.bottleneck_ratio <= 1:
            raise ValueError(f"bottleneck_ratio must be in (0, 1], got {self.bottleneck_ratio}.")
        if not 0 <= self.adapter_scale <= MAX_ADAPTER_SCALE:
            raise ValueError(f"adapter_scale must be from 0 to {MAX_ADAPTER_SCALE:g}, got {self.adapter_scale}.")
        if not 0 <= self.similarity_threshold <= 1:
            raise ValueError(
                f"similarity_threshold must be in [0, 1], got {self.similarity_threshold}."
            )
        for name, low, high in (("num_points", 1, MAX_POINTS), ("clip_image_size", 32, MAX_CLIP_IMAGE_SIZE),
                                ("surgery_blocks", 1, MAX_BLOCKS), ("mask_refiner", 0, MAX_REFINER_WIDTH)):
            value = getattr(self, name)
            if not _is_integer(value) or not low <= value <= high:
                raise ValueError(f"{name} must be a whole number from {low} to {high}, got {value!r}.")
        for name in ("similarity_mask_prompt", "train_clip_attention"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}.")
        self.template_list()  # validates the templates

    def template_list(self) -> tuple[str, ...]:
        """The prompt templates this configuration uses."""
        if isinstance(self.templates, str):
            try:
                templates = TEMPLATE_SETS[self.templates]
            except KeyError:
                raise ValueError(
                    f"Unknown template set {self.templates!r}; choose one of "
                    f"{sorted(TEMPLATE_SETS)} or give a tuple of templates."
                ) from None
        else:
            templates = self.templates
        if not templates or len(templates) > MAX_TEMPLATES or any(
            not isinstance(t, str) or len(t) > MAX_TEMPLATE_CHARACTERS or t.count("{}") != 1 for t in templates
        ):
            shown = repr(list(templates))
            raise ValueError(
                f"Give 1 to {MAX_TEMPLATES} prompt templates of at most {MAX_TEMPLATE_CHARACTERS} characters, each "
                f"with exactly one '{{}}' for the concept; got {shown if len(shown) <= 200 else shown[:197] + '...'}."
            )
        return templates

    def semantic_block_indices(self, depth: int) -> tuple[int, ...]:
        """The sorted, non-negative indices of blocks with a semantic adapter."""
        if self.semantic_blocks is None:
            return tuple(range(depth))
        resolved = set()
        for index in self.semantic_blocks:
            if not -depth <= index < depth:
                raise ValueError(
                    f"semantic_blocks index {index} is out of range for an encoder of "
                    f"{depth} blocks."
                )
            resolved.add(index % depth)
        return tuple(sorted(resolved))

    def replace(self, **changes: Any) -> ClipSamConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClipSamConfig:
        if not isinstance(data, dict):
            raise ValueError(f"A configuration is a mapping of field names to values, got {type(data).__name__}.")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"Unknown configuration keys {sorted(unknown)}.")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ClipSamConfig:
        return cls.from_dict(json.loads(text))


DEFAULT_CONFIG = ClipSamConfig()
