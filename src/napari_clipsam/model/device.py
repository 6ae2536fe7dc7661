"""Device and numeric precision choices."""

from __future__ import annotations

import platform
import sys
from contextlib import AbstractContextManager, nullcontext
from functools import lru_cache

import torch


def avoid_triton_on_cpu_only_machines() -> None:
    """Keep ``triton`` from being imported where there is no CUDA GPU to use it on.

    torchvision imports triton when it is installed. Where napari draws with Mesa's
    software OpenGL (llvmpipe: virtual machines, remote desktops, Xvfb), Mesa has
    already loaded its LLVM, and importing triton's own LLVM then crashes the whole
    process, so opening our widget from the Plugins menu would kill napari. Triton
    only compiles GPU kernels, so on a machine without CUDA nothing is lost; torch
    treats it as not installed. Must run before the model code is first imported:
    :func:`load_model` runs it in a process that has imported napari, and the dock
    widgets' jobs run it in their worker thread.
    """
    if "triton" in sys.modules:
        return
    if not torch.cuda.is_available():
        sys.modules["triton"] = None  # makes `import triton` raise ImportError


PRECISIONS = ("auto", "fp32", "bf16")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``: CUDA, then Apple MPS, then CPU; otherwise the named device."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"Unknown device {device!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'."
        ) from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"Device {device!r} was requested but CUDA is not available here; use 'cpu' or 'auto'.")
    return resolved


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX).

    Without it bf16 matrix products are tens of times slower than fp32
    (pytorch issue 146508), so "auto" precision stays in fp32.
    """
    if platform.system() != "Linux":
        return False
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool({"avx512_bf16", "amx_bf16"} & flags)
    except OSError:
        return False
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"``: bf16 on CUDA GPUs that support it and on CPUs with native bf16, else fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}; use one of {PRECISIONS}.")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    return "fp32"


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()
