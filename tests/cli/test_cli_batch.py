"""Many files from the command line: folders, quoted globs, and a local dask cluster (--workers)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_clipsam.cli import main
from napari_clipsam.synthetic import generate_scene

DEMO = ["--preset", "demo", "--device", "cpu", "--precision", "fp32"]


@pytest.fixture
def folder(tmp_path):
    images = tmp_path / "fields"
    images.mkdir()
    for seed in range(3):
        tifffile.imwrite(images / f"field{seed}.tif", generate_scene(2_000_600 + seed, size=256, kind="nuclei").image)
    (images / "notes.txt").write_text("not an image")
    return images


def test_a_folder_and_a_quoted_glob_give_their_images(folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["segment", str(folder), "-c", "nucleus", "-o", str(out), *DEMO]) == 0
    assert sorted(p.name for p in out.iterdir()) == [f"field{i}_labels.tif" for i in range(3)]
    globbed = tmp_path / "globbed"
    assert main(["segment", str(folder / "field[12].tif"), "-c", "nucleus", "-o", str(globbed), *DEMO]) == 0
    assert sorted(p.name for p in globbed.iterdir()) == ["field1_labels.tif", "field2_labels.tif"]
    np.testing.assert_array_equal(tifffile.imread(globbed / "field1_labels.tif"), tifffile.imread(out / "field1_labels.tif"))


def test_an_empty_folder_or_glob_is_refused_before_the_model_loads(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["segment", str(tmp_path / "empty"), "-c", "x", "-o", str(tmp_path / "o"), *DEMO]) == 2
    assert "No images" in capsys.readouterr().err
    assert main(["segment", str(tmp_path / "*.tif"), "-c", "x", "-o", str(tmp_path / "o"), *DEMO]) == 2
    assert "No file matches" in capsys.readouterr().err


def test_workers_segment_on_a_local_cluster_skip_finished_outputs_and_report_failures(folder, tmp_path, capsys):
    out = tmp_path / "out"
    expected_out = tmp_path / "expected"
    assert main(["segment", str(folder / "field0.tif"), "-c", "nucleus", "-o", str(expected_out), "--instances",
                 "--instance-method", "components", *DEMO]) == 0
    (folder / "broken.tif").write_bytes(b"not a tiff at all")
    argv = ["segment", str(folder), "-c", "nucleus", "-o", str(out), "--instances", "--instance-method",
            "components", "--workers", "2", *DEMO]
    assert main(argv) == 1  # one file failed; the others were written
    captured = capsys.readouterr()
    assert "broken.tif" in captured.err and "1 failed" in captured.err
    assert sorted(p.name for p in out.iterdir()) == [f"field{i}_labels.tif" for i in range(3)]
    np.testing.assert_array_equal(tifffile.imread(out / "field0_labels.tif"),
                                  tifffile.imread(expected_out / "field0_labels.tif"))
    # A re-run without the broken file does only what is left: nothing.
    (folder / "broken.tif").unlink()
    assert main(argv) == 0
    assert "0 written, 3 already there (skipped)" in capsys.readouterr().out


def test_workers_refuse_a_sample(tmp_path, capsys):
    assert main(["segment", "--sample", "demo", "-c", "nucleus", "-o", str(tmp_path / "o.tif"), "--workers", "2",
                 *DEMO]) == 2
    assert "--workers and --scheduler segment files" in capsys.readouterr().err
