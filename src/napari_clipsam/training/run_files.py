"""What a training run leaves on disk: its adapters file and, beside it, its resumable state.

Light (no torch), so the napari panel and the command line can tell from the files
themselves what a run wrote, kept or removed, whatever the run was expected to do: a
Cancel during the final save, or a run stopped after writing its state, must not be
reported as "nothing changed".
"""

from __future__ import annotations

import os
from pathlib import Path

FileState = tuple[int, int, int]
FileStates = dict[Path, FileState]


def resume_path(output: str | os.PathLike) -> Path:
    """Where the resumable training state of ``output`` is kept: ``<output>.resume.pt``."""
    output = Path(output)
    return output.with_name(output.name + ".resume.pt")


def file_state(path: Path) -> FileState | None:
    """(inode, size, modification time in ns) of ``path``, None where there is no file: what tells a
    file written (files are replaced whole) from one left alone."""
    try:
        status = path.stat()
    except OSError:
        return None
    return status.st_ino, status.st_size, status.st_mtime_ns


def file_states(output: Path | None) -> FileStates:
    """The files a run for ``output`` writes (the adapters file and its state) that exist now."""
    if output is None:
        return {}
    states = {path: file_state(path) for path in (Path(output), resume_path(output))}
    return {path: state for path, state in states.items() if state is not None}


def describe_changes(before: FileStates, after: FileStates) -> str:
    """One sentence on the files written (new or replaced) and removed between two states; "" when none."""
    written = sorted(path.name for path, state in after.items() if before.get(path) != state)
    removed = sorted(path.name for path in before if path not in after)
    parts = []
    if written:
        parts.append(f"written and kept: {', '.join(written)}")
    if removed:
        parts.append(f"removed: {', '.join(removed)}")
    return "; ".join(parts)
