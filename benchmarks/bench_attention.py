"""One vit_b global attention at 1024 px (a 64x64 token grid) by queries per band: time and memory.

SAM's global-attention blocks run through ``model/attention.py``: on CPU in bands of
queries, each band's relative-position bias (heads x band x 4096) in one shared buffer.
For each band size this prints the best of three timed calls (all band sizes take turns
in one process, so that a change of load falls on all alike) and the memory one call
adds to the resident set (each band size in a fresh process, where nothing freed before
hides it). The default, ``QUERIES_PER_BAND``, is chosen from these figures.

    python benchmarks/bench_attention.py
    python benchmarks/bench_attention.py --bands 512 256 128 --threads 1
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

GRID, WIDTH, HEADS = 64, 768, 12  # vit_b at SAM's 1024 px input


def _resident_mib(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _attention_and_tokens():
    import torch
    from segment_anything.modeling.image_encoder import Attention

    torch.manual_seed(0)
    attention = Attention(WIDTH, num_heads=HEADS, qkv_bias=True, use_rel_pos=True, input_size=(GRID, GRID))
    torch.nn.init.normal_(attention.rel_pos_h, std=0.02)
    torch.nn.init.normal_(attention.rel_pos_w, std=0.02)
    return attention, torch.randn(1, GRID, GRID, WIDTH)


def _memory_of(band: int) -> float:
    """MiB one call with ``band`` queries per band adds to this fresh process's peak resident set."""
    import torch

    from napari_clipsam.model.attention import sdpa_forward

    attention, tokens = _attention_and_tokens()
    with torch.inference_mode():
        before = _resident_mib("VmRSS")
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # the peak (VmHWM) starts again from the current resident set
        sdpa_forward(attention, tokens, band)
        return _resident_mib("VmHWM") - before


def _times(bands: list[int]) -> dict[int, float]:
    import torch

    from napari_clipsam.model.attention import sdpa_forward

    attention, tokens = _attention_and_tokens()
    times: dict[int, list[float]] = {band: [] for band in bands}
    with torch.inference_mode():
        reference = sdpa_forward(attention, tokens, bands[0])
        for _ in range(3):
            for band in bands:
                start = time.perf_counter()
                out = sdpa_forward(attention, tokens, band)
                times[band].append(time.perf_counter() - start)
                torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
    return {band: min(values) for band, values in times.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bands", type=int, nargs="+", default=[4096, 1024, 512, 256, 128, 64],
                        help="queries per band (4096: one call for the whole grid)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    parser.add_argument("--memory-of", type=int, help=argparse.SUPPRESS)  # a child process's job
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_of:
        print(json.dumps(_memory_of(args.memory_of)))
        return 0

    from napari_clipsam._machine import cpu_description
    from napari_clipsam.model.attention import QUERIES_PER_BAND

    print(f"machine: {cpu_description()}; {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    print(f"one global attention of vit_b at 1024 px (grid {GRID}x{GRID}, {HEADS} heads); default band "
          f"{QUERIES_PER_BAND} queries")
    times = _times(args.bands)
    threads = ["--threads", str(args.threads)] if args.threads else []
    for band in args.bands:
        child = subprocess.run([sys.executable, __file__, "--memory-of", str(band), *threads],
                               capture_output=True, text=True, check=True)
        memory = json.loads(child.stdout.strip().splitlines()[-1])
        print(f"  {band:5d} queries per band  {times[band]:6.3f} s  +{memory:5.0f} MiB resident")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
