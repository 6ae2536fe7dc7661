"""What training and evaluation hand back: progress events, the result, scores.

No torch here, so that the napari panel can read these on the GUI thread.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class EvaluationReport:
    """IoU and Dice per concept (mean over samples) and overall.

    Attributes:
        per_concept: concept -> {"iou", "dice", "count"}.
        iou: mean IoU over all samples; dice likewise.
        mean_concept_iou: mean over concepts of their mean IoU.
    """

    per_concept: dict[str, dict[str, float]]
    iou: float
    dice: float
    mean_concept_iou: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TrainProgress:
    """One event of a training run (the ``stage`` field mirrors :class:`~napari_clipsam.Progress`).

    Attributes:
        stage: ``"training"`` after an optimiser step, ``"validated"`` with a
            ``validation`` report, ``"saving"`` just before the adapters file is written
            (the last point where closing the run writes nothing), else the stage of a
            validation under way.
        step: optimiser steps done; total: the steps asked for.
        loss: the step's loss (``"training"`` events).
        learning_rate: of the adapters and decoder at that step.
    """

    stage: str
    step: int
    total: int
    loss: float | None = None
    learning_rate: float | None = None
    validation: EvaluationReport | None = None

    @property
    def done(self) -> int:
        return self.step


@dataclass
class TrainResult:
    """The outcome: validation IoU before and after, the loss history, where the adapters went."""

    initial: EvaluationReport | None
    best: EvaluationReport | None
    best_step: int
    steps_run: int
    stopped_early: bool
    losses: list[float] = field(default_factory=list)
    output: Path | None = None
