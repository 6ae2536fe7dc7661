"""What a training run left on disk, told from the files named after its output.

The panel reports a run's end from the files themselves, not from what the run was
expected to do: a Cancel that arrives during the final save, or a run that stops after
writing its resumable state, must not be reported as "nothing changed". The files a run
writes are named after its output: the adapters file and the training state beside it
(``trained.safetensors``, ``trained.safetensors.resume.pt``); unfinished temporary files
start with a dot and are not counted.
"""

from __future__ import annotations

from pathlib import Path

FileStates = dict[Path, tuple[int, int, int]]


def file_states(output: Path | None) -> FileStates:
    """The files named after ``output``, each with (inode, size, modification time in ns)."""
    if output is None:
        return {}
    try:
        paths = [path for path in output.parent.iterdir() if path.name.startswith(output.name)]
    except OSError:  # no such folder (yet), or not readable: nothing to tell apart
        return {}
    states: FileStates = {}
    for path in paths:
        try:
            status = path.stat()
        except OSError:  # removed meanwhile
            continue
        states[path] = (status.st_ino, status.st_size, status.st_mtime_ns)
    return states


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
