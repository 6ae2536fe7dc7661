"""CLIP-Guided SAM: segment by concept, points and boxes; a napari plugin and a Python API.

Importing this package imports neither Qt nor napari, so scripts and batch jobs run
without a display.
"""

try:
    from ._version import version as __version__
except ImportError:  # not built by hatch-vcs (e.g. run from a bare source tree)
    __version__ = "unknown"

from ._config import DEFAULT_CONFIG, TEMPLATE_SETS, ClipSamConfig
from ._device import resolve_device, resolve_precision
from ._image import to_rgb_uint8
from ._model import AdaptersMismatchError, ClipSamModel, load_model, read_adapters_metadata
from ._predictor import ClipSamPredictor
from ._segment import masks_to_instances, segment

__all__ = [
    "AdaptersMismatchError",
    "ClipSamConfig",
    "ClipSamModel",
    "ClipSamPredictor",
    "DEFAULT_CONFIG",
    "TEMPLATE_SETS",
    "__version__",
    "load_model",
    "masks_to_instances",
    "read_adapters_metadata",
    "resolve_device",
    "resolve_precision",
    "segment",
    "to_rgb_uint8",
]
