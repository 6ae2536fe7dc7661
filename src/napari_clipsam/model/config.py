"""Configuration of the CLIP-guided SAM model, as data."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

MODALITIES = ("text", "vision", "similarity")

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

    def __post_init__(self) -> None:
        # Lists from JSON become tuples so that the config stays hashable.
        object.__setattr__(self, "modalities", tuple(self.modalities))
        if self.semantic_blocks is not None:
            object.__setattr__(self, "semantic_blocks", tuple(int(b) for b in self.semantic_blocks))
        if not isinstance(self.templates, str):
            object.__setattr__(self, "templates", tuple(self.templates))
        unknown = set(self.modalities) - set(MODALITIES)
        if unknown:
            raise ValueError(
                f"Unknown modalities {sorted(unknown)}; choose from {list(MODALITIES)}."
            )
        if not 0 < self.bottleneck_ratio <= 1:
            raise ValueError(f"bottleneck_ratio must be in (0, 1], got {self.bottleneck_ratio}.")
        if not 0 <= self.similarity_threshold <= 1:
            raise ValueError(
                f"similarity_threshold must be in [0, 1], got {self.similarity_threshold}."
            )
        if self.num_points < 1:
            raise ValueError(f"num_points must be at least 1, got {self.num_points}.")
        if self.clip_image_size < 32:
            raise ValueError(f"clip_image_size must be at least 32, got {self.clip_image_size}.")
        if self.surgery_blocks < 1:
            raise ValueError(f"surgery_blocks must be at least 1, got {self.surgery_blocks}.")
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
        if not templates or any(t.count("{}") != 1 for t in templates):
            raise ValueError(
                "Every prompt template must contain exactly one '{}' for the concept, "
                f"got {list(templates)}."
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
