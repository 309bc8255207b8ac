"""LLM.int8(): vector-wise quantization with outlier columns, the int8 GEMM and the fused
dequantizations, as Triton kernels + glue. Every result is bit for bit the reference's.

Row statistics, column statistics (with the outlier flags) and the quantization are three
kernels: a row's absmax needs the whole row and a column's flag the whole column, so each
reduction is owned by one program (rows by row programs, columns by column programs) and the
quantization runs after both (stream order). No two programs write one address: no atomics,
no order dependence.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bitsandbytes import _checks as C
from bitsandbytes.backends.reference.int8 import INV_127, INV_127_SQ

from ._launch import (
    LAUNCH,
    OUT_KIND,
    device_guard,
    mul_cpu_nan,
    mul_cpu_nan_scalar,
    nan_absmax,
    nan_max,
    round_half_even,
    store_float,
)
from ._launch import store_view as _store_view

BLOCK_R, BLOCK_C = 16, 256
"""Tile of the LLM.int8() row/column kernels."""


@triton.jit
def _masked_abs(x, threshold, HAS_T: tl.constexpr):
    ax = tl.abs(x)
    if HAS_T:
        ax = tl.where(ax >= threshold, 0.0, ax)  # outliers leave the statistics (NaN stays)
    return ax


@triton.jit
def _row_stats_kernel(A, row_stats, rows, cols, threshold, HAS_T: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr):
    r = tl.program_id(0) * BR + tl.arange(0, BR)
    rmask = r < rows
    amax = tl.zeros([BR], dtype=tl.float32)
    for c0 in range(0, cols, BC):
        c = c0 + tl.arange(0, BC)
        m = rmask[:, None] & (c < cols)[None, :]
        x = tl.load(A + r.to(tl.int64)[:, None] * cols + c[None, :], mask=m, other=0.0).to(tl.float32)
        amax = nan_max(amax, nan_absmax(_masked_abs(x, threshold, HAS_T), 1))
    tl.store(row_stats + r, amax, mask=rmask)


@triton.jit
def _col_stats_kernel(
    A, col_stats, flags, rows, cols, threshold, HAS_T: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr
):
    c = tl.program_id(0) * BC + tl.arange(0, BC)
    cmask = c < cols
    amax = tl.zeros([BC], dtype=tl.float32)
    flag = tl.zeros([BC], dtype=tl.int32)
    for r0 in range(0, rows, BR):
        r = r0 + tl.arange(0, BR)
        m = (r < rows)[:, None] & cmask[None, :]
        x = tl.load(A + r.to(tl.int64)[:, None] * cols + c[None, :], mask=m, other=0.0).to(tl.float32)
        if HAS_T:
            flag = flag | tl.max(((tl.abs(x) >= threshold) & m).to(tl.int32), axis=0)
        amax = nan_max(amax, nan_absmax(_masked_abs(x, threshold, HAS_T), 0))
    tl.store(col_stats + c, amax, mask=cmask)
    if HAS_T:
        tl.store(flags + c, flag.to(tl.uint8), mask=cmask)


@triton.jit
def _quant127(x, stat):
    """torch.round(x * (127 / stat)), 0 where stat == 0, clamped to +-127, NaN -> 0. The scale is
    torch's ``127.0 / stat``: ``reciprocal(stat) * 127``, two roundings."""
    v = x * (tl.math.div_rn(tl.full(stat.shape, 1.0, tl.float32), stat) * 127.0)
    v = tl.where(v > 128.0, 128.0, tl.where(v < -128.0, -128.0, v))  # NaN stays
    q = round_half_even(tl.where(v != v, 0.0, v))
    q = tl.where(q > 127.0, 127.0, tl.where(q < -127.0, -127.0, q))
    q = tl.where((stat == 0.0) | (v != v), 0.0, q)
    return q.to(tl.int8)


@triton.jit
def _quant_kernel(
    A,
    CA,
    CAt,
    row_stats,
    col_stats,
    flags,
    rows,
    cols,
    HAS_FLAGS: tl.constexpr,
    DO_COL: tl.constexpr,
    BR: tl.constexpr,
    BC: tl.constexpr,
):
    r = tl.program_id(0) * BR + tl.arange(0, BR)
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    m = (r < rows)[:, None] & (c < cols)[None, :]
    off = r.to(tl.int64)[:, None] * cols + c[None, :]
    x = tl.load(A + off, mask=m, other=0.0).to(tl.float32)
    rs = tl.load(row_stats + r, mask=r < rows, other=1.0)
    q = _quant127(x, rs[:, None])
    if HAS_FLAGS:
        zero = (tl.load(flags + c, mask=c < cols, other=0) != 0)[None, :]
        q = tl.where(zero, 0, q)
    tl.store(CA + off, q, mask=m)
    if DO_COL:
        cs = tl.load(col_stats + c, mask=c < cols, other=1.0)
        qt = _quant127(x, cs[None, :])
        if HAS_FLAGS:
            qt = tl.where(zero, 0, qt)
        tl.store(CAt + off, qt, mask=m)


def _quantize(A: torch.Tensor, threshold: float, with_cols: bool):
    C.check_dtype(A, "A", C.FLOAT_DTYPES)
    C.check(A.dim() >= 1, "bitsandbytes: A must have at least one dimension")
    if not (threshold >= 0.0):
        raise ValueError(f"bitsandbytes: threshold must be >= 0, got {threshold}")
    A = A.contiguous()
    cols = A.shape[-1]
    rows = C.int8_rows(A)
    dev = A.device
    has_t = threshold > 0.0
    CA = torch.zeros(A.shape, dtype=torch.int8, device=dev)
    CAt = torch.zeros(A.shape, dtype=torch.int8, device=dev) if with_cols else None
    row_stats = torch.zeros(rows, dtype=torch.float32, device=dev)
    col_stats = torch.zeros(cols, dtype=torch.float32, device=dev)
    flags = torch.zeros(cols, dtype=torch.uint8, device=dev)
    if rows and cols:
        t = float(threshold)
        with device_guard(A):
            _row_stats_kernel[(triton.cdiv(rows, BLOCK_R),)](A, row_stats, rows, cols, t, HAS_T=has_t,
                                                             BR=BLOCK_R, BC=BLOCK_C, **LAUNCH)  # fmt: skip
            if has_t or with_cols:
                _col_stats_kernel[(triton.cdiv(cols, BLOCK_C),)](A, col_stats, flags, rows, cols, t, HAS_T=has_t,
                                                                 BR=BLOCK_R, BC=BLOCK_C, **LAUNCH)  # fmt: skip
            grid = (triton.cdiv(rows, BLOCK_R), triton.cdiv(cols, BLOCK_C))
            _quant_kernel[grid](A, CA, CAt if CAt is not None else CA, row_stats, col_stats, flags, rows, cols,
                                HAS_FLAGS=has_t, DO_COL=with_cols, BR=BLOCK_R, BC=BLOCK_C, **LAUNCH)  # fmt: skip
    outlier_cols = torch.argwhere(flags).view(-1) if has_t else None
    return CA, CAt, row_stats, col_stats, outlier_cols


def int8_vectorwise_quant(
    A: torch.Tensor, threshold: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Row-wise absmax int8 quantization; columns holding any ``|A| >= threshold`` are outliers
    (zero in the result, left out of the statistics)."""
    CA, _, row_stats, _, outlier_cols = _quantize(A, threshold, with_cols=False)
    return CA, row_stats, outlier_cols


def int8_double_quant(
    A: torch.Tensor, threshold: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Row-wise and column-wise int8 quantization in one pass over A; outlier columns are zero in both."""
    CA, CAt, row_stats, col_stats, outlier_cols = _quantize(A, threshold, with_cols=True)
    return CA, CAt, row_stats, col_stats, outlier_cols  # type: ignore[return-value]


# ---- Dequantization -------------------------------------------------------------------------------


@triton.jit
def _vectorwise_dequant_kernel(A, stats, out, n, cols, scale, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    a = tl.load(A + i, mask=m, other=0).to(tl.float32)
    s = tl.load(stats + i // cols, mask=m, other=0.0)
    tl.store(out + i, mul_cpu_nan_scalar(mul_cpu_nan(a, s), scale), mask=m)


def int8_vectorwise_dequant(A: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
    """``A * stats[row] / 127`` as f32 (two roundings, as the reference)."""
    rows, cols = C.check_int8_vectorwise_dequant(A, stats)
    out = torch.empty(A.shape, dtype=torch.float32, device=A.device)
    n = out.numel()
    if n:
        with device_guard(A):
            _vectorwise_dequant_kernel[(triton.cdiv(n, 2048),)](
                A.contiguous(), stats.contiguous(), out, n, cols, INV_127, BLOCK=2048, **LAUNCH
            )
    return out


@triton.jit
def _mm_dequant_kernel(
    A, row_stats, col_stats, bias, out, rows, n, scale, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr, OUT: tl.constexpr
):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = i < rows * n
    c = i % n
    a = tl.load(A + i, mask=m, other=0).to(tl.float32)
    rc = mul_cpu_nan(tl.load(row_stats + i // n, mask=m, other=0.0), tl.load(col_stats + c, mask=m, other=0.0))
    v = mul_cpu_nan_scalar(mul_cpu_nan(a, rc), scale)
    if HAS_BIAS:
        v = v + tl.load(bias + c, mask=m, other=0.0).to(tl.float32)
    store_float(out + i, v, m, OUT)


def int8_mm_dequant(
    A: torch.Tensor,
    row_stats: torch.Tensor,
    col_stats: torch.Tensor,
    dtype: torch.dtype | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``A * (row_stats[:, None] * col_stats[None, :]) / 127**2 (+ bias)`` in ``dtype`` (default f16)."""
    rows, n = C.check_int8_mm_dequant(A, row_stats, col_stats, dtype, bias)
    if bias is not None and bias.dtype not in C.FLOAT_DTYPES:
        bias = bias.float()  # added in f32, as the reference does
    C.check_same_device({"A": A, "row_stats": row_stats, "col_stats": col_stats, "bias": bias})
    dtype = dtype or torch.float16
    out = torch.empty(A.shape, dtype=dtype, device=A.device)
    if out.numel():
        b = bias.contiguous() if bias is not None else row_stats
        with device_guard(A):
            _mm_dequant_kernel[(triton.cdiv(out.numel(), 2048),)](
                A.contiguous(), row_stats.contiguous(), col_stats.contiguous(), b, _store_view(out), rows, n,
                INV_127_SQ, HAS_BIAS=bias is not None, BLOCK=2048, OUT=OUT_KIND[dtype], **LAUNCH,
            )  # fmt: skip
    return out


# ---- int8 GEMM ----------------------------------------------------------------------------------


@triton.jit
def _int8_matmul_kernel(A, B, out, M, N, K, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    # out[m, n] = sum_k A[m, k] * B[n, k] with int32 accumulation (exact: tl.dot of int8 tiles).
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    rn = tl.program_id(1) * BN + tl.arange(0, BN)
    acc = tl.zeros([BM, BN], dtype=tl.int32)
    for k0 in range(0, K, BK):
        rk = k0 + tl.arange(0, BK)
        a = tl.load(A + rm.to(tl.int64)[:, None] * K + rk[None, :], mask=(rm < M)[:, None] & (rk < K)[None, :], other=0)
        b = tl.load(B + rn.to(tl.int64)[:, None] * K + rk[None, :], mask=(rn < N)[:, None] & (rk < K)[None, :], other=0)
        acc += tl.dot(a, tl.trans(b), out_dtype=tl.int32)
    tl.store(out + rm.to(tl.int64)[:, None] * N + rn[None, :], acc, mask=(rm < M)[:, None] & (rn < N)[None, :])


_INT_MM_FAILED: set[str] = set()
"""Device types where torch._int_mm raised once (then the Triton kernel serves them)."""


def _int_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor | None:
    """torch._int_mm (exact int32 accumulation) where this torch build has it for the device and
    the shape suits it (more than 16 rows, K and N multiples of 8); None otherwise. CPU tensors
    (the interpreter runs) always take the Triton kernel, so that the kernel is what the tests see."""
    kind = a.device.type
    m, k = a.shape
    n = b.shape[0]
    if kind == "cpu" or kind in _INT_MM_FAILED or not hasattr(torch, "_int_mm"):
        return None
    if m <= 16 or k % 8 or n % 8 or k < 16:
        return None
    try:
        return torch._int_mm(a, b.t())
    except (RuntimeError, NotImplementedError):
        _INT_MM_FAILED.add(kind)
        return None


def _check_int8_matmul(A: torch.Tensor, B: torch.Tensor) -> None:
    C.check_dtype(A, "A", (torch.int8,))
    C.check_dtype(B, "B", (torch.int8,))
    C.check(B.dim() == 2, f"bitsandbytes: B must be 2-D [N, K], got shape {tuple(B.shape)}")
    C.check_has_dim(A, "A")
    C.check(
        A.shape[-1] == B.shape[1],
        f"bitsandbytes: A's last dimension ({A.shape[-1]}) must equal B.shape[1] ({B.shape[1]})",
    )
    C.check_same_device({"A": A, "B": B})


def _int8_matmul_into(A: torch.Tensor, B: torch.Tensor, out: torch.Tensor) -> None:
    n, k = B.shape
    if out.numel() == 0:
        return
    if k == 0:
        out.zero_()
        return
    a = A.reshape(-1, k).contiguous()
    m = out.numel() // n
    b = B.contiguous()
    fast = _int_mm(a, b)
    if fast is not None:
        out.view(m, n).copy_(fast)
        return
    with device_guard(A):
        _int8_matmul_kernel[(triton.cdiv(m, 32), triton.cdiv(n, 32))](a, b, out, m, n, k, BM=32, BN=32, BK=64, **LAUNCH)


def int8_linear_matmul(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Exact ``A @ B.T`` of int8 matrices with int32 accumulation."""
    _check_int8_matmul(A, B)
    out = torch.empty((*A.shape[:-1], B.shape[0]), dtype=torch.int32, device=A.device)
    _int8_matmul_into(A, B, out)
    return out


def int8_linear_matmul_out(A: torch.Tensor, B: torch.Tensor, out: torch.Tensor) -> None:
    """``int8_linear_matmul`` into a preallocated int32 ``out``."""
    _check_int8_matmul(A, B)
    C.check_out(out, (*A.shape[:-1], B.shape[0]), torch.int32)
    C.check_same_device({"A": A, "out": out})
    if out.is_contiguous() and not C.may_overlap_any(out, A, B):
        _int8_matmul_into(A, B, out)
    else:
        out.copy_(int8_linear_matmul(A, B))


def int8_scaled_mm(
    A: torch.Tensor,
    B: torch.Tensor,
    row_stats: torch.Tensor,
    col_stats: torch.Tensor,
    bias: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """int8 GEMM, then the fused dequantization (+ bias)."""
    return int8_mm_dequant(int8_linear_matmul(A, B), row_stats, col_stats, dtype=dtype or torch.float16, bias=bias)


def int8_mixed_scaled_mm(
    A: torch.Tensor,
    CA: torch.Tensor,
    CB: torch.Tensor,
    SCA: torch.Tensor,
    SCB: torch.Tensor,
    outlier_cols: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """LLM.int8() with outlier decomposition: the int8 GEMM + dequantization, then the outlier
    columns in A's precision (torch's addmm on the few gathered columns, as the reference)."""
    a = C.int8_matrix(A)
    outliers = outlier_cols is not None and outlier_cols.numel() > 0
    if outliers:
        C.check_outlier_cols(outlier_cols, CB.shape[1])
    out = int8_scaled_mm(CA, CB, SCA, SCB, bias=bias, dtype=A.dtype)
    if not outliers:
        return out, a.new_empty(a.shape[0], 0)
    sub_a = a[:, outlier_cols]
    sub_b = int8_vectorwise_dequant(CB[:, outlier_cols].contiguous(), SCB).to(A.dtype)
    out2 = out.reshape(-1, out.shape[-1]).addmm(sub_a, sub_b.t())
    return out2.view(out.shape), sub_a
