"""The napari-clipsam command line."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_clipsam.cli import main

TINY = ["--sam", "tiny", "--clip", "tiny", "--sam-checkpoint", "none", "--clip-pretrained", "none", "--device", "cpu"]


def test_segment_a_sample_into_a_tiff(tmp_path, capsys):
    output = tmp_path / "labels.tif"
    assert main(["segment", "--sample", "coins", "-c", "coin", "-o", str(output), *TINY]) == 0
    labels = tifffile.imread(output)
    assert labels.shape == (303, 384) and labels.dtype == np.int32
    assert set(np.unique(labels)) <= {0, 1}
    assert "coin" in capsys.readouterr().out


def test_existing_output_is_never_overwritten_without_asking(tmp_path, capsys):
    output = tmp_path / "labels.tif"
    output.write_bytes(b"precious")
    assert main(["segment", "--sample", "coins", "-c", "coin", "-o", str(output), *TINY]) == 2
    assert output.read_bytes() == b"precious"
    assert "--overwrite" in capsys.readouterr().err
    assert main(["segment", "--sample", "coins", "-c", "coin", "-o", str(output), "--overwrite", *TINY]) == 0
    assert tifffile.imread(output).shape == (303, 384)


def test_a_stack_is_segmented_plane_by_plane_with_objects_linked_across_planes(tmp_path):
    rng = np.random.default_rng(0)
    stack = rng.normal(100, 10, size=(3, 40, 50)).astype(np.float32)
    stack[:, 10:20, 10:20] += 200
    source = tmp_path / "stack.npy"
    np.save(source, stack)
    output = tmp_path / "out" / "stack_labels.npy"
    assert main(["segment", str(source), "-c", "blob", "-o", str(output), "--instances", *TINY]) == 0
    labels = np.load(output)
    assert labels.shape == (3, 40, 50)
    # Each plane's objects either continue an object of the plane before (linked) or are new.
    seen = set()
    for before, plane in zip([None, *labels[:-1]], labels):
        values = set(np.unique(plane)) - {0}
        continued = values & seen
        assert before is None or continued <= set(np.unique(before))
        assert all(value > max(seen, default=0) for value in values - continued)
        seen |= values


def test_several_inputs_go_to_a_folder(tmp_path):
    for name in ("a", "b"):
        np.save(tmp_path / f"{name}.npy", np.random.default_rng(1).uniform(size=(30, 30)))
    out = tmp_path / "labels"
    argv = ["segment", str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), "-c", "x", "-o", str(out), *TINY]
    assert main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a_labels.tif", "b_labels.tif"]


def test_points_select_the_manual_mode(tmp_path):
    output = tmp_path / "l.npy"
    argv = ["segment", "--sample", "coins", "-c", "coin", "-o", str(output), "--points", "100,100;150,120", *TINY]
    assert main(argv) == 0
    assert np.load(output).shape == (303, 384)


def test_offline_default_weights_fail_with_a_clear_message(tmp_path, capsys, monkeypatch):
    import socket

    def refuse(*args, **kwargs):
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["segment", "--sample", "coins", "-c", "coin", "-o", str(tmp_path / "l.tif"), "--device", "cpu"])
    assert code == 2
    err = capsys.readouterr().err
    assert "sam_vit_b_01ec64.pth" in err and "https://" in err and str(tmp_path) in err or "cache" in err
    assert "Traceback" not in err
    assert not (tmp_path / "l.tif").exists()


def test_weights_list_shows_the_cache(tmp_path, capsys):
    assert main(["weights", "list", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path) in out and "vit_b" in out and "missing" in out


@pytest.mark.parametrize("argv", [["segment", "-c", "x", "-o", "o.tif", *TINY], ["weights", "fetch"]])
def test_bad_usage_exits_2_with_a_message(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert "error" in capsys.readouterr().err


def test_the_readme_quick_start_segments_touching_nuclei_with_the_demo_model(tmp_path):
    from napari_clipsam._sample_data import DEMO_SCENE
    from napari_clipsam.synthetic import generate_scene

    output = tmp_path / "labels.tif"
    argv = ["segment", "--preset", "demo", "--sample", "demo", "--concept", "nucleus", "--instances", "--output",
            str(output), "--device", "cpu", "--precision", "fp32"]
    assert main(argv) == 0
    labels = tifffile.imread(output)
    truth = generate_scene(**DEMO_SCENE).labels["nucleus"]
    # Dozens of separate nuclei where they are (79 in the scene): not one blob, not noise.
    assert labels.max() >= 30 and (truth[labels > 0] > 0).mean() >= 0.8


def test_negative_points_go_with_the_points_and_need_them(tmp_path, capsys):
    import napari_clipsam as nc
    from napari_clipsam.inference.instances import interior_point
    from napari_clipsam.synthetic import generate_scene
    from napari_clipsam.training.evaluate import touching_objects

    scene = generate_scene(2_000_500, size=256, kind="nuclei")
    source, output = tmp_path / "nuclei.tif", tmp_path / "labels.tif"
    tifffile.imwrite(source, scene.image)
    truth = scene.labels["nucleus"]
    click = interior_point(truth == 9)
    negatives = np.array([interior_point(truth == n) for n in np.unique(truth[touching_objects(truth, truth == 9)])])
    assert len(negatives)
    demo = ["--preset", "demo", "--device", "cpu", "--precision", "fp32"]
    text = ";".join(f"{x:g},{y:g}" for x, y in negatives)
    argv = ["segment", str(source), "-c", "nucleus", "-o", str(output), "--points", f"{click[0]:g},{click[1]:g}",
            "--negative-points", text, *demo]
    assert main(argv) == 0
    model = nc.load_model(preset="demo", device="cpu", precision="fp32")
    points = np.concatenate([click[None], negatives])
    expected = nc.segment(scene.image, "nucleus", model, points=points, point_labels=[1] + [0] * len(negatives))
    np.testing.assert_array_equal(tifffile.imread(output), expected)
    assert (expected != nc.segment(scene.image, "nucleus", model, points=click[None])).any()  # the negatives count
    # Negative points alone say nothing about where the object is: refused before the model loads.
    refused = ["segment", str(source), "-c", "nucleus", "-o", str(tmp_path / "none.tif"), "--negative-points", text,
               *demo]
    assert main(refused) == 2
    assert "--points or --box" in capsys.readouterr().err and not (tmp_path / "none.tif").exists()
