"""Dense products against a quantized weight expanded panel by panel.

Above the fused kernels' row limits, ``A @ W^T`` runs as a dense GEMM on the expanded weight. The
whole weight expanded at once costs a buffer of its full size in the GEMM's dtype (235 MB in f32
for 4096x14336, kept per thread in ``_scratch``), written to memory and read back. Here it is
expanded ``rows`` weight rows at a time into a panel of at most ``PANEL_BYTES`` (but never fewer
than ``PANEL_MIN_ROWS`` rows, below which the narrow GEMMs lose more than the cache gains), and
each panel's product lands in its own columns of the output: every output element is the same
sum as with the whole weight (the GEMM may order it differently for a narrower panel, as it does
for another thread count: within the dense dtype's rounding).

The gain is memory (the buffer holds one panel: for a 14336x4096 weight 16 MiB instead of 235 MB in f32; for
4096x14336, 1024 rows, 58 MB)
and time, since each panel is read back from the cache rather than from memory; the figures are in
bench/RESULTS.md ("Prefill in panels"), measured with ``bench/cpu_finetune.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from math import gcd

import torch

from ._scratch import scratch

PANEL_BYTES = 16 << 20
"""The largest expanded panel, in bytes, unless ``PANEL_MIN_ROWS`` rows need more."""
PANEL_MIN_ROWS = 1024
"""The fewest weight rows in a panel (the whole weight when it has fewer)."""


def panel_rows(n: int, k: int, itemsize: int, step: int = 1) -> int:
    """Weight rows per panel for an ``[n, k]`` weight expanded to ``itemsize`` bytes per value: a
    multiple of ``step`` (so that a panel starts on a quantization block), or all ``n``."""
    rows = max(PANEL_MIN_ROWS, PANEL_BYTES // max(1, k * itemsize))
    rows = max(step, rows // step * step)
    return max(1, min(n, rows))


def block_step(k: int, blocksize: int) -> int:
    """The fewest weight rows of ``k`` values that hold whole blocks of ``blocksize`` values."""
    return blocksize // gcd(k, blocksize)


def panelled_linear(
    A2: torch.Tensor,
    n: int,
    expand: Callable[[int, int, torch.Tensor], None],
    bias: torch.Tensor | None = None,
    step: int = 1,
) -> torch.Tensor:
    """``A2 @ W^T (+ bias)`` for A2 ``[m, k]`` and an ``[n, k]`` weight W that ``expand(r0, r1, panel)``
    writes, rows ``r0:r1``, into ``panel`` (``[r1 - r0, k]`` in A2's dtype). The panels live in
    this thread's reused buffer; the result is a new ``[m, n]`` tensor in A2's dtype."""
    m, k = A2.shape
    out = torch.empty(m, n, dtype=A2.dtype)
    rows = panel_rows(n, k, A2.element_size(), step)
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        panel = scratch((r1 - r0, k), A2.dtype)
        expand(r0, r1, panel)
        cols = out if r1 - r0 == n else out[:, r0:r1]
        if bias is None:
            torch.mm(A2, panel.t(), out=cols)
        else:
            torch.addmm(bias[r0:r1], A2, panel.t(), out=cols)
    return out
