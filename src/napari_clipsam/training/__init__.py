"""Few-shot fine-tuning and evaluation. No Qt.

Without torch, for the napari panel's GUI thread: ``config`` (:class:`TrainingConfig`),
``results`` (progress events, results, evaluation reports), ``data`` (datasets),
``jobs`` (training as a job that imports the engine when it starts). With torch:
``engine`` (:func:`iter_train`), ``resume`` (the resumable training state, read back
checked), ``evaluate``, ``losses``; ``augment`` is numpy.
"""
