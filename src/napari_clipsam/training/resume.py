"""The resumable training state kept beside an adapters file: where it is, writing it, and
reading it back checked.

The state is a PyTorch file of tensors and plain values, read without unpickling any
Python object (``weights_only``). Like an adapters file it may come from elsewhere or be
damaged, so every entry is checked before any of it reaches the model or the optimiser: a
refusal names the file and the entry, and leaves both untouched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from .._io import write_atomically
from ..errors import CheckpointMismatchError, CorruptFileError, UnsafeCheckpointError
from .results import EvaluationReport
from .run_files import resume_path

_KEYS = {"trainable", "optimizer", "step", "losses", "best_state", "best_step", "best_report"}


@dataclass
class ResumeState:
    """A checked training state: weights, optimiser state, step, losses, and the best state so far."""

    trainable: dict[str, torch.Tensor]
    optimizer: dict
    step: int
    losses: list[float]
    best_state: dict[str, torch.Tensor] | None
    best_step: int
    best_report: EvaluationReport | None


def write_resume_state(path: Path, state: ResumeState, *, replace: bool) -> None:
    """Write ``state`` atomically (see :func:`~napari_clipsam._io.write_atomically`)."""
    content = {
        "trainable": state.trainable,
        "optimizer": state.optimizer,
        "step": state.step,
        "losses": state.losses,
        "best_state": state.best_state,
        "best_step": state.best_step,
        "best_report": state.best_report.to_dict() if state.best_report is not None else None,
    }
    write_atomically(path, lambda temporary: torch.save(content, temporary), replace=replace)


def _corrupt(path: Path, entry: str, problem: str) -> CorruptFileError:
    return CorruptFileError(
        f"{path} is not a valid training state: {entry} {problem}. It was not used; start afresh without resuming."
    )


def _load(path: Path) -> Any:
    from ..weights.checkpoints import read_checkpoint

    try:
        return read_checkpoint(path)
    except UnsafeCheckpointError:
        # Our own message, without PyTorch's advice to turn the safe loading off.
        raise UnsafeCheckpointError(
            f"{path} holds pickled Python objects, which could run code when loaded; it was not loaded. "
            "napari-clipsam writes training states of tensors and plain values only, so this file was made "
            "elsewhere or altered: start afresh without resuming."
        ) from None
    except CorruptFileError as err:
        raise CorruptFileError(
            f"{path} is not a readable training state (damaged, truncated, or another kind of file); "
            "start afresh without resuming."
        ) from err


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_weights(path: Path, entry: str, tensors: Any, expected: Mapping[str, torch.Tensor]) -> None:
    if not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise _corrupt(path, entry, "must map parameter names to tensors")
    if set(tensors) != set(expected):
        raise _corrupt(path, entry, "does not hold the same parameters as the model's trainable weights")
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(expected[name].shape) or not tensor.is_floating_point():
            raise _corrupt(path, f"{entry} {name!r}", f"has shape {tuple(tensor.shape)} and dtype {tensor.dtype}, "
                           f"the model's {tuple(expected[name].shape)} and a floating point type")
        if not bool(torch.isfinite(tensor).all()):
            raise _corrupt(path, f"{entry} {name!r}", "has NaN or infinite values")


def _check_optimizer(path: Path, saved: Any) -> None:
    if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict) \
            or not isinstance(saved.get("param_groups"), list):
        raise _corrupt(path, "'optimizer'", "is not an optimiser state")
    for index, values in saved["state"].items():
        if not isinstance(values, dict):
            raise _corrupt(path, f"'optimizer' state {index}", "is not a mapping")
        for key, value in values.items():
            bad_tensor = isinstance(value, torch.Tensor) and not bool(torch.isfinite(value).all())
            if bad_tensor or (isinstance(value, float) and not math.isfinite(value)):
                raise _corrupt(path, f"'optimizer' state {index} {key!r}", "has NaN or infinite values")


def _report(path: Path, saved: Any) -> EvaluationReport | None:
    if saved is None:
        return None
    try:
        report = EvaluationReport(**saved)
    except TypeError:
        raise _corrupt(path, "'best_report'", "is not an evaluation report") from None
    scores = (report.iou, report.dice, report.mean_concept_iou)
    if not isinstance(report.per_concept, dict) or not all(isinstance(s, (int, float)) for s in scores):
        raise _corrupt(path, "'best_report'", "is not an evaluation report")
    return report


def read_resume_state(path: Path, trainable: Mapping[str, torch.Tensor], *, clip_trained: bool) -> ResumeState:
    """Read and check the training state at ``path`` against the model's ``trainable`` parameters.

    Args:
        clip_trained: whether the model trains CLIP's attention now (named in a mismatch).

    Raises:
        FileNotFoundError: no state at ``path``.
        UnsafeCheckpointError: the file holds pickled Python objects (never loaded).
        CorruptFileError: the file is damaged, truncated, or holds something else than a
            training state; the message names the file and the entry.
        CheckpointMismatchError: a valid state saved for another set of trainable weights.
    """
    if not path.is_file():
        raise FileNotFoundError(f"No training state to resume at {path}.")
    saved = _load(path)
    if not isinstance(saved, dict) or set(saved) != _KEYS:
        found = sorted(map(str, saved)) if isinstance(saved, dict) else type(saved).__name__
        raise _corrupt(path, "its content", f"is {found}, not the entries {sorted(_KEYS)}")
    weights = saved["trainable"]
    if isinstance(weights, dict) and set(weights) != set(trainable):
        clip_saved = any(str(name).startswith("clip.") for name in weights)
        raise CheckpointMismatchError(
            f"The training state at {path} was saved for another set of trainable weights (CLIP attention "
            f"{'trained' if clip_saved else 'frozen'} there, {'trained' if clip_trained else 'frozen'} now, or "
            "another base model). Resume with the same model and options, or start afresh."
        )
    _check_weights(path, "'trainable'", weights, trainable)
    if saved["best_state"] is not None:
        _check_weights(path, "'best_state'", saved["best_state"], trainable)
    _check_optimizer(path, saved["optimizer"])
    step, best_step, losses = saved["step"], saved["best_step"], saved["losses"]
    if not _is_integer(step) or step < 0:
        raise _corrupt(path, "'step'", f"is {step!r}, not a step count")
    if not _is_integer(best_step) or not 0 <= best_step <= step:
        raise _corrupt(path, "'best_step'", f"is {best_step!r}, not a step from 0 to {step}")
    if not isinstance(losses, list) or len(losses) != step or not all(
        isinstance(loss, float) and math.isfinite(loss) for loss in losses
    ):
        raise _corrupt(path, "'losses'", f"must be {step} finite numbers, one per step")
    return ResumeState(weights, saved["optimizer"], step, losses, saved["best_state"], best_step,
                       _report(path, saved["best_report"]))


def restore_optimizer(optimizer: torch.optim.Optimizer, saved: dict, path: Path) -> None:
    """Load the optimiser's moments from ``saved``, keeping this run's hyper-parameters.

    Learning rates and weight decay come from the current :class:`TrainingConfig`, never
    from the file.

    Raises:
        CorruptFileError: ``saved`` does not fit the optimiser (``optimizer`` then stays as it was).
    """
    settings = [{key: value for key, value in group.items() if key != "params"} for group in optimizer.param_groups]
    before = optimizer.state_dict()
    try:
        optimizer.load_state_dict(saved)
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as err:
        optimizer.load_state_dict(before)
        raise _corrupt(path, "'optimizer'", f"does not fit this optimiser ({type(err).__name__}: {err})") from None
    for group, kept in zip(optimizer.param_groups, settings):
        group.update(kept)


__all__ = ["ResumeState", "read_resume_state", "restore_optimizer", "resume_path", "write_resume_state"]
