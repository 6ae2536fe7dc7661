"""``napari-clipsam segment`` on files as microscopists have them: OME-TIFF by its axes, a channel
by name, the pixel size carried to the labels, zarr and OME-Zarr in and out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from napari_clipsam._sample_data import sample_image
from napari_clipsam.cli import main, segment
from tests.test_io_formats import ZARR_V2, write_ome_zarr

TINY = ["--sam", "tiny", "--clip", "tiny", "--sam-checkpoint", "none", "--clip-pretrained", "none",
        "--device", "cpu", "--precision", "fp32"]
# Trained weights: the same input gives the same labels in every run (random weights differ per run).
DEMO = ["--preset", "demo", "--device", "cpu", "--precision", "fp32"]


@pytest.fixture
def no_model(monkeypatch):
    """Loading the model fails the test: what is checked must be checked before."""

    def load_model(args):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(segment, "load_model", load_model)


def _segment(*arguments, model=TINY) -> int:
    return main(["segment", *map(str, arguments), "-c", "nucleus", *model])


def _noise(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, size=shape).astype(np.uint8)


def _ome_tiff(path: Path, data, axes: str, **metadata) -> Path:
    tifffile.imwrite(path, data, ome=True, metadata={"axes": axes, **metadata})
    return path


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    """A 128x128 corner of the demo scene: nuclei the demo model finds."""
    return sample_image("demo")[:128, :128]


# ---------------------------------------------------------------------------------------------
# Axes


@pytest.mark.parametrize(("axes", "shape", "labels_shape"), [
    ("CYX", (2, 32, 40), (32, 40)),  # one plane of two channels, not two planes
    ("ZYX", (3, 32, 40), (3, 32, 40)),
    ("TZCYX", (2, 2, 3, 32, 40), (2, 2, 32, 40)),
    ("YXS", (32, 40, 3), (32, 40)),
])
def test_the_labels_have_the_axes_of_the_image_less_its_channels(tmp_path, axes, shape, labels_shape):
    source = tmp_path / "x.ome.tif"
    if axes == "YXS":
        tifffile.imwrite(source, _noise(shape), photometric="rgb")
    else:
        _ome_tiff(source, _noise(shape), axes)
    assert _segment(source, "-o", tmp_path / "labels.tif") == 0
    assert tifffile.imread(tmp_path / "labels.tif").shape == labels_shape


def test_unsupported_axes_are_refused_before_the_model_loads(tmp_path, capsys, no_model):
    source = tmp_path / "x.tif"
    tifffile.imwrite(source, _noise((2, 3, 32, 40)), photometric="minisblack", metadata={"axes": "ZBYX"})
    assert _segment(source, "-o", tmp_path / "labels.tif") == 2
    err = capsys.readouterr().err
    assert f"{source}: its axes ZBYX (shape (2, 3, 32, 40)) cannot be segmented: unknown axis letter B" in err
    assert "Supported: Y and X" in err and "TZCYX" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------
# Channels


def test_a_channel_chosen_by_name_is_the_one_segmented(tmp_path, scene):
    source = _ome_tiff(tmp_path / "two.ome.tif", np.stack([np.full_like(scene, 9), scene]), "CYX",
                       Channel={"Name": ["empty", "DAPI"]})
    np.save(tmp_path / "dapi.npy", scene)
    for name, arguments in {"by_name": ["--channel", "DAPI"], "by_number": ["--channel", "1"], "alone": []}.items():
        path = source if arguments else tmp_path / "dapi.npy"
        assert _segment(path, *arguments, "-o", tmp_path / f"{name}.tif", model=DEMO) == 0
    assert _segment(source, "--channel", "empty", "-o", tmp_path / "empty.tif", model=DEMO) == 0
    by_name = tifffile.imread(tmp_path / "by_name.tif")
    assert by_name.sum() > 1000  # nuclei found in DAPI
    np.testing.assert_array_equal(by_name, tifffile.imread(tmp_path / "by_number.tif"))
    np.testing.assert_array_equal(by_name, tifffile.imread(tmp_path / "alone.tif"))
    assert not np.array_equal(by_name, tifffile.imread(tmp_path / "empty.tif"))


def test_a_channel_name_not_in_the_file_lists_its_channels_before_the_model_loads(tmp_path, capsys, no_model):
    source = _ome_tiff(tmp_path / "x.ome.tif", _noise((2, 32, 40)), "CYX", Channel={"Name": ["DAPI", "GFP"]})
    assert _segment(source, "--channel", "Cy5", "-o", tmp_path / "labels.tif") == 2
    err = capsys.readouterr().err
    assert f"{source}: no channel is named 'Cy5'; its channels are 0 'DAPI', 1 'GFP'" in err
    assert not (tmp_path / "labels.tif").exists()


# ---------------------------------------------------------------------------------------------
# Pixel size


def test_the_pixel_size_of_the_image_is_the_labels(tmp_path):
    source = _ome_tiff(tmp_path / "x.ome.tif", _noise((2, 32, 40)), "ZYX",
                       PhysicalSizeX=0.325, PhysicalSizeY=0.325, PhysicalSizeZ=1.5)
    assert _segment(source, "-o", tmp_path / "labels.tif") == 0
    with tifffile.TiffFile(tmp_path / "labels.tif") as tif:
        assert tif.series[0].axes == "ZYX"
        pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]
        assert (pixels["PhysicalSizeX"], pixels["PhysicalSizeY"], pixels["PhysicalSizeZ"]) == (0.325, 0.325, 1.5)
        assert tif.pages[0].resolution == pytest.approx((1e4 / 0.325, 1e4 / 0.325))  # per cm, as ImageJ reads it


def test_an_imagej_stack_keeps_its_scale(tmp_path):
    source = tmp_path / "ij.tif"
    tifffile.imwrite(source, _noise((3, 32, 40)), imagej=True, resolution=(2.0, 2.0),
                     metadata={"axes": "ZYX", "spacing": 4.0, "unit": "um"})
    assert _segment(source, "-o", tmp_path / "labels.tif") == 0
    with tifffile.TiffFile(tmp_path / "labels.tif") as tif:
        pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]
        assert (pixels["PhysicalSizeX"], pixels["PhysicalSizeZ"]) == (0.5, 4.0)


def test_a_diameter_in_micrometres_reads_each_file_at_its_own_magnification(tmp_path, capsys, scene):
    """One field at 0.5 µm per pixel and the same field imaged 4 times larger (0.125 µm per pixel):
    ``--diameter 10um`` is 20 px in the first (the demo model's sizes: read as it is) and 80 px in
    the second (read at the scale that brings it to the model's), so both give the same nuclei."""
    folder = tmp_path / "fields"
    folder.mkdir()
    large = np.kron(scene, np.ones((4, 4), scene.dtype))
    _ome_tiff(folder / "x1.ome.tif", scene, "YX", PhysicalSizeX=0.5, PhysicalSizeY=0.5)
    _ome_tiff(folder / "x4.ome.tif", large, "YX", PhysicalSizeX=0.125, PhysicalSizeY=0.125)
    assert _segment(folder, "-o", tmp_path / "out", "--diameter", "10um", model=DEMO) == 0
    said = capsys.readouterr().out  # how each file was read
    assert "x1.ome_labels.tif (diameter 10 µm = 20 px)\n" in said
    assert "x4.ome_labels.tif (diameter 10 µm = 80 px, read at scale 3.651)\n" in said  # 80 / sqrt(8 * 60)
    small_labels, large_labels = (tifffile.imread(tmp_path / "out" / f"{n}.ome_labels.tif") > 0 for n in ("x1", "x4"))
    for name, pixels, labels in (("x1", "20", small_labels), ("x4", "80", large_labels)):  # the same in pixels
        assert _segment(folder / f"{name}.ome.tif", "-o", tmp_path / f"{name}_px.tif", "--diameter", pixels,
                        model=DEMO) == 0
        np.testing.assert_array_equal(tifffile.imread(tmp_path / f"{name}_px.tif") > 0, labels)
    assert _segment(folder / "x4.ome.tif", "-o", tmp_path / "x4_own.tif", model=DEMO) == 0  # no diameter: scale 1

    def iou(a, b):
        return (a & b).sum() / (a | b).sum()

    expected = np.kron(small_labels, np.ones((4, 4), bool))
    own_pixels = tifffile.imread(tmp_path / "x4_own.tif") > 0
    assert small_labels.any() and iou(large_labels, expected) > 0.8  # 0.93 when written
    assert iou(large_labels, expected) > iou(own_pixels, expected) + 0.2  # 0.46 at its own pixels


def test_a_diameter_in_micrometres_needs_a_pixel_size_that_fits(tmp_path, capsys, scene):
    tifffile.imwrite(tmp_path / "plain.tif", scene)  # no pixel size
    tifffile.imwrite(tmp_path / "dpi.tif", scene, resolution=(72, 72), resolutionunit="INCH")  # a screen's, 353 µm
    for name, words in (("plain", "gives no pixel size"), ("dpi", "likely not the microscope's")):
        assert _segment(tmp_path / f"{name}.tif", "-o", tmp_path / f"{name}_labels.tif", "--diameter", "10um",
                        model=DEMO) == 2
        error = capsys.readouterr().err
        assert words in error and "give the diameter in pixels" in error
        assert not (tmp_path / f"{name}_labels.tif").exists()


# ---------------------------------------------------------------------------------------------
# Zarr in and out


def test_zarr_inputs_give_the_labels_of_the_same_image_in_a_tiff(tmp_path, scene):
    tifffile.imwrite(tmp_path / "scene.tif", scene)
    zarr.open_array(store=str(tmp_path / "plain.zarr"), mode="w", shape=scene.shape, dtype=scene.dtype,
                    **ZARR_V2)[...] = scene
    write_ome_zarr(tmp_path / "ome.zarr", np.stack([np.full_like(scene, 9), scene])[:, None], "czyx",
                   scale=[1, 2.0, 0.5, 0.5], units="micrometer", names=["empty", "DAPI"])
    for name, extra in (("scene.tif", []), ("plain.zarr", []), ("ome.zarr", ["--channel", "DAPI"])):
        assert _segment(tmp_path / name, *extra, "-o", tmp_path / f"{Path(name).stem}_labels.tif", model=DEMO) == 0
    expected = tifffile.imread(tmp_path / "scene_labels.tif")
    assert expected.any()
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "plain_labels.tif"), expected)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "ome_labels.tif"), expected)  # z of 1: squeezed


def test_zarr_output_equals_the_tiff_output_and_is_never_replaced_unasked(tmp_path, capsys, scene):
    source = tmp_path / "scene.tif"
    tifffile.imwrite(source, np.stack([scene, scene[::-1]]), photometric="minisblack", metadata={"axes": "ZYX"})
    assert _segment(source, "-o", tmp_path / "labels.tif", model=DEMO) == 0
    output = tmp_path / "labels.zarr"
    assert _segment(source, "-o", output, "--tile-shape", "64", "--halo", "16", model=DEMO) == 0
    tiled = zarr.open(str(output), mode="r")
    assert tiled.chunks == (1, 64, 64)  # one chunk per tile, written plane by plane
    assert _segment(source, "-o", output, "--overwrite", model=DEMO) == 0
    written = zarr.open(str(output), mode="r")
    assert written.chunks == (1, 128, 128)
    np.testing.assert_array_equal(written[:], tifffile.imread(tmp_path / "labels.tif"))
    assert f"-> {output}" in capsys.readouterr().out
    before = sorted(p.relative_to(output) for p in output.rglob("*"))
    assert _segment(source, "-o", output) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert sorted(p.relative_to(output) for p in output.rglob("*")) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.tif", "labels.zarr", "scene.tif"]


def test_an_ome_zarr_input_gives_an_ome_zarr_labels_group(tmp_path, scene):
    source = write_ome_zarr(tmp_path / "image.zarr", np.stack([scene, scene])[:, None], "tzyx",
                            scale=[60.0, 2.0, 0.5, 0.5], units="micrometer")
    assert _segment(source, "-o", tmp_path / "labels.zarr", model=DEMO) == 0
    attrs = json.loads((tmp_path / "labels.zarr" / ".zattrs").read_text())
    multiscale = attrs["multiscales"][0]
    assert [axis["name"] for axis in multiscale["axes"]] == ["t", "z", "y", "x"]
    assert multiscale["datasets"] == [{"path": "0", "coordinateTransformations": [
        {"type": "scale", "scale": [60.0, 2.0, 0.5, 0.5]}]}]
    assert attrs["image-label"] == {"version": "0.4"}
    labels = zarr.open(str(tmp_path / "labels.zarr"), mode="r")["0"]
    assert labels.shape == (2, 1, 128, 128) and labels[0].any()


def test_zarr_inputs_of_a_batch_get_zarr_outputs(tmp_path, no_model, capsys):
    zarr.open_array(store=str(tmp_path / "a.zarr"), mode="w", shape=(32, 32), dtype="u1", **ZARR_V2)
    (tmp_path / "out" / "a_labels.zarr").mkdir(parents=True)
    np.save(tmp_path / "b.npy", _noise((32, 32)))
    assert _segment(tmp_path / "a.zarr", tmp_path / "b.npy", "-o", tmp_path / "out") == 2
    assert f"Output exists: {tmp_path / 'out' / 'a_labels.zarr'}" in capsys.readouterr().err


def test_an_unknown_output_format_is_refused_before_the_model_loads(tmp_path, capsys, no_model):
    np.save(tmp_path / "a.npy", _noise((32, 32)))
    assert _segment(tmp_path / "a.npy", "-o", tmp_path / "labels.jpg") == 2
    assert "unknown output format '.jpg'; use .tif, .tiff, .png, .npy, .zarr" in capsys.readouterr().err


def test_an_embedding_cache_folder_spares_the_encoder_in_a_later_run(tmp_path, monkeypatch):
    from napari_clipsam.model.clipsam import ClipSamModel

    image = tmp_path / "nuclei.tif"
    tifffile.imwrite(image, sample_image("demo"))
    calls = []
    original = ClipSamModel.encoder_suffix

    def counted(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ClipSamModel, "encoder_suffix", counted)
    cache = tmp_path / "features"
    assert _segment(image, "-o", tmp_path / "first.tif", "--embedding-cache", cache, model=DEMO) == 0
    assert calls and any(cache.iterdir())
    encoded = len(calls)
    assert _segment(image, "-o", tmp_path / "second.tif", "--embedding-cache", cache, model=DEMO) == 0
    assert len(calls) == encoded  # the later run (a new model, a new process's worth of state) read the folder
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "second.tif"), tifffile.imread(tmp_path / "first.tif"))
