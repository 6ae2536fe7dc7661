"""What the benchmarks measure the same way: device sync, peak memory, click latency, the machine."""

from __future__ import annotations

import resource
import statistics
import time
from typing import Callable


def sync(device) -> None:
    """Wait for queued GPU work, so that a timer measures it."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_memory_gb(device) -> float:
    """Peak memory of this process: allocated CUDA memory on a GPU, resident set on CPU."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 1e9
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def reset_peak_memory(device) -> None:
    """Start a new peak for :func:`peak_memory_gb` on a GPU; a CPU's resident-set peak cannot be reset."""
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def device_description(device) -> str:
    """The accelerator a figure was measured on (name, memory), or the CPU's description."""
    import torch

    from napari_clipsam._machine import cpu_description

    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        return f"{properties.name}, {properties.total_memory / 2**30:.0f} GiB; host CPU {cpu_description()}"
    return cpu_description()


def click_latency_ms(click: Callable[[int], object], device, clicks: int = 21) -> float:
    """Median time of ``click(x)`` for a row of points, the first (warm-up) left out."""
    latencies = []
    for index in range(clicks):
        sync(device)
        start = time.perf_counter()
        click(100 + index * 30)
        sync(device)
        latencies.append(time.perf_counter() - start)
    return statistics.median(latencies[1:]) * 1000


def median_seconds(run: Callable[[], object], device, repeats: int) -> float:
    """Median seconds of ``run()`` over ``repeats`` calls after one warm-up call (GPU work waited for)."""
    times = []
    for _ in range(repeats + 1):
        sync(device)
        start = time.perf_counter()
        run()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])
