"""Every error napari-clipsam raises on purpose, under one base class.

A script catches :class:`ClipSamError` for all of them, or one kind by name; each
also derives from the built-in exception a caller would expect (a missing file is an
``OSError``, a wrong argument a ``ValueError``), so older ``except`` clauses still work.
All are importable from ``napari_clipsam``. No dependencies: importing this is free.
"""

from __future__ import annotations


class ClipSamError(Exception):
    """Base class of the errors napari-clipsam raises on purpose."""


class WeightsUnavailableError(ClipSamError, OSError):
    """Weights could not be obtained: no network, a failed or corrupt download.

    The message lists every missing file with its URL, the folder to put it in by hand
    and its checksum, and names the random-weights option for a try-out.
    """


class ChecksumMismatchError(WeightsUnavailableError):
    """A downloaded or cached file's checksum differs from the registry's."""


class OutputExistsError(ClipSamError, FileExistsError):
    """An output file exists and replacing it was not asked for; it was left as it is."""


class UnsafeCheckpointError(ClipSamError, ValueError):
    """A checkpoint holds pickled Python objects, which are never loaded (they could run code)."""


class CheckpointMismatchError(ClipSamError, ValueError):
    """A checkpoint's keys or shapes do not fit the model it is loaded into."""


class AmbiguousWeightsError(ClipSamError, ValueError):
    """A weights file fits more than one architecture and nothing says which it was made for."""


class AdaptersMismatchError(ClipSamError, ValueError):
    """Saved adapters do not fit the model they are loaded onto."""


class InvalidAdaptersError(AdaptersMismatchError):
    """An adapters file is malformed or unsafe to use (a field out of range, a non-finite or
    non-float tensor, a missing or unknown entry); nothing of it was loaded."""


class CorruptFileError(ClipSamError, ValueError):
    """A file the package reads is damaged or not what it should be; the message names it."""


class UnsupportedImageError(ClipSamError, ValueError):
    """An image file's axes or channels cannot be segmented as asked (the message names them and
    what is supported, e.g. an unknown axis, two channel axes, a channel name the file lacks)."""


class TrainingDivergedError(ClipSamError, RuntimeError):
    """Training produced a non-finite loss or weights; the message names the step. Nothing broken is saved."""


class ConcurrentUseError(ClipSamError, RuntimeError):
    """Another thread (or call) changed a shared predictor's image, concept or SAM input size
    under this one; nothing was computed from the changed state."""


class MissingDependencyError(ClipSamError, ImportError):
    """An optional package that the chosen model needs is not installed."""


__all__ = [
    "UnsupportedImageError",
    "AdaptersMismatchError",
    "AmbiguousWeightsError",
    "CheckpointMismatchError",
    "ChecksumMismatchError",
    "ClipSamError",
    "ConcurrentUseError",
    "CorruptFileError",
    "InvalidAdaptersError",
    "MissingDependencyError",
    "OutputExistsError",
    "TrainingDivergedError",
    "UnsafeCheckpointError",
    "WeightsUnavailableError",
]
