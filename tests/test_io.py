"""Writing files without losing any: atomic, no silent replacing, the umask's permissions, no leftovers."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from napari_clipsam._io import remove_stale_temporaries, write_atomically, write_labels
from napari_clipsam.errors import OutputExistsError


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
