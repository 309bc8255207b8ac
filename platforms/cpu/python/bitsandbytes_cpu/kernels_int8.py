"""Python glue of the LLM.int8() ops: row quantization with outlier columns, the int8 GEMM and its
dequantization, and the fused and outlier-decomposing forms of the two (see ``kernels``)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from bitsandbytes import _checks as C
from bitsandbytes.backends.reference.int8 import INV_127

from . import _C
from ._codes import DTYPE_CODE
from .kernels import _dequantize_blockwise_into, _nt, _on_cpu


def int8_vectorwise_quant(
    A: torch.Tensor, threshold: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Row-wise absmax int8 quantization with outlier columns (``|A| >= threshold``)."""
    if not (A.dtype in C.FLOAT_DTYPES and A.dim() >= 1 and threshold >= 0.0 and A.is_cpu):
        C.check_dtype(A, "A", C.FLOAT_DTYPES)
        C.check(A.dim() >= 1, "bitsandbytes: A must have at least one dimension")
        if not (threshold >= 0.0):
            raise ValueError(f"bitsandbytes: threshold must be >= 0, got {threshold}")
        _on_cpu(A=A)
    A = A.contiguous()
    cols = A.shape[-1]
    rows = C.int8_rows(A)
    out = torch.empty(A.shape, dtype=torch.int8)
    filled = rows and cols  # the kernel writes every statistic and flag
    row_stats = (torch.empty if filled else torch.zeros)(rows, dtype=torch.float32)
    flags = (torch.empty if filled else torch.zeros)(cols, dtype=torch.uint8) if threshold > 0.0 else None
    flagged = 0
    if filled:
        flagged = _C.int8_vectorwise_quant(
            A.data_ptr(),
            DTYPE_CODE[A.dtype],
            rows,
            cols,
            float(threshold),
            out.data_ptr(),
            row_stats.data_ptr(),
            flags.data_ptr() if flags is not None else 0,
            _nt(),
        )
    if flags is None:
        return out, row_stats, None
    # Finding the flagged columns costs more than the quantization of a decoded token's row.
    outlier_cols = torch.argwhere(flags).view(-1) if flagged else torch.empty(0, dtype=torch.int64)
    return out, row_stats, outlier_cols


def int8_double_quant(
    A: torch.Tensor, threshold: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Row-wise and column-wise int8 quantization; outlier columns are zero in both. The column
    part is the native row quantization of the transpose (the same formula per column), with the
    outlier elements masked out of the column maxima first (their columns are zeroed after)."""
    CA, row_stats, outlier_cols = int8_vectorwise_quant(A, threshold)
    rows2d = C.int8_matrix(A)
    outliers = outlier_cols is not None and outlier_cols.numel() > 0
    src = rows2d.masked_fill(rows2d.float().abs() >= threshold, 0.0) if outliers else rows2d
    CAt_t, col_stats, _ = int8_vectorwise_quant(src.t().contiguous(), 0.0)
    CAt = CAt_t.t().contiguous()
    if outliers:
        CAt[:, outlier_cols] = 0
    return CA, CAt.view(A.shape), row_stats, col_stats, outlier_cols


def _check_int8_matmul(A: torch.Tensor, B: torch.Tensor) -> None:
    C.check_dtype(A, "A", (torch.int8,))
    C.check_dtype(B, "B", (torch.int8,))
    if B.dim() != 2:
        raise ValueError(f"bitsandbytes: B must be 2-D [N, K], got shape {tuple(B.shape)}")
    C.check_has_dim(A, "A")
    if A.shape[-1] != B.shape[1]:
        raise ValueError(f"bitsandbytes: A's last dimension ({A.shape[-1]}) must equal B.shape[1] ({B.shape[1]})")
    _on_cpu(A=A, B=B)


def _int8_matmul_into(A: torch.Tensor, B: torch.Tensor, out: torch.Tensor) -> None:
    A, B = A.contiguous(), B.contiguous()
    k = B.shape[1]
    rows = A.numel() // k if k else out.numel() // max(B.shape[0], 1)
    if k == 0:
        out.zero_()
        return
    if out.numel():
        _C.int8_linear_matmul(A.data_ptr(), B.data_ptr(), rows, B.shape[0], k, out.data_ptr(), _nt())


def int8_linear_matmul(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Exact ``A @ B.T`` of int8 matrices with int32 accumulation (VNNI / AVX2 kernels)."""
    _check_int8_matmul(A, B)
    out = torch.empty((*A.shape[:-1], B.shape[0]), dtype=torch.int32)
    _int8_matmul_into(A, B, out)
    return out


def int8_linear_matmul_out(A: torch.Tensor, B: torch.Tensor, out: torch.Tensor) -> None:
    """``int8_linear_matmul`` into a preallocated int32 ``out``."""
    _check_int8_matmul(A, B)
    shape = (*A.shape[:-1], B.shape[0])
    C.check_out(out, shape, torch.int32)
    _on_cpu(out=out)
    if out.is_contiguous() and not C.may_overlap_any(out, A, B):
        _int8_matmul_into(A, B, out)
    else:
        out.copy_(int8_linear_matmul(A, B))


def int8_mm_dequant(
    A: torch.Tensor,
    row_stats: torch.Tensor,
    col_stats: torch.Tensor,
    dtype: torch.dtype | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``A * row_stats[:, None] * col_stats[None, :] / 127**2 (+ bias)`` in ``dtype`` (default f16)."""
    rows, n = C.check_int8_mm_dequant(A, row_stats, col_stats, dtype, bias)
    if bias is not None and bias.dtype not in C.FLOAT_DTYPES:
        bias = bias.float()  # added in f32, as the reference does
    dtype = dtype or torch.float16
    _on_cpu(A=A, row_stats=row_stats, col_stats=col_stats, bias=bias)
    A, row_stats, col_stats = A.contiguous(), row_stats.contiguous(), col_stats.contiguous()
    out = torch.empty(A.shape, dtype=dtype)
    if out.numel():
        _int8_mm_dequant_into(A, row_stats, col_stats, rows, n, bias, out)
    return out


def _int8_mm_dequant_into(
    A: torch.Tensor,
    row_stats: torch.Tensor,
    col_stats: torch.Tensor,
    rows: int,
    n: int,
    bias: torch.Tensor | None,
    out: torch.Tensor,
) -> None:
    """The native dequantization of int32 ``A`` (rows x n) into ``out``; A and the statistics
    contiguous, every argument checked."""
    bias_ptr, bias_code = 0, 0
    if bias is not None:
        bias = bias.contiguous()
        bias_ptr, bias_code = bias.data_ptr(), DTYPE_CODE[bias.dtype]
    _C.int8_mm_dequant(
        A.data_ptr(),
        row_stats.data_ptr(),
        col_stats.data_ptr(),
        rows,
        n,
        bias_ptr,
        bias_code,
        out.data_ptr(),
        DTYPE_CODE[out.dtype],
        _nt(),
    )


_INT8_CODE: list[torch.Tensor] = []


def int8_vectorwise_dequant(A: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
    """``A * stats[row] / 127`` as f32: the native block-wise dequantization with one block per row
    and the code book of the int8 values (``float(a) * stats[row]``, one rounding), then one
    in-place scaling by 1/127: the reference's two roundings, bit for bit, in two passes over a
    single output instead of its three passes and two outputs."""
    rows, cols = C.check_int8_vectorwise_dequant(A, stats)
    _on_cpu(A=A, stats=stats)
    out = torch.empty(A.shape, dtype=torch.float32)
    if out.numel():
        if not _INT8_CODE:
            _INT8_CODE.append(torch.arange(256, dtype=torch.uint8).view(torch.int8).float())
        _dequantize_blockwise_into(A.contiguous().view(torch.uint8), stats.float(), _INT8_CODE[0], cols, out)
        out.mul_(INV_127)
    return out


def int8_scaled_mm(
    A: torch.Tensor,
    B: torch.Tensor,
    row_stats: torch.Tensor,
    col_stats: torch.Tensor,
    bias: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """int8 GEMM and fused dequantization (+ bias), native end to end."""
    if not _int8_scaled_mm_args_ok(A, B, row_stats, col_stats, bias, dtype):
        return int8_mm_dequant(int8_linear_matmul(A, B), row_stats, col_stats, dtype=dtype or torch.float16, bias=bias)
    # Every check of the two ops passed in one test: their natives directly (a decoding model makes
    # this call per layer and token, with cold caches in which each Python step and allocation
    # costs microseconds; bench/cpu_glue.py). A fresh int32 tensor costs less here than the
    # reused buffer of _scratch, whose slice and view are two more tensor objects.
    n, k = B.shape
    acc = torch.empty((*A.shape[:-1], n), dtype=torch.int32)
    _int8_matmul_into(A, B, acc)
    out = torch.empty(acc.shape, dtype=dtype or torch.float16)
    _int8_mm_dequant_into(acc, row_stats.contiguous(), col_stats.contiguous(), A.numel() // k, n, bias, out)
    return out


def _int8_scaled_mm_args_ok(
    A: torch.Tensor,
    B: torch.Tensor,
    row_stats: torch.Tensor,
    col_stats: torch.Tensor,
    bias: torch.Tensor | None,
    dtype: torch.dtype | None,
) -> bool:
    """Whether int8_scaled_mm's arguments pass every check of int8_linear_matmul and then
    int8_mm_dequant, with at least one row, n > 0 and k > 0, tested in one expression; False sends the
    call through those ops, whose checks name the fault."""
    if not (A.dtype == torch.int8 and B.dtype == torch.int8 and B.dim() == 2 and A.dim() >= 1):
        return False
    n, k = B.shape
    return (
        k > 0
        and n > 0
        and A.shape[-1] == k
        and A.numel() >= k
        and (dtype is None or dtype in C.FLOAT_DTYPES)
        and row_stats.dtype == torch.float32
        and col_stats.dtype == torch.float32
        and row_stats.numel() == A.numel() // k
        and col_stats.numel() == n
        and A.is_cpu
        and B.is_cpu
        and row_stats.is_cpu
        and col_stats.is_cpu
        and (bias is None or (bias.is_cpu and bias.dtype in C.FLOAT_DTYPES and bias.dim() == 1 and bias.numel() == n))
    )


def int8_mixed_scaled_mm(
    A: torch.Tensor,
    CA: torch.Tensor,
    CB: torch.Tensor,
    SCA: torch.Tensor,
    SCB: torch.Tensor,
    outlier_cols: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """LLM.int8() with outlier decomposition: native int8 GEMM + dequant, then the few outlier
    columns in A's precision (only those columns of CB are read)."""
    a = C.int8_matrix(A)
    if outlier_cols is None or outlier_cols.numel() == 0:
        out = int8_scaled_mm(CA, CB, SCA, SCB, bias=bias, dtype=A.dtype)
        return out, a.new_empty(a.shape[0], 0)
    # The weight's outlier columns are copied by the int8 GEMM while it streams each weight row
    # (CB[:, cols] alone would read a cache line per row and column from memory).
    _check_int8_matmul(CA, CB)
    _on_cpu(outlier_cols=outlier_cols)
    C.check_outlier_cols(outlier_cols, CB.shape[1])
    cols = outlier_cols.to(torch.int64).contiguous()
    CA, CB = CA.contiguous(), CB.contiguous()
    n, k = CB.shape
    acc = torch.empty((*CA.shape[:-1], n), dtype=torch.int32)
    cb_cols = torch.empty((n, cols.numel()), dtype=torch.int8)
    _C.int8_linear_matmul_gather(
        CA.data_ptr(),
        CB.data_ptr(),
        CA.numel() // k if k else 0,
        n,
        k,
        acc.data_ptr(),
        cols.data_ptr(),
        cols.numel(),
        cb_cols.data_ptr(),
        _nt(),
    )
    out = int8_mm_dequant(acc, SCA, SCB, dtype=A.dtype, bias=bias)
    sub_a = a[:, outlier_cols]
    sub_b = (cb_cols * SCB.view(-1, 1) * INV_127).to(A.dtype)
    out2 = out.reshape(-1, out.shape[-1]).addmm(sub_a, sub_b.t())
    return out2.view(out.shape), sub_a


KERNELS: dict[str, Callable] = {
    "int8_vectorwise_quant": int8_vectorwise_quant,
    "int8_double_quant": int8_double_quant,
    "int8_linear_matmul": int8_linear_matmul,
    "int8_linear_matmul.out": int8_linear_matmul_out,
    "int8_mm_dequant": int8_mm_dequant,
    "int8_vectorwise_dequant": int8_vectorwise_dequant,
    "int8_scaled_mm": int8_scaled_mm,
    "int8_mixed_scaled_mm": int8_mixed_scaled_mm,
}
