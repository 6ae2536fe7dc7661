"""CLIP-Guided SAM: segment by concept, points and boxes; a napari plugin and a Python API.

Importing this package imports neither Qt nor napari, so scripts and batch jobs run
without a display. The public names load on first use (PEP 562), which keeps
``import napari_clipsam`` light and lets the napari widgets prepare the process
before torch's stack is imported (see ``model.device.avoid_triton_on_cpu_only_machines``).
Importing it asks torch to put large CPU tensors in huge pages (``_machine.use_huge_pages``;
``THP_MEM_ALLOC_ENABLE=0`` turns that off).

Where things are: ``model/`` (networks and builders), ``weights/`` (files, formats,
registry), ``inference/`` (predictor and the segmentation pipeline), ``training/``,
``_qt/`` (napari widgets), ``cli/`` (the ``napari-clipsam`` command), ``errors.py``.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from ._machine import use_huge_pages

use_huge_pages()  # before torch's first allocation: large CPU tensors in 2 MB pages (see there)

try:
    from ._version import version as __version__
except ImportError:  # not built by hatch-vcs (e.g. run from a bare source tree)
    __version__ = "unknown"

# Public name -> the module that defines it.
_PUBLIC = {
    "ClipSamConfig": "model.config",
    "DEFAULT_CONFIG": "model.config",
    "TEMPLATE_SETS": "model.config",
    "resolve_device": "model.device",
    "resolve_precision": "model.device",
    "ClipSamModel": "model.clipsam",
    "load_model": "model.build",
    "list_sam_variants": "model.build_sam",
    "list_clip_models": "model.clip",
    "read_adapters_metadata": "weights.adapters_file",
    "cache_dir": "weights.registry",
    "list_sam_weights": "weights.registry",
    "to_rgb_uint8": "inference.image",
    "ClipSamPredictor": "inference.predictor",
    "EmbeddingStore": "inference.embedding_store",
    "masks_to_instances": "inference.instances",
    "SegmentOptions": "inference.pipeline",
    "SegmentResult": "inference.pipeline",
    "iter_segment": "inference.pipeline",
    "iter_segment_stack": "inference.pipeline",
    "segment": "inference.pipeline",
    "segment_layer": "inference.layers",
    "iter_propagate": "inference.propagation",
    "ConceptDataset": "training.data",
    "EvaluationReport": "training.results",
    "evaluate": "training.evaluate",
    "iter_evaluate": "training.evaluate",
    "TrainingConfig": "training.config",
    "TrainProgress": "training.results",
    "TrainResult": "training.results",
    "iter_train": "training.engine",
    "resume_path": "training.run_files",
    "train": "training.engine",
    "Progress": "_jobs",
    "run": "_jobs",
    # Errors a script may want to catch (all derive from ClipSamError).
    "ClipSamError": "errors",
    "AdaptersMismatchError": "errors",
    "AmbiguousWeightsError": "errors",
    "UnsupportedImageError": "errors",
    "CheckpointMismatchError": "errors",
    "ChecksumMismatchError": "errors",
    "MissingDependencyError": "errors",
    "CorruptFileError": "errors",
    "ConcurrentUseError": "errors",
    "InvalidAdaptersError": "errors",
    "TrainingDivergedError": "errors",
    "OutputExistsError": "errors",
    "UnsafeCheckpointError": "errors",
    "WeightsUnavailableError": "errors",
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
    from ._jobs import Progress, run
    from .errors import (
        AdaptersMismatchError,
        AmbiguousWeightsError,
        CheckpointMismatchError,
        ChecksumMismatchError,
        ClipSamError,
        ConcurrentUseError,
        CorruptFileError,
        InvalidAdaptersError,
        MissingDependencyError,
        OutputExistsError,
        TrainingDivergedError,
        UnsafeCheckpointError,
        UnsupportedImageError,
        WeightsUnavailableError,
    )
    from .inference.image import to_rgb_uint8
    from .inference.instances import masks_to_instances
    from .inference.layers import segment_layer
    from .inference.pipeline import SegmentOptions, SegmentResult, iter_segment, iter_segment_stack, segment
    from .inference.predictor import ClipSamPredictor
    from .inference.propagation import iter_propagate
    from .model.build import load_model
    from .model.build_sam import list_sam_variants
    from .model.clip import list_clip_models
    from .model.clipsam import ClipSamModel
    from .model.config import DEFAULT_CONFIG, TEMPLATE_SETS, ClipSamConfig
    from .model.device import resolve_device, resolve_precision
    from .training.config import TrainingConfig
    from .training.data import ConceptDataset
    from .training.engine import iter_train, train
    from .training.evaluate import evaluate, iter_evaluate
    from .training.results import EvaluationReport, TrainProgress, TrainResult
    from .training.run_files import resume_path
    from .weights.adapters_file import read_adapters_metadata
    from .weights.registry import cache_dir, list_sam_weights
