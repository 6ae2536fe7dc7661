"""Models shipped inside the package, loaded by name: ``load_model(preset="demo")``.

The demo model is small CLIP-guided SAM trained from scratch by our own engine on
generated microscopy-like scenes (``napari_clipsam.synthetic``), so that the plugin shows a
real result with no download. It knows only the generated scenes' concepts and is not
meant for real data; the real (pretrained SAM and CLIP) weights stay the default.
``scripts/train_demo_model.py`` reproduces the file from its seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from ..synthetic.scenes import CONCEPT_DIAMETERS


@dataclass(frozen=True)
class Preset:
    """A model file in the package and the architecture it is for.

    Attributes:
        name: what ``load_model(preset=...)`` and ``--preset`` take.
        file: the file's name in ``napari_clipsam/weights/files``.
        sam, clip: the architectures (``build_sam``/``build_clip`` names) it fills.
        label: how the widget names it, saying what it is for.
        concept_diameters: (low, high) object diameter in pixels (a rod's length) each concept
            was trained at: ``scale="auto"`` reads an image so that the user's ``diameter``
            falls in it (``inference/rescale.py``).
    """

    name: str
    file: str
    sam: str
    clip: str
    label: str
    concept_diameters: tuple[tuple[str, tuple[float, float]], ...] = ()


PRESETS: dict[str, Preset] = {
    "demo": Preset(
        name="demo",
        file="clipsam-demo.safetensors",
        sam="demo",
        clip="demo",
        label="Demo model (generated scenes only, not for real data)",
        concept_diameters=tuple(CONCEPT_DIAMETERS.items()),
    ),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``.

    Raises:
        ValueError: no such preset (the message lists them).
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"Unknown preset {name!r}; choose one of {', '.join(PRESETS)}.") from None


def preset_path(name: str) -> Path:
    """The path of preset ``name``'s file in the installed package.

    Raises:
        ValueError: no such preset.
        FileNotFoundError: the file is missing from this installation (a packaging error).
    """
    path = Path(str(files("napari_clipsam") / "weights" / "files" / get_preset(name).file))
    if not path.is_file():
        raise FileNotFoundError(
            f"The {name} model file {path} is missing from this installation of napari-clipsam; "
            "reinstall the package (pip install --force-reinstall napari-clipsam)."
        )
    return path


__all__ = ["PRESETS", "Preset", "get_preset", "preset_path"]
