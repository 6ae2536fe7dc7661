"""What both benchmarks measure the same way: device sync, peak memory, click latency."""

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
