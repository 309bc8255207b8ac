"""A per-thread buffer for a temporary the kernels would otherwise allocate on every call.

A new tensor of 32 MiB or more is fresh mmap'd memory (glibc serves such requests with mmap and
unmaps them on free), and the OS zeroes each of its pages on first touch, which costs more than
writing the data. The expanded weight of the dense products above the fused kernels' rows (gemm_4bit's prefill
path: dequantize, then a dense GEMM) is such a temporary: it goes into a buffer instead, one per
thread and dtype, kept for the thread's lifetime and grown to the largest request it has seen
(4096x4096 bf16 batch 64 on 2 threads: 12.5-16.0 -> 7.0-7.3 ms, dense bf16 6.0 ms). The products
ask for one panel of the weight at a time (``_panels``). ``BNB_CPU_SCRATCH=0`` in the
environment when the package is imported turns reuse off.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence

import torch

ENABLED = os.environ.get("BNB_CPU_SCRATCH", "1") != "0"
_LOCAL = threading.local()


def scratch(shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialized tensor of ``shape`` and ``dtype`` in this thread's buffer (a new tensor when
    reuse is off), valid until the next call from the same thread."""
    if not ENABLED:
        return torch.empty(shape, dtype=dtype)
    n = math.prod(shape)
    bufs = getattr(_LOCAL, "bufs", None)
    if bufs is None:
        bufs = _LOCAL.bufs = {}
    buf = bufs.get(dtype)
    if buf is None or buf.numel() < n:
        bufs.pop(dtype, None)  # the old buffer goes before the new one is allocated
        with torch.inference_mode(False):  # a normal tensor even when first asked for in inference mode
            buf = bufs[dtype] = torch.empty(n, dtype=dtype)
    return buf[:n].view(shape)
