"""Many files: files per hour on a local dask.distributed cluster of 1 and 2 workers.

Writes generated fields (napari_clipsam.synthetic, 256 px nuclei, the demo model's scale)
as TIFF files, then segments them with ``napari_clipsam.batch.segment_files`` (seeded
instances, demo model) once per worker count, into a fresh output folder each time. The
wall time includes starting the cluster and each worker loading its model; the rate is
also given from the first finished file on (the steady state).

    python benchmarks/bench_batch.py                      # 24 files, 1 and 2 workers
    python benchmarks/bench_batch.py --files 48 --workers 1 2 4
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=24)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)

    import tifffile

    from napari_clipsam._machine import cpu_description
    from napari_clipsam.batch import segment_files
    from napari_clipsam.inference.pipeline import SegmentOptions
    from napari_clipsam.synthetic import generate_scene

    print(f"machine: {cpu_description()}; demo model, seeded instances, {args.files} files of 256 px")
    print(f"{'workers':>7} {'wall s':>8} {'files/hour':>11} {'steady files/hour':>18} {'failed':>7}")
    with tempfile.TemporaryDirectory() as folder:
        sources = []
        for index in range(args.files):
            path = Path(folder) / f"field{index:03d}.tif"
            tifffile.imwrite(path, generate_scene(4_000_000 + index, size=256, kind="nuclei").image)
            sources.append(path)
        for workers in args.workers:
            out = Path(folder) / f"out{workers}"
            out.mkdir()
            finished = []
            start = time.perf_counter()
            report = segment_files(
                [(source, out / f"{source.stem}_labels.tif") for source in sources], "nucleus",
                model_args={"preset": "demo", "device": "cpu", "precision": "fp32"},
                options=SegmentOptions(instances=True), workers=workers,
                on_result=lambda *_: finished.append(time.perf_counter()),
            )
            wall = time.perf_counter() - start
            steady = (len(finished) - 1) / (finished[-1] - finished[0]) * 3600 if len(finished) > 1 else float("nan")
            print(f"{workers:>7} {wall:>8.1f} {args.files / wall * 3600:>11.0f} {steady:>18.0f} "
                  f"{len(report.failed):>7}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
