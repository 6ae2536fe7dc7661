"""Files as microscopists have them: OME-TIFF, ImageJ and plain TIFF by their axes, zarr and OME-Zarr,
the pixel size carried to the labels, and zarr labels written without ever leaving half a folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import zarr

import napari_clipsam as nc
from napari_clipsam._image_files import open_image
from napari_clipsam._io import write_labels
from napari_clipsam._zarr_files import zarr_labels
from napari_clipsam.errors import CorruptFileError, OutputExistsError

ZARR_V2 = {"zarr_format": 2}


def _data(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4000, size=shape).astype(np.uint16)


def _ome_tiff(path, data, axes, names=None, **sizes):
    metadata = {"axes": axes, **sizes}
    if names:
        metadata["Channel"] = {"Name": names}
    tifffile.imwrite(path, data, ome=True, metadata=metadata)
    return path


def write_ome_zarr(path, data, axes, scale, units=None, names=None):
    """An NGFF 0.4 image as other tools write one: a group, level "0", multiscales and omero."""
    group = zarr.open_group(str(path), mode="w", **ZARR_V2)
    axes_list = []
    for name in axes:
        kind = {"t": "time", "c": "channel"}.get(name, "space")
        axis = {"name": name, "type": kind}
        if kind == "space" and units:
            axis["unit"] = units
        axes_list.append(axis)
    group.attrs.update({"multiscales": [{
        "version": "0.4", "axes": axes_list,
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": list(scale)}]}],
    }]})
    if names:
        group.attrs["omero"] = {"channels": [{"label": n} for n in names]}
    array = zarr.open_array(store=str(path / "0"), mode="w", shape=data.shape, dtype=data.dtype,
                            chunks=(1,) * (data.ndim - 2) + data.shape[-2:], **ZARR_V2)
    array[...] = data
    return path


# ---------------------------------------------------------------------------------------------
# Axes: what the file names decides, nothing is guessed

AXES = [
    # axes written, shape, rgb, labels' axes, where the channel axis was (moved last)
    ("YX", (20, 30), False, "YX", None),
    ("CYX", (2, 20, 30), True, "YX", 0),
    ("ZYX", (3, 20, 30), False, "ZYX", None),
    ("TZCYX", (2, 3, 4, 20, 30), True, "TZYX", 2),
    ("ZCYX", (3, 2, 20, 30), True, "ZYX", 1),
]


@pytest.mark.parametrize(("axes", "shape", "rgb", "label_axes", "channel_axis"), AXES, ids=[a[0] for a in AXES])
def test_ome_tiff_axes_give_planes_first_and_channels_last(tmp_path, axes, shape, rgb, label_axes, channel_axis):
    data = _data(shape)
    expected = data if channel_axis is None else np.moveaxis(data, channel_axis, -1)
    with open_image(_ome_tiff(tmp_path / "x.ome.tif", data, axes)) as source:
        assert (source.rgb, source.axes) == (rgb, label_axes)
        assert source.data.shape == expected.shape and source.labels_shape == expected.shape[: len(label_axes)]
        assert not isinstance(source.data, np.ndarray)  # read lazily, plane by plane
        leading = (0,) * (len(label_axes) - 2)
        np.testing.assert_array_equal(source.data[leading], expected[leading])  # one plane
        np.testing.assert_array_equal(source.data[leading + (slice(3, 9), slice(5, 25))],
                                      expected[leading + (slice(3, 9), slice(5, 25))])  # one tile
        np.testing.assert_array_equal(np.asarray(source.data), expected)


def test_rgb_tiff_and_imagej_hyperstack(tmp_path):
    rgb = _data((20, 30, 3)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    with open_image(tmp_path / "rgb.tif") as source:
        assert (source.rgb, source.axes, source.data.shape) == (True, "YX", (20, 30, 3))
    with open_image(tmp_path / "rgb.tif", channel=1) as source:
        np.testing.assert_array_equal(source.data[()], rgb[..., 1])
    stack = _data((3, 2, 20, 30)).astype(np.float32)
    tifffile.imwrite(tmp_path / "ij.tif", stack, imagej=True, metadata={"axes": "ZCYX"})
    with open_image(tmp_path / "ij.tif") as source:
        assert (source.rgb, source.axes, source.data.shape) == (True, "ZYX", (3, 20, 30, 2))


def test_a_channel_is_chosen_by_number_or_by_name(tmp_path):
    data = _data((3, 20, 30))
    path = _ome_tiff(tmp_path / "x.ome.tif", data, "CYX", names=["DAPI", "GFP", "mCherry"])
    for channel in (1, "GFP", "gfp", -2):
        with open_image(path, channel) as source:
            assert (source.rgb, source.data.shape) == (False, (20, 30))
            assert source.channel_names == ("DAPI", "GFP", "mCherry")
            np.testing.assert_array_equal(source.data[()], data[1])
    with pytest.raises(nc.UnsupportedImageError, match=r"no channel is named 'Cy5'; its channels are 0 'DAPI', 1 'GFP', 2 'mCherry'"):
        open_image(path, "Cy5")
    with pytest.raises(nc.UnsupportedImageError, match="there is no channel 3; it has 3 channels"):
        open_image(path, 3)


def test_a_channel_where_there_is_none_to_choose_is_refused(tmp_path):
    with pytest.raises(nc.UnsupportedImageError, match=r"no channel to choose \(its axes are ZYX\); leave out --channel"):
        open_image(_ome_tiff(tmp_path / "z.ome.tif", _data((2, 20, 30)), "ZYX"), 0)
    np.save(tmp_path / "x.npy", _data((20, 30, 2)))
    with pytest.raises(nc.UnsupportedImageError, match="names no channels.*give the channel's number"):
        open_image(tmp_path / "x.npy", "GFP")
    with open_image(tmp_path / "x.npy", 1) as source:  # no axes named: the pipeline picks it, as before
        assert (source.rgb, source.axes, source.channel) == (None, None, 1)


def test_more_channels_than_can_be_mixed_ask_for_one(tmp_path):
    path = _ome_tiff(tmp_path / "x.ome.tif", _data((10, 20, 30)), "CYX")
    with pytest.raises(nc.UnsupportedImageError, match="10 channels.*choose one by number or name"):
        open_image(path)
    with open_image(path, 9) as source:
        assert source.data.shape == (20, 30)


@pytest.mark.parametrize(("axes", "shape", "problem"), [
    ("ZBYX", (2, 3, 20, 30), "unknown axis letter B"),
    ("ZCY", (2, 3, 20), "no X axis"),
    ("ZQ", (20, 30), "no Y and no X axis"),
])
def test_axes_that_cannot_be_segmented_are_named(tmp_path, axes, shape, problem):
    path = tmp_path / "x.tif"
    tifffile.imwrite(path, _data(shape), photometric="minisblack", metadata={"axes": axes})
    with pytest.raises(nc.UnsupportedImageError) as raised:
        open_image(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: its axes {axes}") and problem in message and "Supported: Y and X" in message


# ---------------------------------------------------------------------------------------------
# Pixel size, from the file to the labels


@pytest.mark.parametrize(("write", "expected"), [
    (lambda p, d: _ome_tiff(p, d, "ZYX", PhysicalSizeX=0.5, PhysicalSizeY=0.25, PhysicalSizeZ=2.0),
     {"X": 0.5, "Y": 0.25, "Z": 2.0}),
    (lambda p, d: _ome_tiff(p, d, "ZYX", PhysicalSizeX=200.0, PhysicalSizeXUnit="nm",
                            PhysicalSizeY=200.0, PhysicalSizeYUnit="nm"), {"X": 0.2, "Y": 0.2}),
    (lambda p, d: tifffile.imwrite(p, d.astype(np.float32), imagej=True, resolution=(4.0, 2.0),
                                   metadata={"axes": "ZYX", "spacing": 3.0, "unit": "micron"}),
     {"X": 0.25, "Y": 0.5, "Z": 3.0}),
    (lambda p, d: tifffile.imwrite(p, d, photometric="minisblack", resolution=(1e4, 2e4), resolutionunit="CENTIMETER"),
     {"X": 1.0, "Y": 0.5}),
    (lambda p, d: tifffile.imwrite(p, d, photometric="minisblack"), {}),  # tifffile's default resolution says nothing
], ids=["ome-um", "ome-nm", "imagej", "tiff-cm", "none"])
def test_pixel_size_is_read_in_micrometres_and_written_to_the_labels(tmp_path, write, expected):
    write(tmp_path / "x.tif", _data((2, 20, 30)))
    with open_image(tmp_path / "x.tif") as source:
        assert source.pixel_size == pytest.approx(expected)
        axes, sizes = source.axes, source.pixel_size
    write_labels(tmp_path / "labels.tif", np.ones(source.labels_shape, np.int32), axes=axes, pixel_size=sizes)
    with open_image(tmp_path / "labels.tif") as labels:  # read back as Fiji and napari would find it
        assert labels.axes == axes and labels.pixel_size == pytest.approx(expected)
    with tifffile.TiffFile(tmp_path / "labels.tif") as tif:
        if "X" in expected:  # the resolution tags plain TIFF readers (ImageJ) take
            assert tif.pages[0].resolution == pytest.approx((1e4 / expected["X"], 1e4 / expected["Y"]))
            assert int(tif.pages[0].resolutionunit) == 3


# ---------------------------------------------------------------------------------------------
# Zarr in


def test_a_plain_zarr_array_is_read_lazily_as_numpy_would_be(tmp_path):
    data = _data((3, 20, 30))
    zarr.open_array(store=str(tmp_path / "x.zarr"), mode="w", shape=data.shape, dtype=data.dtype, **ZARR_V2)[...] = data
    with open_image(tmp_path / "x.zarr") as source:
        assert (source.rgb, source.axes, source.ngff) == (None, None, None)
        assert source.labels_shape == (3, 20, 30)
        np.testing.assert_array_equal(source.data[1], data[1])


def test_an_ome_zarr_is_read_by_its_axes_with_channel_names_and_scale(tmp_path):
    data = _data((2, 3, 2, 20, 30))
    path = write_ome_zarr(tmp_path / "x.zarr", data, "tczyx", scale=[1.5, 1, 2.0, 0.4, 0.4], units="micrometer",
                          names=["DAPI", "GFP", "RFP"])
    with open_image(path, "RFP") as source:
        assert (source.rgb, source.axes, source.data.shape) == (False, "TZYX", (2, 2, 20, 30))
        assert source.pixel_size == pytest.approx({"Z": 2.0, "Y": 0.4, "X": 0.4})
        np.testing.assert_array_equal(source.data[1, 0], data[1, 2, 0])
        multiscale = source.ngff["multiscales"][0]
        assert [a["name"] for a in multiscale["axes"]] == ["t", "z", "y", "x"]
        assert multiscale["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.5, 2.0, 0.4, 0.4]
        assert source.ngff["image-label"]["version"] == "0.4"
    with open_image(path) as source:
        assert (source.rgb, source.data.shape) == (True, (2, 2, 20, 30, 3))


def test_zarr_folders_that_cannot_be_segmented_say_why(tmp_path):
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w", **ZARR_V2)
    group.create_group("labels")
    zarr.open_array(store=str(tmp_path / "g.zarr" / "raw"), mode="w", shape=(4, 4), dtype="u1", **ZARR_V2)
    with pytest.raises(CorruptFileError, match=r"without OME-Zarr 'multiscales'.*g.zarr/raw \(arrays: raw\)"):
        open_image(tmp_path / "g.zarr")
    write_ome_zarr(tmp_path / "w.zarr", _data((2, 20, 30)), "cyw", scale=[1, 1, 1])
    with pytest.raises(nc.UnsupportedImageError, match="a spatial axis that is not z, y or x"):
        open_image(tmp_path / "w.zarr")
    write_ome_zarr(tmp_path / "cx.zarr", _data((2, 30)), "cx", scale=[1, 1])
    with pytest.raises(nc.UnsupportedImageError, match="its axes CX .*no Y axis"):
        open_image(tmp_path / "cx.zarr")


def test_a_damaged_plane_is_named_when_it_is_read_and_not_before(tmp_path):
    path = tmp_path / "x.tif"
    tifffile.imwrite(path, _data((3, 20, 30)), compression="zlib", photometric="minisblack", metadata={"axes": "ZYX"})
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[2].dataoffsets[0], tif.pages[2].databytecounts[0]
    with open(path, "r+b") as file:
        file.seek(offset)
        file.write(b"\0" * count)
    with open_image(path) as source:  # only the metadata is read on opening
        source.data[0]
        with pytest.raises(CorruptFileError, match=f"{path}: cannot be read as a TIFF"):
            source.data[2]


# ---------------------------------------------------------------------------------------------
# Zarr out: never half a folder, never replacing unasked


def _hidden(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_zarr_labels_appear_whole_or_not_at_all(tmp_path):
    path = tmp_path / "labels.zarr"
    with pytest.raises(KeyboardInterrupt):
        with zarr_labels(path, (2, 20, 30)) as out:
            out[0] = 1
            raise KeyboardInterrupt  # Ctrl-C halfway
    assert not path.exists() and _hidden(tmp_path) == []
    with zarr_labels(path, (2, 20, 30), chunks=(1, 10, 10)) as out:
        out[1] = 7
    written = zarr.open(str(path), mode="r")
    assert written.chunks == (1, 10, 10) and written[1].max() == 7 and written[0].max() == 0
    assert _hidden(tmp_path) == []
    assert os.stat(path).st_mode & 0o777 == 0o777 & ~_umask()


def _umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current


def test_zarr_labels_never_replace_unless_asked(tmp_path):
    path = tmp_path / "labels.zarr"
    write_labels(path, np.ones((20, 30), np.int32))
    with pytest.raises(OutputExistsError):
        write_labels(path, np.zeros((20, 30), np.int32), replace=False)
    assert zarr.open(str(path), mode="r")[0, 0] == 1 and _hidden(tmp_path) == []
    write_labels(path, np.full((20, 30), 2, np.int32))
    assert zarr.open(str(path), mode="r")[0, 0] == 2 and _hidden(tmp_path) == []


def test_a_zarr_made_meanwhile_by_another_run_is_kept(tmp_path):
    path = tmp_path / "labels.zarr"
    with pytest.raises(OutputExistsError):
        with zarr_labels(path, (20, 30), replace=False) as out:
            out[...] = 1
            write_labels(path, np.full((20, 30), 5, np.int32))  # the other run finishes first
    assert zarr.open(str(path), mode="r")[0, 0] == 5 and _hidden(tmp_path) == []


def test_ome_zarr_labels_and_leftovers_of_a_killed_writer(tmp_path):
    path = tmp_path / "labels.zarr"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    leftover = tmp_path / f".labels.zarr.{int(dead.stdout)}-abc.tmp.zarr"
    (leftover / "0").mkdir(parents=True)
    ngff = {"multiscales": [{"version": "0.4", "axes": [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
                             "datasets": [{"path": "0"}]}], "image-label": {"version": "0.4"}}
    write_labels(path, np.ones((20, 30), np.int32), ngff=ngff)
    assert not leftover.exists()
    assert json.loads((path / ".zattrs").read_text()) == ngff
    assert json.loads((path / "0" / ".zarray").read_text())["dimension_separator"] == "/"
    np.testing.assert_array_equal(zarr.open(str(path), mode="r")["0"][:], 1)
