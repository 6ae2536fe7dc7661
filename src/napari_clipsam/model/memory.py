"""Free heap memory back to the system between the large steps of a CPU pass.

glibc's malloc keeps memory that tensors of a few MB freed inside its heap, where later
tensors of other sizes fit it badly: over one vit_b encoder pass at 1024 px the resident
set crept up by about 100 MB this way, on top of what the pass needs at once.
:func:`release_free_memory` (``malloc_trim``) returns those free pages after each encoder
block and each predictor stage. It costs a few milliseconds a call and no measurable time
per pass; the peak of a guided vit_b pass fell by 30-60 MB
(``python benchmarks/bench_inference.py``, issue 12). Where the C library is not glibc it
does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
from typing import Callable

import torch


@functools.lru_cache(maxsize=1)
def _trim():
    """glibc's ``malloc_trim``, or None where the C library has none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_free_memory() -> bool:
    """Return the heap's free pages to the system; True where that was done (glibc)."""
    trim = _trim()
    if trim is None:
        return False
    trim(0)
    return True


def in_parts(function: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, dim: int, step: int) -> torch.Tensor:
    """``function(x)`` for a function that treats the slices of ``x`` along ``dim`` each on its own.

    It runs on ``step`` slices at a time, each result written into one output, so that
    its intermediate tensors are a fraction of the whole (the same values; autograd works).
    """
    size = x.shape[dim]
    if step >= size:
        return function(x)
    out = None
    for start in range(0, size, step):
        part = function(x.narrow(dim, start, min(step, size - start)))
        if out is None:
            shape = list(part.shape)
            shape[dim] = size
            out = part.new_empty(shape)
        out.narrow(dim, start, part.shape[dim]).copy_(part)
    return out
