"""The machine: what a figure was measured on (benchmarks and the demo model's training script
print it), and how torch should take its CPU memory on it."""

from __future__ import annotations

import os
import platform


def cpu_description() -> str:
    """The CPU model and the flags that matter for this project's speed (from /proc/cpuinfo)."""
    model, flags = platform.processor() or platform.machine() or "unknown", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            fields = dict(line.split(":", 1) for line in cpuinfo.read().split("\n\n")[0].splitlines() if ":" in line)
        fields = {key.strip(): value.strip() for key, value in fields.items()}
        model, flags = fields.get("model name", model), set(fields.get("flags", "").split())
    except OSError:
        pass
    shown = [flag for flag in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16") if flag in flags]
    return (f"{model}, {os.cpu_count()} logical cores, flags: {' '.join(shown) or 'none of avx2/avx512/amx'}, "
            f"huge pages: {huge_pages_state()}")


# torch (2.2 and later, Linux) puts CPU tensors of 2 MB or more in transparent huge pages
# when this variable is 1. It reads it once, at its first allocation.
HUGE_PAGES_VARIABLE = "THP_MEM_ALLOC_ENABLE"


def use_huge_pages() -> None:
    """Ask torch for huge pages for large CPU tensors, unless the variable is set already.

    The attention of a global block makes large temporaries (a band of 256 queries over a
    32x32 grid, batch 8: 33 MB), freed and made again at every call. The C allocator
    gives blocks that large fresh from the kernel each time, and the first touch of
    each 4 kB page faults: on a virtual machine measured here (2026-11-27) a fresh 64 MB
    tensor took 94 ms to fill against 12 ms for one already mapped, 36 ms in 2 MB pages.
    A demo-model training step (1 thread) took 2.24 s instead of 2.97 (0.76) on a quiet
    machine, 4.4 s instead of about 6.5 with three processes on its two cores; a vit_b
    image 25.2 s instead of 27.1, peak memory within 1 %
    (``benchmarks/bench_allocator.py``). Values are unchanged.
    ``import napari_clipsam`` calls this, so that it precedes torch's first allocation;
    where torch has allocated already it changes nothing. ``THP_MEM_ALLOC_ENABLE=0``
    in the environment turns it off.
    """
    os.environ.setdefault(HUGE_PAGES_VARIABLE, "1")


def huge_pages_state() -> str:
    """Whether torch was asked for huge pages, and the kernel's setting (``madvise`` or ``always``: granted)."""
    asked = "asked" if os.environ.get(HUGE_PAGES_VARIABLE) == "1" else "not asked"
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled", encoding="utf-8") as setting:
            kernel = setting.read().split("[")[1].split("]")[0]
    except (OSError, IndexError):
        kernel = "unknown"
    return f"{asked}, kernel {kernel}"


__all__ = ["HUGE_PAGES_VARIABLE", "cpu_description", "huge_pages_state", "use_huge_pages"]
