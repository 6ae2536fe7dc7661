"""``napari-clipsam segment``: no output lost or silently replaced, every unreadable input named.

Whatever the paths alone can tell is refused before the model loads: the tests that check it
make loading the model fail the test.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_clipsam.cli import main, segment

TINY = ["--sam", "tiny", "--clip", "tiny", "--sam-checkpoint", "none", "--clip-pretrained", "none",
        "--device", "cpu", "--precision", "fp32"]


@pytest.fixture
def no_model(monkeypatch):
    """Loading the model fails the test: what is checked must be checked before."""

    def load_model(args):
        raise AssertionError("the model was loaded before the paths were checked")

    monkeypatch.setattr(segment, "load_model", load_model)


def _image(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(seed).uniform(0, 255, size=(32, 32)).astype(np.uint8)
    if path.suffix == ".npy":
        np.save(path, image)
    else:
        tifffile.imwrite(path, image)
    return path


def _segment(*arguments) -> int:
    return main(["segment", *map(str, arguments), "-c", "blob", *TINY])


def _files(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())  # temporaries too: nothing may be left over


# ---------------------------------------------------------------------------------------------
# Two inputs, one output


def test_inputs_sharing_a_file_name_are_refused_before_the_model_loads(tmp_path, capsys, no_model):
    first, second = _image(tmp_path / "a" / "field.npy"), _image(tmp_path / "b" / "field.npy")
    out = tmp_path / "out"
    assert _segment(first, second, "-o", out) == 2
    err = capsys.readouterr().err
    assert str(first) in err and str(second) in err and str(out / "field_labels.tif") in err
    assert "separate runs" in err
    assert not out.exists()


def test_output_names_differing_only_in_letter_case_are_refused(tmp_path, capsys, no_model):
    """One file on macOS and Windows: refused on every system, so a batch behaves the same everywhere."""
    first, second = _image(tmp_path / "a" / "Field.npy"), _image(tmp_path / "b" / "field.npy")
    assert _segment(first, second, "-o", tmp_path / "out", "--overwrite") == 2
    err = capsys.readouterr().err
    assert "Field_labels.tif" in err and "field_labels.tif" in err and "letter case" in err


def test_a_sample_and_a_file_named_like_it_are_refused(tmp_path, capsys, no_model):
    coins = _image(tmp_path / "coins.npy")
    assert _segment(coins, "--sample", "coins", "-o", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert str(coins) in err and "sample coins" in err


def test_an_input_given_twice_is_refused(tmp_path, capsys, no_model):
    image = _image(tmp_path / "a.npy")
    assert _segment(image, tmp_path / "." / "a.npy", "-o", tmp_path / "out") == 2
    assert "given 2 times" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# The input itself as the output


def _same_path(image: Path) -> Path:
    return image


def _other_spelling(image: Path) -> Path:
    (image.parent / "sub").mkdir()
    return image.parent / "sub" / ".." / image.name


def _symbolic_link(image: Path) -> Path:
    link = image.with_name("link.tif")
    link.symlink_to(image)
    return link


def _hard_link(image: Path) -> Path:
    link = image.with_name("hard.tif")
    os.link(image, link)
    return link


@pytest.mark.parametrize("spell", [_same_path, _other_spelling, _symbolic_link, _hard_link],
                         ids=["same", "other-spelling", "symbolic-link", "hard-link"])
def test_the_input_is_never_replaced_by_its_labels(tmp_path, capsys, no_model, spell):
    image = _image(tmp_path / "x.tif")
    before = image.read_bytes()
    output = spell(image)
    assert _segment(image, "-o", output, "--overwrite") == 2
    err = capsys.readouterr().err
    assert "is the input" in err and str(output) in err
    assert image.read_bytes() == before


def test_a_batch_output_that_is_one_of_its_inputs_is_refused(tmp_path, capsys, no_model):
    out = tmp_path / "out"
    earlier_labels = _image(out / "x_labels.tif")  # labels of an earlier run, segmented again
    assert _segment(_image(tmp_path / "x.npy"), earlier_labels, "-o", out, "--overwrite") == 2
    assert f"is the input {earlier_labels}" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Another run writing the same output meanwhile


def test_an_output_another_run_wrote_meanwhile_is_kept(tmp_path, capsys, monkeypatch):
    """The check at the start is not enough: the write itself must not replace without --overwrite."""
    image, output = _image(tmp_path / "x.npy"), tmp_path / "x_labels.tif"
    real_job_progress = segment.job_progress

    def other_run_finishes_first(job, desc):
        labels = real_job_progress(job, desc)
        output.write_bytes(b"the other run's labels")  # after the start check, before the write
        return labels

    monkeypatch.setattr(segment, "job_progress", other_run_finishes_first)
    assert _segment(image, "-o", output) == 2
    err = capsys.readouterr().err
    assert output.read_bytes() == b"the other run's labels"
    assert err.count("\n") == 1 and str(output) in err and "Traceback" not in err
    assert _files(tmp_path) == ["x.npy", "x_labels.tif"]

    output.unlink()  # --overwrite asks for replacing: the later run's labels win
    assert _segment(image, "-o", output, "--overwrite") == 0
    assert tifffile.imread(output).shape == (32, 32)


# ---------------------------------------------------------------------------------------------
# Outputs that cannot be written


@pytest.mark.parametrize("where", ["file/labels.tif", "file/sub/labels.tif", "file"],
                         ids=["parent-is-a-file", "ancestor-is-a-file", "batch-folder-is-a-file"])
def test_an_output_under_a_file_is_reported_before_the_model_loads(tmp_path, capsys, no_model, where):
    (tmp_path / "file").write_text("not a folder")
    first, second = _image(tmp_path / "a.npy"), _image(tmp_path / "b.npy")
    inputs = [first, second] if where == "file" else [first]
    assert _segment(*inputs, "-o", tmp_path / where) == 2
    err = capsys.readouterr().err
    assert "Cannot write" in err and str(tmp_path / "file") in err


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_an_output_in_a_folder_that_takes_no_files_is_reported_before_the_model_loads(tmp_path, capsys,
                                                                                     no_model):
    """/proc refuses new files even to root (permission bits do not stop root)."""
    output = Path("/proc/napari-clipsam-test/labels.tif")
    assert _segment(_image(tmp_path / "a.npy"), "-o", output) == 2
    err = capsys.readouterr().err
    assert f"Cannot write {output}" in err


def test_an_output_that_is_a_folder_is_refused_before_the_model_loads(tmp_path, capsys, no_model):
    (tmp_path / "out.tif").mkdir()
    assert _segment(_image(tmp_path / "a.npy"), "-o", tmp_path / "out.tif", "--overwrite") == 2
    assert f"{tmp_path / 'out.tif'} is a folder" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Inputs that cannot be read


def test_a_missing_input_is_reported_before_the_model_loads(tmp_path, capsys, no_model):
    present = _image(tmp_path / "a.npy")
    assert _segment(present, tmp_path / "missing.tif", "-o", tmp_path / "out") == 2
    assert str(tmp_path / "missing.tif") in capsys.readouterr().err


def _truncated(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("name", ["x.tif", "x.png", "x.npy"])
def test_a_damaged_input_is_reported_with_its_name(tmp_path, capsys, name):
    path = tmp_path / name
    image = np.random.default_rng(0).uniform(0, 255, size=(48, 48)).astype(np.uint8)
    if name.endswith(".tif"):
        tifffile.imwrite(path, image, compression="zlib")
    elif name.endswith(".png"):
        from skimage import io

        io.imsave(path, image, check_contrast=False)
    else:
        np.save(path, image)
    assert _segment(_truncated(path), "-o", tmp_path / "labels.tif") == 2
    err = capsys.readouterr().err
    assert f"{path}: cannot be read" in err and "Traceback" not in err
    assert not (tmp_path / "labels.tif").exists()


def test_a_batch_stops_at_a_damaged_input_and_keeps_the_outputs_before_it(tmp_path, capsys):
    first, damaged, last = _image(tmp_path / "a.npy"), _image(tmp_path / "b.tif"), _image(tmp_path / "c.npy")
    _truncated(damaged)
    out = tmp_path / "out"
    assert _segment(first, damaged, last, "-o", out) == 2
    captured = capsys.readouterr()
    assert _files(out) == ["a_labels.tif"]  # complete, as stdout says; nothing of b, nothing left over
    assert str(out / "a_labels.tif") in captured.out
    assert f"{damaged}: cannot be read" in captured.err
    assert "stopped at input 2 of 3" in captured.err and f"not segmented: {last}" in captured.err


def test_an_image_the_pipeline_refuses_is_reported_with_its_name(tmp_path, capsys):
    path = tmp_path / "empty_plane.npy"
    np.save(path, np.full((32, 32), np.nan, dtype=np.float32))
    assert _segment(path, "-o", tmp_path / "labels.tif") == 2
    err = capsys.readouterr().err
    assert f"{path}: " in err and "finite" in err
