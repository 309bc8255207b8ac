"""The panel path of the matmuls against a weight kept quantized (bf16 activations): AMX, or its
AVX512-BF16 dot-product form on CPUs without AMX.

On CPUs with AMX-BF16 (Intel Xeon from Sapphire Rapids on) the native library multiplies bf16
activations by a 4-bit or int8 weight on the tile unit, expanding the weight range by range
(64 to 256 rows, a slice of k) into a panel that stays in the core's L2 (``bnb_cpu_weight_matmul_amx``): the dequantized
weight never goes to memory, so prefill-sized batches cost about what a dense bf16 GEMM costs
(bench/RESULTS.md). The panel holds exactly the values ``dequantize_4bit`` (or ``CB`` as floats)
gives, the products are summed in f32, the int8 row scales and the bias are applied to the f32
sum, and the result is rounded to bf16 once.

On CPUs whose avx512 kernel table runs without AMX (AMD Zen 4, Intel Xeons before Sapphire Rapids:
every CPU the table runs on has AVX512-BF16), the same panels, layouts and passes multiply with
``vdpbf16ps``, 16 products of bf16 pairs per instruction, twice the f32 FMA's rate: from
``DOTS_MIN_ROWS`` rows the forward products beat oneDNN's bf16 GEMM on the dense weight, which reads
four times the weight's bytes (bench/RESULTS.md). ``panel_dots()`` tells which form runs.

``set_amx(False)`` in ``bitsandbytes_cpu._C`` (or ``BNB_CPU_AMX=0`` in the environment) turns the
path off (both forms); it is off whenever another instruction set than avx512 is forced.
"""

from __future__ import annotations

import torch

from . import _C
from ._codes import DTYPE_CODE, QUANT_CODE

MIN_ROWS = {"gemm_4bit": 5, "int8_weight_mm": 10, "int8_weight_mm_t": 6, "gemm_4bit_t": 4}
"""Rows of A from which the AMX path replaces the fused kernels: the crossovers measured at
4096x4096 bf16, 2 threads, weights from memory (bench/RESULTS.md). Below them the fused kernels,
which read the weight once for all rows without expanding it, win."""


MAX_ROWS = {"gemm_4bit": 512, "int8_weight_mm": 1 << 62, "int8_weight_mm_t": 512, "gemm_4bit_t": 256}
"""Rows of A up to which the AMX path runs. The native code takes A 256 rows at a time and expands
the weight once per pass. Measured at 512 rows (2 threads, weights from memory, 2048x2048,
5632x2048, 2048x5632, 4096x4096 and 4096x14336 bf16): two passes beat the dequantized weight +
oneDNN's GEMM by 8-25 % for the 4-bit forward and up to 35 % for the int8 input gradient; the 4-bit
input gradient gains on three of the five shapes and loses on two, so it stays at one pass; at 1024
rows the 4-bit forward is at parity. The int8 forward has no dense alternative of its own (int8 has
no fast expansion into a dense GEMM), so it always runs here."""


DOTS_MIN_ROWS = {"gemm_4bit": 25, "int8_weight_mm": 17, "int8_weight_mm_t": 17, "gemm_4bit_t": 13}
"""On CPUs without AMX (AMD Zen 4 among them) the panel path multiplies with AVX512-BF16 dot products
(``vdpbf16ps``) in the tile unit's layout, from these rows of A up to ``DOTS_MAX_ROWS``: below, the
fused kernels win. Measured on a Zen 4 (2 threads, weights from memory, 4096x4096 and 4096x14336
bf16; bench/RESULTS.md): the 4-bit forward's fused kernel wins up to 16 / 24 rows and loses from 24 /
32; the int8 forward's up to 12-16 rows; the input gradients' SIMD kernels up to 12 (4-bit) and 16
(int8) rows."""

DOTS_MAX_ROWS = {"gemm_4bit": 512, "int8_weight_mm": 1 << 62, "int8_weight_mm_t": 256, "gemm_4bit_t": 256}
"""Rows of A up to which the dot-product form runs; above, oneDNN's GEMM on the weight expanded
panel by panel. The forwards are at parity with it at 512 rows (the int8 forward, which has no fast
dense alternative, always runs here); the input gradients lose to it from 512 rows (4096x14336: 4-bit
182 against 168 ms, int8 179 against 165)."""


FIXED_POINT_ROWS = 7
"""Rows of A up to which ``gemm_4bit`` at block size 64 with k a multiple of 128 keeps the fused
kernel, which the avx512 table runs in 16-bit fixed point (``vpdpwssd``) for up to 8 bf16 rows.
4096x4096 bf16, 2 threads, layers streamed from memory (bench/RESULTS.md): 5 rows 0.80-0.84 ms
against AMX's 1.37-1.48, 7 rows 1.12-1.13 against 1.44-1.46; with the weight in cache 7 rows are
at parity and at 8 rows AMX is faster (0.98 against 1.23 ms)."""


def fused_rows(k: int, blocksize: int) -> int:
    """The most rows of A for which ``gemm_4bit`` (W ``[n, k]``) keeps the fused kernel on AMX
    machines."""
    return FIXED_POINT_ROWS if blocksize == 64 and k % 128 == 0 else MIN_ROWS["gemm_4bit"] - 1


def eligible(op: str, A: torch.Tensor, rows: int, k: int, blocksize: int | None = None) -> bool:
    """Whether ``op`` takes the panel path for A (``rows`` rows; W ``[n, k]``) and, for 4-bit,
    ``blocksize``: on the AMX tile unit, or on CPUs without AMX with AVX512-BF16 dot products
    (``DOTS_MIN_ROWS``). The forward ops need k (the sum's length) to be a multiple of 32."""
    if not (
        A.dtype == torch.bfloat16
        and (k % 32 == 0 or op.endswith("_t"))
        and (blocksize is None or k % blocksize == 0)
        and _C.panel_usable()
    ):
        return False
    if _C.panel_dots():
        return DOTS_MIN_ROWS[op] <= rows <= DOTS_MAX_ROWS[op]
    if op == "gemm_4bit" and blocksize is not None and rows <= fused_rows(k, blocksize):
        return False
    return MIN_ROWS[op] <= rows <= MAX_ROWS[op]


def weight_matmul(
    A2: torch.Tensor,
    n: int,
    k: int,
    *,
    CB: torch.Tensor | None = None,
    SCB: torch.Tensor | None = None,
    B: torch.Tensor | None = None,
    absmax: torch.Tensor | None = None,
    quant_type: str = "nf4",
    blocksize: int = 0,
    bias: torch.Tensor | None = None,
    transposed: bool = False,
    nthreads: int = 0,
) -> torch.Tensor:
    """bf16 ``A2 @ W^T (+ bias)`` for bf16 ``A2`` ``[rows, k]``, or with ``transposed`` ``A2 @ W``
    for ``A2`` ``[rows, n]`` (int8: A2's columns scaled by ``SCB / 127`` and rounded to bf16 first,
    no bias), W ``[n, k]`` given as int8 rows (``CB``, ``SCB``) or packed 4-bit (``B``, ``absmax``,
    ``quant_type``, ``blocksize``). Arguments are already checked by the caller."""
    A2 = A2.contiguous()
    out = torch.empty(A2.shape[0], k if transposed else n, dtype=torch.bfloat16)
    ptrs = tuple(0 if t is None else t.data_ptr() for t in (CB, SCB, B, absmax))
    weight = (*ptrs, QUANT_CODE[quant_type], blocksize)
    if transposed:
        _C.weight_matmul_t_amx(A2.data_ptr(), A2.shape[0], n, k, *weight, out.data_ptr(), nthreads)
        return out
    if bias is not None:
        bias = bias.contiguous()  # kept referenced until the call returns
    bias_args = (0, 2) if bias is None else (bias.data_ptr(), DTYPE_CODE[bias.dtype])
    _C.weight_matmul_amx(A2.data_ptr(), A2.shape[0], n, k, *weight, *bias_args, out.data_ptr(), nthreads)
    return out
