"""The model part of the segmentation widget: which SAM, CLIP, weights, device and precision.

Choices come from the registries, not from lists written here: SAM variants from
:func:`~napari_clipsam.model.build_sam.list_sam_variants`, SAM checkpoints from the
weights registry, CLIP names from open_clip once it is imported (a model was loaded),
else from the registry's CLIP defaults. Nothing here imports torch or open_clip.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from magicgui.widgets import ComboBox, FileEdit, LineEdit, PushButton

from .settings import WidgetSettings

# SAM input sides offered; "auto" is the size the adapters were trained at, else SAM's own.
SAM_INPUTS = ["auto", "1024", "768", "512"]
DEVICES = ["auto", "cpu", "cuda", "mps"]
PRECISIONS = ["auto", "fp32", "bf16"]
DEFAULT_WEIGHTS = "default"
# The model choice: SAM and CLIP as the fields below say, or a model shipped in the package.
OWN_CHOICE = "SAM + CLIP (as chosen below)"
# A CLIP name kept out of the way at the end of the list: the test architecture.
_TEST_MODEL = "tiny"


def model_choices() -> dict[str, str]:
    """Label -> preset name ("" for SAM and CLIP as the fields say), the presets labelled as what they are for."""
    from ..weights.presets import PRESETS

    return {OWN_CHOICE: "", **{preset.label: name for name, preset in PRESETS.items()}}


def sam_variant_choices() -> list[str]:
    """SAM variants: those with published weights first, the test variant(s) at the end.

    A preset's own architecture and the demo model's variants are left out: without a
    preset's weights they would only ever have random ones; the Model choice offers the preset.
    """
    from ..model.build_sam import DEMO_VARIANTS, list_sam_variants
    from ..weights.presets import PRESETS
    from ..weights.registry import DEFAULT_SAM_WEIGHTS

    own = {preset.sam for preset in PRESETS.values()} | set(DEMO_VARIANTS)
    variants = [v for v in list_sam_variants() if v not in own]
    return [v for v in variants if v in DEFAULT_SAM_WEIGHTS] + [v for v in variants if v not in DEFAULT_SAM_WEIGHTS]


def sam_weight_choices(variant: str) -> list[str]:
    """The checkpoints that fit ``variant`` ("default": its official one), then random weights."""
    from ..weights.registry import DEFAULT_SAM_WEIGHTS, RANDOM_WEIGHTS, list_sam_weights

    default = DEFAULT_SAM_WEIGHTS.get(variant)
    if default is None:  # nothing published (the test variant): random weights only
        return [RANDOM_WEIGHTS]
    return [DEFAULT_WEIGHTS, *[name for name in list_sam_weights(variant) if name != default], RANDOM_WEIGHTS]


def clip_model_names(current: str = "") -> list[str]:
    """CLIP names to suggest: open_clip's list where open_clip is loaded already, else the registry's defaults.

    open_clip takes seconds to import, which would block napari; after a model has been
    loaded it is in memory and its full list is free. ``current`` (e.g. an ``hf-hub:``
    name typed earlier) is always offered.
    """
    if "open_clip" in sys.modules:
        from ..model.clip import list_clip_models

        names = list_clip_models()
    else:
        from ..weights.registry import DEFAULT_CLIP_PRETRAINED

        names = list(DEFAULT_CLIP_PRETRAINED)
    names = [name for name in names if name != _TEST_MODEL] + ([_TEST_MODEL] if _TEST_MODEL in names else [])
    current = current.strip()
    return names if not current or current in names else [*names, current]


def clip_weight_names(model_name: str) -> list[str]:
    """CLIP weights to suggest: "default", random, and open_clip's tags for ``model_name`` where it is loaded."""
    names = [DEFAULT_WEIGHTS, "none"]
    open_clip = sys.modules.get("open_clip")
    if open_clip is not None and model_name.strip():
        names.extend(open_clip.list_pretrained_tags_by_model(model_name.strip()))
    return names


class ModelFields:
    """The model controls, their choices, and the settings they read from and write to."""

    def __init__(self, settings: WidgetSettings) -> None:
        self._presets = model_choices()
        labels = {name: label for label, name in self._presets.items()}
        self.model = ComboBox(label="Model", choices=list(self._presets), value=labels.get(settings.preset, OWN_CHOICE))
        self.model.tooltip = (
            "SAM and CLIP with pretrained weights (downloaded once), or the demo model shipped with the plugin: "
            "trained on generated scenes only (nucleus, cell membrane, spot, bacterium), to try the plugin "
            "offline; not for real data."
        )
        variants = sam_variant_choices()
        self.sam = ComboBox(label="SAM", choices=variants, value=_choice(settings.sam, variants))
        self.sam.tooltip = "Segment Anything's image encoder. 'tiny' is a small test model (random weights only)."
        self.sam_weights = ComboBox(label="SAM weights", choices=self._weight_choices)
        self.sam_weights.value = _choice(settings.sam_weights, self.sam_weights.choices)
        self.clip = LineEdit(label="CLIP model", value=settings.clip)
        self.clip.tooltip = "An open_clip model name (suggestions as you type), or an hf-hub: name."
        self.clip_pretrained = LineEdit(label="CLIP weights", value=settings.clip_pretrained)
        self.clip_pretrained.tooltip = "'default', an open_clip pretrained tag, a file path, or 'none' (random)."
        self.adapters = FileEdit(label="Adapters", mode="r", filter="*.safetensors", value=settings.adapters)
        self.device = ComboBox(label="Device", choices=DEVICES, value=_choice(settings.device, DEVICES))
        self.precision = ComboBox(label="Precision", choices=PRECISIONS, value=_choice(settings.precision, PRECISIONS))
        self.sam_input = ComboBox(label="SAM input", choices=SAM_INPUTS, value=_choice(settings.sam_input, SAM_INPUTS))
        self.sam_input.tooltip = (
            "Side of the image SAM sees, in pixels. Smaller is faster (512: about 4x on a CPU) with "
            "less detail. auto: the size the adapters were trained at, else 1024."
        )
        self.load_button = PushButton(text="Load model")
        self._clip_completer = _attach_completer(self.clip.native)
        self._weights_completer = _attach_completer(self.clip_pretrained.native)
        self.sam.changed.connect(self.sam_weights.reset_choices)
        self.model.changed.connect(self._enable_architecture_fields)
        self._enable_architecture_fields()
        self.clip.changed.connect(self._suggest_weights)
        self.refresh_choices()

    @property
    def widgets(self) -> list:
        """The controls in the order the dock shows them."""
        return [self.model, self.sam, self.sam_weights, self.clip, self.clip_pretrained, self.adapters,
                self.device, self.precision, self.sam_input, self.load_button]

    @property
    def saved_fields(self) -> list:
        """The controls whose changes are remembered between sessions."""
        return self.widgets[:-1]

    def refresh_choices(self, *_: Any) -> None:
        """Suggest the CLIP names and weights known now (more once a model has loaded open_clip)."""
        self._clip_completer.model().setStringList(clip_model_names(self.clip.value))
        self._suggest_weights()

    def _suggest_weights(self, *_: Any) -> None:
        self._weights_completer.model().setStringList(clip_weight_names(self.clip.value))

    @property
    def preset(self) -> str:
        """The preset chosen ("demo"), or "" for SAM and CLIP as the fields say."""
        return self._presets[self.model.value]

    def _enable_architecture_fields(self, *_: Any) -> None:
        # A preset brings its own architecture and weights: the fields would not apply.
        for field in (self.sam, self.sam_weights, self.clip, self.clip_pretrained):
            field.enabled = not self.preset

    def store(self, settings: WidgetSettings) -> None:
        """Write the current values into ``settings``."""
        settings.preset = self.preset
        settings.sam = self.sam.value
        settings.sam_weights = self.sam_weights.value
        settings.clip = self.clip.value
        settings.clip_pretrained = self.clip_pretrained.value
        settings.adapters = _path_or_empty(self.adapters.value)
        settings.device = self.device.value
        settings.precision = self.precision.value
        settings.sam_input = self.sam_input.value

    def image_size(self) -> int | None:
        """The SAM input side chosen, None for "auto"."""
        return None if self.sam_input.value == "auto" else int(self.sam_input.value)

    def _weight_choices(self, _widget: Any = None) -> list[str]:
        return sam_weight_choices(self.sam.value)


def _attach_completer(line_edit):
    """A case-insensitive, match-anywhere completer on a QLineEdit; fill it through ``.model()``."""
    from qtpy.QtCore import QStringListModel, Qt
    from qtpy.QtWidgets import QCompleter

    completer = QCompleter(line_edit)
    completer.setModel(QStringListModel(completer))
    completer.setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
    completer.setFilterMode(Qt.MatchFlag.MatchContains)
    line_edit.setCompleter(completer)
    return completer


def _choice(value: str, choices: list[str]) -> str:
    return value if value in choices else choices[0]


def _path_or_empty(value: Any) -> str:
    text = str(value) if value is not None else ""
    return "" if text in {"", "."} or not Path(text).is_file() else text
