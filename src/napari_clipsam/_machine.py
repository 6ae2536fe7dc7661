"""What machine a figure was measured on: benchmarks and the demo model's training script print it."""

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
    return f"{model}, {os.cpu_count()} logical cores, flags: {' '.join(shown) or 'none of avx2/avx512/amx'}"


__all__ = ["cpu_description"]
