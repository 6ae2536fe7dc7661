"""CLIP-Guided SAM: segment by concept, points and boxes; a napari plugin and a Python API.

Importing this package imports neither Qt nor napari, so scripts and batch jobs run
without a display. The public names load on first use (PEP 562), which keeps
``import napari_clipsam`` light and lets the napari widgets prepare the process
before torch's stack is imported (see ``_qt_jobs.avoid_triton_on_cpu_only_machines``).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

try:
    from ._version import version as __version__
except ImportError:  # not built by hatch-vcs (e.g. run from a bare source tree)
    __version__ = "unknown"

# Public name -> the private module that defines it.
_PUBLIC = {
    "ClipSamConfig": "_config",
    "DEFAULT_CONFIG": "_config",
    "TEMPLATE_SETS": "_config",
    "resolve_device": "_device",
    "resolve_precision": "_device",
    "to_rgb_uint8": "_image",
    "AdaptersMismatchError": "_model",
    "ClipSamModel": "_model",
    "load_model": "_model",
    "read_adapters_metadata": "_model",
    "ClipSamPredictor": "_predictor",
    "masks_to_instances": "_segment",
    "segment": "_segment",
    "ConceptDataset": "_training",
    "EvaluationReport": "_training",
    "TrainingConfig": "_training",
    "TrainProgress": "_training",
    "TrainResult": "_training",
    "evaluate": "_training",
    "iter_evaluate": "_training",
    "iter_train": "_training",
    "resume_path": "_training",
    "train": "_training",
}

__all__ = ["__version__", *sorted(_PUBLIC)]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'napari_clipsam' has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))


if TYPE_CHECKING:  # for type checkers and IDEs: the names as if imported eagerly
    from ._config import DEFAULT_CONFIG, TEMPLATE_SETS, ClipSamConfig
    from ._device import resolve_device, resolve_precision
    from ._image import to_rgb_uint8
    from ._model import AdaptersMismatchError, ClipSamModel, load_model, read_adapters_metadata
    from ._predictor import ClipSamPredictor
    from ._segment import masks_to_instances, segment
    from ._training import (
        ConceptDataset,
        EvaluationReport,
        TrainingConfig,
        TrainProgress,
        TrainResult,
        evaluate,
        iter_evaluate,
        iter_train,
        resume_path,
        train,
    )
