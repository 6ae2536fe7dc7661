"""Writing files without losing any (atomic, no silent replacing, the umask's permissions, no leftovers),
and reading them so that a damaged one is named, never taken for a smaller image."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import threading

import numpy as np
import pytest
import tifffile

from napari_clipsam._io import read_image, remove_stale_temporaries, write_atomically, write_labels
from napari_clipsam.errors import CorruptFileError, OutputExistsError


def _text(content: str):
    return lambda temporary: open(temporary, "w", encoding="utf-8").write(content)


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_new_file_gets_the_permissions_of_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        path = write_atomically(tmp_path / "labels.txt", _text("x"))
        assert path.stat().st_mode & 0o777 == 0o644  # readable by the lab, not 0600
        os.umask(0o077)
        assert write_atomically(tmp_path / "private.txt", _text("x")).stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(previous)


def test_no_replacing_unless_asked(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("precious")
    with pytest.raises(OutputExistsError, match="left as it is"):
        write_atomically(path, _text("new"), replace=False)
    assert path.read_text() == "precious" and _leftovers(tmp_path) == []
    write_atomically(path, _text("new"))
    assert path.read_text() == "new"


def test_a_file_written_meanwhile_by_another_process_wins(tmp_path):
    """The existence check at the start is not enough: the commit itself must not replace."""
    path = tmp_path / "out.txt"

    def slow_write(temporary: str) -> None:
        path.write_text("the other run's")  # appears while this write is under way
        _text("mine")(temporary)

    with pytest.raises(OutputExistsError):
        write_atomically(path, slow_write, replace=False)
    assert path.read_text() == "the other run's" and _leftovers(tmp_path) == []


def test_a_failed_write_leaves_the_earlier_file_and_nothing_else(tmp_path):
    path = tmp_path / "out.npy"
    np.save(path, np.arange(3))

    def broken(temporary: str) -> None:
        open(temporary, "wb").write(b"half a fi")
        raise KeyboardInterrupt  # a Cancel or Ctrl-C mid-write

    with pytest.raises(KeyboardInterrupt):
        write_atomically(path, broken)
    np.testing.assert_array_equal(np.load(path), np.arange(3))
    assert _leftovers(tmp_path) == []


def test_leftovers_of_a_killed_writer_are_removed_by_the_next_write(tmp_path):
    path = tmp_path / "labels.tif"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(dead.stdout)  # that process has exited
    killed = tmp_path / f".labels.tif.{dead_pid}-abc123.tmp.tif"
    killed.write_bytes(b"partial")
    alive = tmp_path / f".labels.tif.{os.getppid()}-def456.tmp.tif"  # a live writer's: keep it
    alive.write_bytes(b"in progress")
    other = tmp_path / f".other.tif.{dead_pid}-abc123.tmp.tif"  # another target's: not ours to judge
    other.write_bytes(b"x")
    write_labels(path, np.zeros((4, 4), dtype=np.int32))
    assert not killed.exists() and alive.exists() and other.exists()
    assert remove_stale_temporaries(tmp_path / "other.tif") == [other]


def test_write_labels_can_refuse_to_replace(tmp_path):
    path = tmp_path / "l.tif"
    write_labels(path, np.ones((3, 3), dtype=np.int32))
    with pytest.raises(OutputExistsError):
        write_labels(path, np.zeros((3, 3), dtype=np.int32), replace=False)


# ---------------------------------------------------------------------------------------------
# Reading: an unreadable file is named, and a damaged one never passes for a smaller image


def _stack_tiff(path, **options) -> np.ndarray:
    stack = np.random.default_rng(0).integers(0, 255, size=(5, 64, 64), dtype=np.uint8)
    tifffile.imwrite(path, stack, **options)
    return stack


def _cut(path, fraction: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def _damaged_zlib_tiff(path):
    _stack_tiff(path, compression="zlib")
    _cut(path, 0.99)


def _cut_stack(path):
    """tifffile reads the first plane of this one and only logs that the rest is missing."""
    _stack_tiff(path, metadata=None)
    _cut(path, 0.5)


def _cut_imagej_stack(path):
    """The same: the first plane, and a log message."""
    _stack_tiff(path, imagej=True)
    _cut(path, 0.7)


def _cut_png(path):
    from skimage import io

    io.imsave(path, np.zeros((64, 64), dtype=np.uint8) + np.arange(64, dtype=np.uint8), check_contrast=False)
    _cut(path)


def _cut_npy(path):
    np.save(path, np.zeros((64, 64), dtype=np.uint8))
    _cut(path)


def _empty(path):
    path.write_bytes(b"")


def _text_named_tiff(path):
    path.write_text("not an image")


def _objects(path):
    np.save(path, np.array([{"pickled": "object"}], dtype=object), allow_pickle=True)


def _strings(path):
    np.save(path, np.array([["a", "b"], ["c", "d"]]))


def _one_row(path):
    np.save(path, np.arange(5))


DAMAGED = [
    ("zlib.tif", _damaged_zlib_tiff, "cannot be read as a TIFF"),
    ("stack.tif", _cut_stack, "invalid page offset"),
    ("imagej.tif", _cut_imagej_stack, "corrupted"),
    ("image.png", _cut_png, "cannot be read as an image"),
    ("image.npy", _cut_npy, "cannot be read as a NumPy"),
    ("empty.tif", _empty, "empty"),
    ("text.tif", _text_named_tiff, "not a TIFF"),
    ("objects.npy", _objects, "Object arrays"),
    ("strings.npy", _strings, "not a numeric image"),
    ("row.npy", _one_row, "shape (5,)"),
]


@pytest.mark.parametrize(("name", "make", "what"), DAMAGED, ids=[case[0] for case in DAMAGED])
def test_a_damaged_file_is_named_with_what_is_wrong(tmp_path, name, make, what):
    path = tmp_path / name
    make(path)
    with pytest.raises(CorruptFileError) as raised:
        read_image(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: ") and what in message and "\n" not in message


def test_a_missing_file_or_a_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "gone.png"))):
        read_image(tmp_path / "gone.png")
    with pytest.raises(IsADirectoryError, match=re.escape(str(tmp_path))):
        read_image(tmp_path)


@pytest.mark.parametrize("suffix", [".tif", ".png", ".npy"])
def test_intact_files_read_back_whole(tmp_path, suffix):
    labels = np.arange(2 * 40 * 30, dtype=np.int32).reshape(2, 40, 30) % 7
    if suffix == ".png":
        labels = labels[0]
    write_labels(tmp_path / f"l{suffix}", labels)
    np.testing.assert_array_equal(read_image(tmp_path / f"l{suffix}"), labels)
    stack = _stack_tiff(tmp_path / "stack.tif", imagej=True)
    np.testing.assert_array_equal(read_image(tmp_path / "stack.tif"), stack)


def test_damage_logged_by_another_thread_is_not_this_files(tmp_path, monkeypatch):
    """tifffile's logger is shared: a warning about a file read elsewhere meanwhile is not ours."""
    path = tmp_path / "intact.tif"
    stack = _stack_tiff(path)
    real_imread = tifffile.imread

    def imread_while_another_thread_reads_a_damaged_file(*args, **kwargs):
        other = threading.Thread(target=lambda: logging.getLogger("tifffile").warning("invalid page offset 9"))
        other.start()
        other.join()
        return real_imread(*args, **kwargs)

    monkeypatch.setattr(tifffile, "imread", imread_while_another_thread_reads_a_damaged_file)
    np.testing.assert_array_equal(read_image(path), stack)
