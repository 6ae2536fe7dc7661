"""Many files on dask.distributed (a LocalCluster on localhost, started by the tests)."""

from __future__ import annotations

import distributed
import numpy as np
import pytest
import tifffile

import napari_clipsam as nc
from napari_clipsam.batch import segment_files
from napari_clipsam.inference.instances import interior_point
from napari_clipsam.inference.pipeline import SegmentOptions
from napari_clipsam.synthetic import generate_scene
from napari_clipsam.training.evaluate import touching_objects

DEMO = {"preset": "demo", "device": "cpu", "precision": "fp32"}
OPTIONS = SegmentOptions(instances=True, instance_method="components")


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                  host="127.0.0.1") as local, distributed.Client(local) as client:
        yield client


@pytest.fixture
def files(tmp_path):
    pairs = []
    for seed in range(3):
        source = tmp_path / f"field{seed}.tif"
        tifffile.imwrite(source, generate_scene(2_000_500 + seed, size=256, kind="nuclei").image)
        pairs.append((source, tmp_path / "out" / f"field{seed}_labels.tif"))
    (tmp_path / "out").mkdir()
    return pairs


def test_files_are_segmented_on_the_cluster_as_in_process(cluster, files):
    seen = []
    report = segment_files(files, "nucleus", model_args=DEMO, options=OPTIONS, client=cluster,
                           on_result=lambda *event: seen.append(event))
    assert report.ok and sorted(report.written) == sorted(str(output) for _, output in files)
    assert len(seen) == 3 and all(error is None for _, _, error in seen)
    model = nc.load_model(**DEMO)
    for source, output in files:
        expected = nc.segment(tifffile.imread(source), "nucleus", model=model, instances=True,
                              instance_method="components")
        np.testing.assert_array_equal(tifffile.imread(output), expected)


def test_a_rerun_skips_finished_outputs_and_a_failing_file_does_not_stop_the_others(cluster, files, tmp_path):
    first_source, first_output = files[0]
    report = segment_files(files[:1], "nucleus", model_args=DEMO, options=OPTIONS, client=cluster)
    written = first_output.stat().st_mtime_ns
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"not a tiff")
    pairs = [*files, (broken, tmp_path / "out" / "broken_labels.tif")]
    report = segment_files(pairs, "nucleus", model_args=DEMO, options=OPTIONS, client=cluster)
    assert report.skipped == [str(first_output)] and first_output.stat().st_mtime_ns == written
    assert sorted(report.written) == sorted(str(output) for _, output in files[1:])
    assert list(report.failed) == [str(broken)] and "broken.tif" in report.failed[str(broken)]
    assert not (tmp_path / "out" / "broken_labels.tif").exists()
    with pytest.raises(RuntimeError, match="1 of 3 files failed"):
        report.raise_for_failures()


def test_a_local_cluster_is_started_and_closed_when_none_is_given(files):
    report = segment_files(files[:2], "nucleus", model_args=DEMO, options=OPTIONS, workers=1)
    assert report.ok and len(report.written) == 2


def test_negative_points_reach_the_workers(cluster, files):
    source, output = files[0]  # scene 2_000_500: nucleus 9 touches others
    truth = generate_scene(2_000_500, size=256, kind="nuclei").labels["nucleus"]
    near = np.unique(truth[touching_objects(truth, truth == 9)])
    points = np.array([interior_point(truth == value) for value in (9, *near)])
    labels = [1] + [0] * len(near)
    report = segment_files([(source, output)], "nucleus", model_args=DEMO, client=cluster, points=points,
                           point_labels=labels)
    assert report.ok
    model = nc.load_model(**DEMO)
    expected = nc.segment(tifffile.imread(source), "nucleus", model=model, points=points, point_labels=labels)
    np.testing.assert_array_equal(tifffile.imread(output), expected)
    assert (expected != nc.segment(tifffile.imread(source), "nucleus", model=model, points=points[:1])).any()


def test_a_diameter_in_micrometres_reaches_the_workers_as_each_files_pixels(cluster, tmp_path):
    """Two OME-TIFFs of one field, at 0.5 and 0.125 µm per pixel (the second 4 times larger):
    on the workers a 30 µm diameter is 60 px in the first (the demo model's sizes: read as it is)
    and 240 px in the second (read smaller), as ``nc.segment`` with those pixels gives."""
    image = generate_scene(2_000_501, size=128, kind="nuclei").image
    fields = {"x1": (image, 0.5, 60.0), "x4": (np.kron(image, np.ones((4, 4), image.dtype)), 0.125, 240.0)}
    pairs = []
    for name, (data, size, _) in fields.items():
        tifffile.imwrite(tmp_path / f"{name}.ome.tif", data, ome=True,
                         metadata={"axes": "YX", "PhysicalSizeX": size, "PhysicalSizeY": size})
        pairs.append((tmp_path / f"{name}.ome.tif", tmp_path / f"{name}_labels.tif"))
    report = segment_files(pairs, "nucleus", model_args=DEMO, client=cluster,
                           options=SegmentOptions(diameter=30.0, diameter_unit="um"))
    assert report.ok
    model = nc.load_model(**DEMO)
    for name, (data, _, pixels) in fields.items():
        expected = nc.segment(data, "nucleus", model=model, diameter=pixels)
        assert expected.any()
        np.testing.assert_array_equal(tifffile.imread(tmp_path / f"{name}_labels.tif"), expected)
