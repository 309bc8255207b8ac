"""CPU kernels of the matmuls against a weight kept quantized (op interface version 2).

``int8_weight_mm``: ``A @ (CB * SCB / 127)^T + bias``, the forward of LLM.int8()'s training path;
``int8_weight_mm_t``: ``A @ (CB * SCB / 127)``, its input gradient; ``gemm_4bit_t``:
``A @ dequantize_4bit(B)``, QLoRA's input gradient. Up to ``FUSED_ROWS`` rows of A the native
kernels read the quantized weight directly and sum in f32 (no dequantized copy). Above, where a
dense GEMM (AMX or AVX-512 in oneDNN) is worth its setup, the weight is expanded panel by panel
(rows for the forward, columns for the input gradients; ``_panels``) into this thread's reused
buffer (``_scratch``; never fresh memory per call) and multiplied densely: int8 values are exact
in every float dtype, so the int8 paths multiply by the row scales on the small side (the output's
columns, or A's columns for the transposed product).

Results equal the reference (dequantize into A's dtype, then matmul) within A's dtype rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from bitsandbytes import _checks as C
from bitsandbytes.backends.reference.int8 import INV_127
from bitsandbytes.backends.reference.weight_mm import empty_product

from . import _C, amx
from ._codes import DTYPE_CODE, QUANT_CODE
from ._panels import panelled_product
from ._scratch import scratch
from .kernels import _dequantize_4bit_into, _f32, _nt, _on_cpu, dense_dtype

FUSED_ROWS: dict[str, dict[str, int]] = {
    "avx512": {"int8_weight_mm": 16, "int8_weight_mm_t": 16, "gemm_4bit_t": 16},
    "avx2": {"int8_weight_mm": 96, "int8_weight_mm_t": 16, "gemm_4bit_t": 16},
    "neon": {"int8_weight_mm": 1, "int8_weight_mm_t": 4, "gemm_4bit_t": 2},
    "scalar": {"int8_weight_mm": 0, "int8_weight_mm_t": 0, "gemm_4bit_t": 0},
}
"""Per instruction set, the rows of A up to which the fused kernels run; dequantize + dense GEMM
above (bf16 activations take the panel path first where ``amx.eligible`` says so). Crossovers
measured at 4096x4096, 2 threads, weights evicted (bench/RESULTS.md): avx512 against oneDNN's GEMM
(a Xeon with AMX; the input gradients on an AMD Zen 4, where the SIMD kernels up to 16 rows, their
limit, take x0.3-0.45 of the dense path's time in f32 and f16), avx2 against the f32 GEMM that
``dense_dtype`` picks there (an AMD EPYC, Zen 3). The kernels of the int8 weight and of the input
gradients are hand-written for AVX-512 and AVX2 (weight_matmul_simd.h); every NEON kernel is the
compiler-vectorized portable one. The NEON row is not measured (no Arm machine here; qemu times
nothing): it takes the portable kernels' crossovers seen on x86."""


def _fused(op: str, rows: int) -> bool:
    return rows <= FUSED_ROWS.get(_C.get_isa(), FUSED_ROWS["avx2"])[op]


def _expanded_weight(A: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """An uninitialised ``[n, k]`` buffer for the expanded weight, in the dtype the dense GEMM runs
    in (``dense_dtype``: A's, or f32 where torch has no fast GEMM in A's dtype; the result is
    rounded to A's dtype once). This thread's reused buffer, unless gradients are on for A in a
    direct call (not through torch.ops, which runs below autograd): autograd would then save it
    for backward."""
    dtype = dense_dtype(A.dtype)
    return torch.empty((n, k), dtype=dtype) if _keeps_weight(A) else scratch((n, k), dtype)


def _keeps_weight(A: torch.Tensor) -> bool:
    """Whether autograd would save the expanded weight: gradients on for A in a direct call."""
    return torch.is_grad_enabled() and A.requires_grad


def _expand_int8(A: torch.Tensor, CB: torch.Tensor) -> torch.Tensor:
    """CB as floats for the dense GEMM (exact), expanded by the native kernel on every thread."""
    n, k = CB.shape
    W = _expanded_weight(A, n, k)
    _C.int8_expand(CB.data_ptr(), n * k, W.data_ptr(), DTYPE_CODE[W.dtype], _nt())
    return W


def int8_weight_mm(
    A: torch.Tensor, CB: torch.Tensor, SCB: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``A @ (CB * SCB / 127)^T + bias`` in A's dtype, for A ``[..., K]`` and CB ``[N, K]``."""
    n, k = C.check_int8_weight_mm(A, CB, SCB, bias)
    _on_cpu(A=A, CB=CB, SCB=SCB, **({} if bias is None else {"bias": bias}))
    if A.numel() == 0 or n == 0:  # before the reshape, which an empty A's last dimension of 0 defeats
        return empty_product(A, n, bias)
    A2 = A.reshape(-1, k)
    CB, SCB = CB.contiguous(), SCB.contiguous()
    if amx.eligible("int8_weight_mm", A, A2.shape[0], k):
        out = amx.weight_matmul(A2, n, k, CB=CB, SCB=SCB, bias=bias, nthreads=_nt())
        return out.view(*A.shape[:-1], n)
    if not _fused("int8_weight_mm", A2.shape[0]):
        if _keeps_weight(A):
            out = torch.nn.functional.linear(A2.to(dense_dtype(A.dtype)), _expand_int8(A, CB))
        else:

            def expand(r0: int, r1: int, panel: torch.Tensor) -> None:
                _C.int8_expand(CB.data_ptr() + r0 * k, (r1 - r0) * k, panel.data_ptr(), DTYPE_CODE[panel.dtype], _nt())

            out = panelled_product(A2.to(dense_dtype(A.dtype)), n, expand)
        out.mul_(SCB * INV_127)
        if bias is not None:
            out.add_(bias)
        return out.to(A.dtype).view(*A.shape[:-1], n)
    A2 = A2.contiguous()
    out = torch.empty(A2.shape[0], n, dtype=A.dtype)
    if bias is not None:
        bias = bias.contiguous()
    _C.int8_weight_matmul(
        A2.data_ptr(),
        DTYPE_CODE[A.dtype],
        A2.shape[0],
        n,
        k,
        CB.data_ptr(),
        SCB.data_ptr(),
        0 if bias is None else bias.data_ptr(),
        0 if bias is None else DTYPE_CODE[bias.dtype],
        out.data_ptr(),
        _nt(),
    )
    return out.view(*A.shape[:-1], n)


def _column_panels(
    n: int,
    k: int,
    *,
    CB: torch.Tensor | None = None,
    B: torch.Tensor | None = None,
    absmax: torch.Tensor | None = None,
    quant_type: str = "nf4",
    blocksize: int = 0,
) -> Callable[[int, int, torch.Tensor], None]:
    """The expansion of columns ``c0:c1`` of the weight ``[n, k]`` (int8 rows CB, scales not
    applied, or packed 4-bit B with f32 absmax; all contiguous) into a panel, for ``panelled_product``."""

    def expand(c0: int, c1: int, panel: torch.Tensor) -> None:
        _C.expand_columns(
            0 if CB is None else CB.data_ptr(),
            0 if B is None else B.data_ptr(),
            0 if absmax is None else absmax.data_ptr(),
            QUANT_CODE[quant_type],
            blocksize,
            n,
            k,
            c0,
            c1,
            panel.data_ptr(),
            DTYPE_CODE[panel.dtype],
            _nt(),
        )

    return expand


def _fused_t(A2: torch.Tensor, n: int, k: int, weight: tuple[int, ...]) -> torch.Tensor:
    A2 = A2.contiguous()
    out = torch.empty(A2.shape[0], k, dtype=A2.dtype)
    _C.weight_matmul_t(A2.data_ptr(), DTYPE_CODE[A2.dtype], A2.shape[0], n, k, *weight, out.data_ptr(), _nt())
    return out


def int8_weight_mm_t(A: torch.Tensor, CB: torch.Tensor, SCB: torch.Tensor) -> torch.Tensor:
    """``A @ (CB * SCB / 127)`` in A's dtype, for A ``[..., N]`` and CB ``[N, K]``."""
    n, k = C.check_int8_weight_mm(A, CB, SCB, transposed=True)
    _on_cpu(A=A, CB=CB, SCB=SCB)
    if A.numel() == 0 or k == 0:  # before the reshape, which an empty A's last dimension of 0 defeats
        return empty_product(A, k)
    A2 = A.reshape(-1, n)
    CB, SCB = CB.contiguous(), SCB.contiguous()
    if amx.eligible("int8_weight_mm_t", A, A2.shape[0], k):
        return amx.weight_matmul(A2, n, k, CB=CB, SCB=SCB, transposed=True, nthreads=_nt()).view(*A.shape[:-1], k)
    if not _fused("int8_weight_mm_t", A2.shape[0]):
        A2 = (A2 * (SCB * INV_127)).to(dense_dtype(A.dtype))
        # In bf16, int8 columns read row by row cost more than panels gain (``_panels``).
        if _keeps_weight(A) or A2.dtype != torch.float32:
            out = (A2 @ _expand_int8(A, CB)).to(A.dtype)
        else:
            out = panelled_product(A2, k, _column_panels(n, k, CB=CB), transposed=True).to(A.dtype)
    else:
        out = _fused_t(A2, n, k, (CB.data_ptr(), SCB.data_ptr(), 0, 0, 0, 0))
    return out.view(*A.shape[:-1], k)


def gemm_4bit_t(
    A: torch.Tensor, B: torch.Tensor, shapeB: Sequence[int], absmax: torch.Tensor, blocksize: int, quant_type: str
) -> torch.Tensor:
    """``A @ W`` in A's dtype, W the 4-bit weight of ``shapeB`` = ``[N, K]`` packed in B."""
    n, k = C.check_gemm_4bit_t(A, B, shapeB, absmax, blocksize, quant_type)
    _on_cpu(A=A, B=B, absmax=absmax)
    if A.numel() == 0 or k == 0:  # before the reshape, which an empty A's last dimension of 0 defeats
        return empty_product(A, k)
    A2 = A.reshape(-1, n)
    B, absmax = B.contiguous(), absmax.contiguous()
    if amx.eligible("gemm_4bit_t", A, A2.shape[0], k, blocksize):
        out = amx.weight_matmul(
            A2,
            n,
            k,
            B=B.view(torch.uint8),
            absmax=absmax,
            quant_type=quant_type,
            blocksize=blocksize,
            transposed=True,
            nthreads=_nt(),
        )
        return out.view(*A.shape[:-1], k)
    if not _fused("gemm_4bit_t", A2.shape[0]):
        A2 = A2.to(dense_dtype(A.dtype))
        if _keeps_weight(A) or k % blocksize:  # (column panels need whole blocks in each row)
            W = _expanded_weight(A, n, k)
            _dequantize_4bit_into(B, absmax, blocksize, quant_type, W)
            out = (A2 @ W).to(A.dtype)
        else:
            expand = _column_panels(
                n, k, B=B.view(torch.uint8), absmax=_f32(absmax), quant_type=quant_type, blocksize=blocksize
            )
            out = panelled_product(A2, k, expand, transposed=True, step=blocksize).to(A.dtype)
    else:
        weight = (0, 0, B.data_ptr(), absmax.data_ptr(), QUANT_CODE[quant_type], blocksize)
        out = _fused_t(A2, n, k, weight)
    return out.view(*A.shape[:-1], k)


KERNELS = {"int8_weight_mm": int8_weight_mm, "int8_weight_mm_t": int8_weight_mm_t, "gemm_4bit_t": gemm_4bit_t}
