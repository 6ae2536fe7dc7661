"""Widget settings that persist between napari sessions (a small JSON file)."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..inference.seeds import DEFAULT_SCORE_THRESHOLD

SETTINGS_ENV = "NAPARI_CLIPSAM_SETTINGS"
_RECENT_KEPT = 10


@dataclass
class WidgetSettings:
    sam: str = "vit_b"
    sam_weights: str = "default"
    clip: str = "ViT-B-16"
    clip_pretrained: str = "default"
    adapters: str = ""
    device: str = "auto"
    precision: str = "auto"
    sam_input: str = "auto"
    mode: str = "text"
    recent_concepts: list[str] = field(default_factory=list)
    # The model fields' "Model" choice (model_fields.py): a preset name, "" for SAM + CLIP as chosen.
    preset: str = ""
    # The objects options of the segmentation widget (see SegmentOptions); diameter 0: estimated.
    instances: bool = False
    instance_method: str = "seeds"
    refine: bool = False
    min_area: int = 0
    diameter: float = 0.0
    diameter_unit: str = "px"  # or "µm": by the image layer's scale and units
    score_threshold: float = DEFAULT_SCORE_THRESHOLD
    link_planes: bool = True  # one label per 3-D object in "All slices"
    other_concepts: bool = True  # text only: the concepts the model lists compete for pixels
    augment: str = "auto"  # text only: logits averaged over 8 views ("auto", "on", "off")
    # Large images (large_image_controls.py): "auto", "off" or "custom" tiles; halo 0: auto.
    tiles: str = "auto"
    tile_size: int = 512
    tile_halo: int = 0
    scale: float = 0.0  # image pixels per pixel read; 0: auto (inference/rescale.py)

    def model_arguments(self) -> dict[str, Any]:
        """The :func:`napari_clipsam.load_model` keyword arguments these settings describe.

        The one conversion from settings to a model, for both dock widgets: "none"
        words mean random weights, empty fields their defaults.
        """
        from ..weights.registry import parse_weights_choice

        if self.preset:  # a model shipped in the package brings its own architecture and weights
            return dict(preset=self.preset, adapters=self.adapters or None, device=self.device,
                        precision=self.precision)
        return dict(
            sam=self.sam,
            sam_checkpoint=parse_weights_choice(self.sam_weights),
            clip=self.clip.strip() or WidgetSettings.clip,
            clip_pretrained=parse_weights_choice(self.clip_pretrained),
            adapters=self.adapters or None,
            device=self.device,
            precision=self.precision,
        )

    def remember_concept(self, concept: str) -> None:
        if concept in self.recent_concepts:
            self.recent_concepts.remove(concept)
        self.recent_concepts.insert(0, concept)
        del self.recent_concepts[_RECENT_KEPT:]


def settings_path() -> Path | None:
    """Where settings live; None when persistence is off.

    ``NAPARI_CLIPSAM_SETTINGS`` may name a file, or be ``off`` (the tests' setting).
    """
    override = os.environ.get(SETTINGS_ENV)
    if override is not None:
        return None if override.strip().lower() in {"", "off", "0", "none"} else Path(override)
    import platformdirs

    return Path(platformdirs.user_config_dir("napari-clipsam")) / "widget.json"


def load_settings() -> WidgetSettings:
    """The saved settings, or defaults when there are none or they cannot be read."""
    path = settings_path()
    if path is None or not path.is_file():
        return WidgetSettings()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        known = {f.name for f in fields(WidgetSettings)}
        return WidgetSettings(**{k: v for k, v in data.items() if k in known})
    except (OSError, ValueError, TypeError) as err:
        # A damaged file must not stop the widget from opening.
        logging.getLogger(__name__).warning("Ignoring unreadable settings %s: %s", path, err)
        return WidgetSettings()


def save_settings(settings: WidgetSettings) -> None:
    """Write the settings atomically; failures are logged, never raised."""
    path = settings_path()
    if path is None:
        return
    from .._io import write_atomically

    text = json.dumps(asdict(settings), indent=2)
    try:
        write_atomically(path, lambda temporary: Path(temporary).write_text(text, encoding="utf-8"))
    except OSError as err:
        logging.getLogger(__name__).warning("Could not save settings to %s: %s", path, err)
