"""Reading images and writing label images (used by the CLI and the training datasets)."""

from __future__ import annotations

import glob
import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import OutputExistsError


def write_atomically(path: str | os.PathLike, write: Callable[[str], None], *, replace: bool = True) -> Path:
    """Call ``write(temporary_path)``, then move the complete file to ``path``.

    - ``path`` only ever holds a complete file: a failure, Cancel or kill mid-write leaves
      any earlier file there as it was. The temporary file sits in the same folder and ends
      with the same suffix (writers such as numpy and tifffile go by it); one left by a
      killed process is removed by the next write to the same path.
    - ``replace=False`` commits without replacing: if a file appears at ``path`` meanwhile
      (another process), this write fails with :class:`OutputExistsError` and the other
      file stays.
    - The file gets the permissions a new file gets under the umask (not the private 0600
      of a temporary file), so a shared folder stays shared.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    if not replace and path.exists():
        raise OutputExistsError(_exists_message(path))
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=_temporary_prefix(path, os.getpid()),
                                         suffix=f".tmp{path.suffix}")
    os.close(handle)
    try:
        write(temporary)
        os.chmod(temporary, 0o666 & ~_umask())
        if replace:
            os.replace(temporary, path)
        else:
            _commit_without_replacing(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)
    return path


def _temporary_prefix(path: Path, pid: int) -> str:
    # The writer's process id in the name tells a killed writer's leftovers from a live one's.
    return f".{path.name}.{pid}-"


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove the temporary files that killed processes left while writing ``path``; returns them."""
    removed = []
    prefix = f".{path.name}."
    for candidate in path.parent.glob(f"{glob.escape(prefix)}*-*.tmp{glob.escape(path.suffix)}"):
        pid_text = candidate.name[len(prefix):].split("-", 1)[0]
        if pid_text.isdigit() and not _process_alive(int(pid_text)):
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _commit_without_replacing(temporary: str, path: Path) -> None:
    """Put ``temporary`` at ``path`` only if nothing is there: one atomic step, no replacing."""
    try:
        os.link(temporary, path)  # a hard link fails where the name exists: no race with other writers
    except FileExistsError:
        raise OutputExistsError(_exists_message(path)) from None
    except OSError:
        # Filesystems without hard links: claim the name exclusively, then fill it.
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            raise OutputExistsError(_exists_message(path)) from None
        os.replace(temporary, path)


def _exists_message(path: Path) -> str:
    return f"{path} exists (another run may have written it meanwhile); it was left as it is."


def _umask() -> int:
    """The process's umask, read without changing it where the system allows (os.umask() sets it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    current = os.umask(0o022)
    os.umask(current)
    return current


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image or label file as an array: .npy, TIFF (tifffile), or what scikit-image reads."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        return np.load(path, allow_pickle=False)
    if path.suffix.lower() in {".tif", ".tiff"}:
        import tifffile

        return tifffile.imread(path)
    from skimage import io

    return io.imread(path)


def write_labels(path: str | os.PathLike, labels: np.ndarray, *, replace: bool = True) -> None:
    """Write a label image (.tif, .png or .npy) atomically (see :func:`write_atomically`)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        write_atomically(path, lambda temporary: np.save(temporary, labels), replace=replace)
    elif suffix in {".tif", ".tiff"}:
        import tifffile

        write_atomically(
            path, lambda temporary: tifffile.imwrite(temporary, labels, compression="zlib"), replace=replace
        )
    elif suffix == ".png":
        if labels.max(initial=0) > 65535:
            raise ValueError(f"{path}: more than 65535 labels do not fit a PNG; use .tif")
        from skimage import io

        write_atomically(
            path, lambda temporary: io.imsave(temporary, labels.astype(np.uint16), check_contrast=False),
            replace=replace,
        )
    else:
        raise ValueError(f"{path}: unknown output format {suffix!r}; use .tif, .png or .npy")
