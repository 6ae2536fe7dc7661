"""Training as a job that the napari panel can hand to its worker without importing torch.

The panel's ``JobRunner`` prepares each worker thread for torch before the job runs
(see ``model.device.avoid_triton_on_cpu_only_machines``); this module therefore imports the
engine inside the job, never at import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .._jobs import Job
    from .results import TrainResult


def train_job(model, train_set, val_set=None, config=None, output=None, resume: bool = False, *,
              replace: bool = False, keep_resume_state: bool = False) -> Job[TrainResult]:
    """:func:`napari_clipsam.iter_train`, with the engine imported when the job starts.

    ``replace``: the user allowed replacing an existing file at ``output`` (the panel's
    "Replace an existing adapters file"); without it such a file stays as it is.
    """
    from .engine import iter_train

    return (yield from iter_train(model, train_set, val_set, config, output, resume, replace=replace,
                                  keep_resume_state=keep_resume_state))
