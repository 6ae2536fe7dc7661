"""The benchmark scripts run end to end (tiny models): their figures are not checked
here, only that they are produced, so that the scripts do not rot between GPU runs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _run(script: str, *args: str) -> str:
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--sam", "tiny", "--clip", "tiny", "--device", "cpu", *args],
        capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout


def _figure(output: str, label: str) -> float:
    match = re.search(rf"{re.escape(label)}\s+([0-9.]+)", output)
    assert match, f"{label!r} missing from:\n{output}"
    return float(match.group(1))


def test_inference_benchmark_prints_its_figures():
    output = _run("bench_inference.py", "--no-compile", "--repeats", "1", "--precisions", "fp32")
    assert "models: SAM tiny + CLIP tiny" in output
    # Seconds print with two decimals: a tiny encoder may show 0.00.
    for label in ("vanilla SAM encoder", "CLIP-guided, new image+text", "ratio guided / vanilla"):
        assert _figure(output, label) >= 0
    for label in ("point prompt, image set", "vanilla SamPredictor", "peak memory, guided process"):
        assert _figure(output, label) > 0


def test_training_benchmark_prints_its_figures():
    output = _run("bench_training.py", "--steps", "1", "--image-size", "128")
    rows = {line.split()[0]: line.split() for line in output.splitlines() if line.startswith(("on ", "off "))}
    assert set(rows) == {"on", "off"}, output
    for row in rows.values():
        assert float(row[1]) > 0 and float(row[2]) > 0  # seconds per step, peak GB


def test_quality_benchmark_prints_its_figures(tmp_path):
    output = _run("bench_quality.py", "--model", "random", "--scenes", "1", "--clicks", "1", "--threads", "1",
                  "--json", str(tmp_path / "quality.json"))
    for label in ("text-only IoU, nucleus", "cross-concept overlap, worst pair", "touching fraction of true nuclei",
                  "instance F1 @0.5, seeds", "instance F1 @0.5, components", "click IoU, all clicks",
                  "instance F1 @0.5, a click on each object", "box IoU / outside, nucleus",
                  "bacterium instance F1 @0.5, seeds", "bacterium instance F1 @0.5, components",
                  "cell membrane instance F1 @0.5, seeds"):
        assert 0 <= _figure(output, label) <= 1
    assert re.search(r"text-only IoU, nucleus\s+[0-9.]+\s+target >= 0.85\s+(PASS|MISS)", output)
    assert "sample coins" in output and "sample synthetic_nuclei" in output and "sample cell" in output
    figures = json.loads((tmp_path / "quality.json").read_text())
    assert set(figures["scenes"]["text_iou"]) == {"nucleus", "cell membrane", "spot", "bacterium"}
    assert set(figures["samples"]) == {"synthetic_nuclei", "coins", "cell"}
    assert figures["samples"]["cell"]["objects"] == 1
    clicked = figures["scenes"]["clicked_instances"]  # every nucleus clicked once: each click one object at most
    assert clicked["true_positives"] + clicked["false_positives"] <= clicked["true_positives"] + clicked["false_negatives"]
    errors = figures["scenes"]["text_errors"]["nucleus"]
    assert 0 <= errors["missed_at_rim"] <= errors["missed"] and 0 <= errors["false_at_rim"] <= errors["false"]
    assert errors["missed"] + errors["false"] > 0  # random weights: wrong somewhere
    assert re.search(r"text-only wrong pixels, nucleus: \d+ missed \(\d+% on", output)
    assert re.search(r"box and click: IoU [0-9.]+, [0-9.]+ outside", output)
    assert "boxes 3 px beyond their objects" in output and figures["box_margin"] == 3  # as a user draws a box
    for concept, sides in figures["scenes"]["box_quality"].items():  # box alone, then box and click: IoU, outside
        assert len(sides) == 4 and all(0 <= value <= 1 for value in sides), (concept, sides)


def _run_plain(script: str, *args: str) -> str:
    completed = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                               timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout


def test_scale_benchmark_prints_each_read_and_the_means():
    output = _run("bench_scale.py", "--model", "random", "--scenes", "1", "--factors", "3", "--no-samples",
                  "--threads", "1")
    assert "CPU: " in output and "nucleus 8-60 px" in output  # the diameters the reads are scaled to
    rows = [line.split() for line in output.splitlines() if line.startswith("scenes x3 ") and " masks " not in line]
    assert len(rows) >= 4  # every concept of the four kinds' scenes
    assert any(float(row[-6]) > 1 for row in rows)  # enlarged 3x: some read at another scale
    assert all(0 <= float(value) <= 1 for row in rows for value in row[-4:])
    means = re.search(r"scenes x3\s+masks\s+(\d+)\s+own size ([0-9.]+)\s+resized ([0-9.]+)\s+diameter ([0-9.]+)"
                      r"\s+range end ([0-9.]+)", output)
    assert means and int(means.group(1)) == len(rows)


def test_large_image_benchmark_prints_memory_and_tiles():
    output = _run_plain("bench_large.py", "--sizes", "600", "--threads", "1")
    row = next(line.split() for line in output.splitlines() if line.strip().startswith("600 "))
    size, tiles, seconds, per_tile, peak = row[:5]
    assert int(tiles) == 25 and float(seconds) > 0 and float(per_tile) > 0 and float(peak) > 0  # 128 px cores


def test_batch_benchmark_prints_files_per_hour():
    output = _run_plain("bench_batch.py", "--files", "2", "--workers", "1")
    row = next(line.split() for line in output.splitlines() if line.strip().startswith("1 "))
    assert float(row[1]) > 0 and float(row[2]) > 0 and row[4] == "0"


def test_click_benchmark_prints_its_figures():
    output = _run("bench_click.py", "--sizes", "300")
    for label in ("click, new path", "click on an object of 1/64", "click, old full-res path", "click, SamPredictor",
                  "decoder, image prepared", "preparing the image", "SAM's decoder (model.decode)",
                  "two-way transformer"):
        assert _figure(output, label) > 0
    assert re.search(r"click, new path\s+[0-9.]+ ms \(target <= 30 ms: (met|MISSED)\)", output)
    assert "image 300x300" in output


def test_attention_benchmark_prints_time_and_memory_per_band():
    completed = subprocess.run([sys.executable, str(BENCHMARKS / "bench_attention.py"), "--bands", "1024", "2048",
                                "--threads", "1"], capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    for band in (1024, 2048):
        match = re.search(rf"{band} queries per band\s+([0-9.]+) s\s+\+\s*(-?[0-9.]+) MiB resident", completed.stdout)
        assert match and float(match.group(1)) > 0, completed.stdout


def test_startup_benchmark_prints_its_figures():
    output = _run("bench_startup.py", "--repeats", "1")
    for label in ("import napari_clipsam", "napari-clipsam --help"):
        assert _figure(output, label) >= 0  # seconds with two decimals
    for label in ("segment, demo preset", "segment, random tiny + tiny", "first mask (read, encode, decode, write)"):
        assert _figure(output, label) > 0
    assert re.search(r"all imports: [0-9.]+ s", output) and "not needed by the command, loaded anyway:" in output


def test_demo_speed_benchmark_prints_its_figures():
    output = _run("bench_demo_speed.py", "--model", "random", "--repeats", "1", "--scenes", "1", "--no-sample",
                  "--threads", "1")
    assert "CPU: " in output
    for label in ("text only, competing, 1 view", "text only, alone, 8 views", "seeded instances, alone, 8 views",
                  "first click on an image and concept", "a later click"):
        assert _figure(output, label) > 0
    assert re.search(r"text only, alone, 8 views\s+[0-9.]+ s  x[0-9.]+ of one view", output)


def test_reuse_benchmark_prints_its_figures():
    output = _run("bench_reuse.py")
    for label in ("vanilla SAM image encoder (segment_anything)", "full prepare: new image, new concept",
                  "second concept, same image", "earlier image again, a concept it had",
                  "earlier image again, a new concept"):
        assert _figure(output, label) >= 0
    assert "concept-conditioned encoder blocks: 2 of 2" in output and "concept switch" in output


def test_inference_benchmark_prints_batches_and_compiled_encoders():
    """The GPU run's branches on CPU: per-image figures by batch, and the compiled image encoders."""
    output = _run("bench_inference.py", "--precisions", "fp32", "--repeats", "1", "--batches", "1", "2",
                  "--compile", "encoder")
    assert "batches 1 2; compiled: encoder" in output
    table = output[output.index("per image, by batch"):]
    compiled = table[table.index("compiled image encoders"):]
    for section in (table[: table.index("compiled image encoders")], compiled):
        rows = {line.split()[0]: line.split() for line in section.splitlines() if re.match(r"\s+[12]\s", line)}
        assert set(rows) == {"1", "2"}, section
        assert all(float(row[1]) > 0 and float(row[3]) > 0 for row in rows.values()), section  # vanilla, guided ms
        assert all(row[5] in ("PASS", "MISS") for row in rows.values()), section
    assert "compile failed" not in compiled


def test_embedding_store_benchmark_prints_its_figures():
    output = _run("bench_embedding_store.py")
    assert "identical masks, scores and logits: True" in output
    assert _figure(output, "model fingerprint, first call (s)") >= 0


def test_allocator_benchmark_prints_both_settings_and_their_ratio():
    output = _run("bench_allocator.py", "--steps", "1", "--repeats", "1", "--batch-size", "2")
    assert "huge pages:" in output  # the machine line says whether torch was asked for them
    for label in ("tiny training step, s", "new image + concept, s", "peak memory of the process, GB"):
        row = re.search(rf"{re.escape(label)}\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)", output)
        assert row, output
        off, on, ratio = map(float, row.groups())
        assert off > 0 and on > 0 and abs(ratio - on / off) < 0.01 + 0.01 * ratio
