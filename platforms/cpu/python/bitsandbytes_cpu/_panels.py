"""Dense products against a quantized weight expanded panel by panel.

Above the fused kernels' row limits, ``A @ W^T`` (the forward products) and ``A @ W`` (the input
gradients) run as a dense GEMM on the expanded weight. The whole weight expanded at once costs a
buffer of its full size in the GEMM's dtype (235 MB in f32 for 4096x14336, kept per thread in
``_scratch``), written to memory and read back. Here it is expanded a panel at a time: rows of W
for ``A @ W^T``, columns of W for ``A @ W``, at most ``PANEL_BYTES`` (but never fewer than
``PANEL_MIN`` rows or columns, below which the narrow GEMMs lose more than the cache gains). Each
panel's product lands in its own columns of the output: every output element is the same sum as
with the whole weight (the GEMM may order it differently for a narrower panel, as it does for
another thread count: within the dense dtype's rounding).

The gain is memory: the thread's buffer holds one panel, 32 MiB for a 14336x4096 weight instead
of 235 MB in f32 (58 MB for 4096x14336: 1024 rows). Time is unchanged or better (the panel is
read back from the cache): AMX off, 2 threads, weights evicted, 64-256 rows, x0.76-1.04 of the
whole weight's time for the 4-bit products in bf16 and x0.94-1.05 in f32 (bench/RESULTS.md,
"Prefill in panels"). The int8 input gradient in bf16 is the exception: its columns read row by
row cost more than the panels gain (x1.06-1.50), so there the whole weight is expanded.
"""

from __future__ import annotations

from collections.abc import Callable
from math import gcd, lcm

import torch

from ._scratch import scratch

PANEL_BYTES = 32 << 20
"""The largest expanded panel, in bytes, unless ``PANEL_MIN`` rows or columns need more."""
PANEL_MIN = 1024
"""The fewest weight rows (or columns) in a panel (all of them when the weight has fewer)."""
PANEL_ALIGN = 64
"""Panels hold a multiple of this many rows (columns), so that the GEMMs see even sizes."""


def panel_width(count: int, length: int, itemsize: int, step: int = 1) -> int:
    """Weight rows (or columns) per panel, of ``count``, each ``length`` values of ``itemsize``
    bytes: a multiple of ``step`` (so that a panel holds whole quantization blocks) and of
    ``PANEL_ALIGN``, or all of them."""
    unit = lcm(step, PANEL_ALIGN)
    width = max(PANEL_MIN, PANEL_BYTES // max(1, length * itemsize))
    width = max(unit, width // unit * unit)
    return max(1, min(count, width))


def block_step(k: int, blocksize: int) -> int:
    """The fewest weight rows of ``k`` values that hold whole blocks of ``blocksize`` values."""
    return blocksize // gcd(k, blocksize)


def panelled_product(
    A2: torch.Tensor,
    count: int,
    expand: Callable[[int, int, torch.Tensor], None],
    *,
    transposed: bool = False,
    bias: torch.Tensor | None = None,
    step: int = 1,
) -> torch.Tensor:
    """``A2 @ W^T (+ bias)`` for A2 ``[m, k]`` and W ``[count, k]``, whose rows ``s0:s1``
    ``expand(s0, s1, panel)`` writes into ``panel`` (``[s1 - s0, k]``); or, ``transposed``,
    ``A2 @ W`` for A2 ``[m, n]`` and W ``[n, count]``, whose columns ``s0:s1`` it writes
    (``panel`` ``[n, s1 - s0]``). Panels are in A2's dtype, in this thread's reused buffer; the
    result is a new ``[m, count]`` tensor in A2's dtype."""
    m, length = A2.shape
    out = torch.empty(m, count, dtype=A2.dtype)
    width = panel_width(count, length, A2.element_size(), step)
    for s0 in range(0, count, width):
        s1 = min(count, s0 + width)
        panel = scratch((length, s1 - s0) if transposed else (s1 - s0, length), A2.dtype)
        expand(s0, s1, panel)
        cols = out if s1 - s0 == count else out[:, s0:s1]
        mat = panel if transposed else panel.t()
        if bias is None:
            torch.mm(A2, mat, out=cols)
        else:
            torch.addmm(bias[s0:s1], A2, mat, out=cols)
    return out
