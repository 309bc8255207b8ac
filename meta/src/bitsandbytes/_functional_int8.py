"""LLM.int8() primitives: the int8 matmul, row-wise / double quantization, dequantization, and the
deprecated int8 GEMM helpers of the established release.

``bitsandbytes.functional`` re-exports everything here.
"""

from __future__ import annotations

import warnings

import torch

from . import _checks, _direct


def int8_linear_matmul(
    A: torch.Tensor, B: torch.Tensor, out: torch.Tensor | None = None, dtype: torch.dtype = torch.int32
) -> torch.Tensor:
    """Exact int32 ``A @ B.T`` of int8 matrices (``B`` is ``[N, K]``)."""
    if dtype != torch.int32:
        raise NotImplementedError(f"bitsandbytes: int8_linear_matmul only produces int32, got dtype={dtype}")
    if out is not None:
        torch.ops.bitsandbytes.int8_linear_matmul.out(A, B, out)
        return out
    return torch.ops.bitsandbytes.int8_linear_matmul.default(A, B)


def int8_mm_dequant(
    A: torch.Tensor,
    row_stats: torch.Tensor,
    col_stats: torch.Tensor,
    out: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``A * row_stats[:, None] * col_stats[None, :] / 127**2 (+ bias)`` as float16."""
    result = torch.ops.bitsandbytes.int8_mm_dequant.default(A, row_stats, col_stats, dtype=torch.float16, bias=bias)
    return _into_out(out, result, A)


def _into_out(out: torch.Tensor | None, result: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """``result``, or ``out`` filled with it once its shape, dtype and device (``A``'s) are checked."""
    if out is not None and out.device != A.device:
        # a copy would move the result to that device (on meta it would be lost) without a word
        raise RuntimeError(f"bitsandbytes: out must be on {A.device} (the device of A), got {out.device}")
    return _checks.into_out(out, result)


def int8_vectorwise_quant(
    A: torch.Tensor, threshold: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Row-wise int8 quantization: ``(CA, row_stats, outlier_cols or None)``."""
    quant = _direct.kernel("int8_vectorwise_quant", A) or torch.ops.bitsandbytes.int8_vectorwise_quant.default
    return quant(A, threshold)


def int8_vectorwise_dequant(A: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
    """``A * stats[row] / 127`` as float32."""
    return torch.ops.bitsandbytes.int8_vectorwise_dequant.default(A, stats)


def int8_double_quant(
    A: torch.Tensor,
    col_stats: torch.Tensor | None = None,
    row_stats: torch.Tensor | None = None,
    out_col: torch.Tensor | None = None,
    out_row: torch.Tensor | None = None,
    threshold: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Row-wise and column-wise int8 quantization: ``(CA, CAt, row_stats, col_stats, outlier_cols)``."""
    for name, value in (("col_stats", col_stats), ("row_stats", row_stats), ("out_col", out_col), ("out_row", out_row)):
        if value is not None:
            raise ValueError(f"bitsandbytes: int8_double_quant does not accept a preallocated {name}")
    return torch.ops.bitsandbytes.int8_double_quant.default(A, threshold)


def _deprecated(name: str) -> None:
    warnings.warn(
        f"bitsandbytes.functional.{name} is deprecated; use int8_linear_matmul instead.", FutureWarning, stacklevel=3
    )


def check_matmul(
    A: torch.Tensor,
    B: torch.Tensor,
    out: torch.Tensor | None,
    transposed_A: bool,
    transposed_B: bool,
    expected_type: torch.dtype = torch.int8,
) -> torch.Size:
    """Deprecated: validate an int8 matmul's operands and return the output shape."""
    _deprecated("check_matmul")
    for name, t in (("A", A), ("B", B)):
        if t.dtype != expected_type:
            raise TypeError(f"bitsandbytes: {name} must have dtype {expected_type}, got {t.dtype}")
    a = A.transpose(-1, -2) if transposed_A else A
    b = B.transpose(-1, -2) if transposed_B else B
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"bitsandbytes: cannot multiply shapes {tuple(a.shape)} and {tuple(b.shape)}")
    shape = torch.Size((*a.shape[:-1], b.shape[-1]))
    if out is not None and out.shape != shape:
        raise ValueError(f"bitsandbytes: out must have shape {tuple(shape)}, got {tuple(out.shape)}")
    return shape


def igemm(
    A: torch.Tensor,
    B: torch.Tensor,
    out: torch.Tensor | None = None,
    transposed_A: bool = False,
    transposed_B: bool = False,
) -> torch.Tensor:
    """Deprecated: int32 ``A @ B`` of int8 matrices (optionally transposed); two 3-D operands
    multiply batch by batch, as ``batched_igemm`` does."""
    _deprecated("igemm")
    a = A.transpose(-1, -2) if transposed_A else A
    b = B.transpose(-1, -2) if transposed_B else B
    if a.dim() == 3 and b.dim() == 3:
        return _into_out(out, _batched_int8_mm(a, b), A)
    result = torch.ops.bitsandbytes.int8_linear_matmul.default(a.contiguous(), b.transpose(-1, -2).contiguous())
    return _into_out(out, result, A)


def _batched_int8_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """int32 ``a[i] @ b[i]`` for each batch entry."""
    return torch.stack(
        [torch.ops.bitsandbytes.int8_linear_matmul.default(x.contiguous(), y.t().contiguous()) for x, y in zip(a, b)]
    )


def batched_igemm(
    A: torch.Tensor,
    B: torch.Tensor,
    out: torch.Tensor | None = None,
    transposed_A: bool = False,
    transposed_B: bool = False,
) -> torch.Tensor:
    """Deprecated: batched int32 ``A[i] @ B[i]`` of int8 matrices."""
    _deprecated("batched_igemm")
    a = A.transpose(-1, -2) if transposed_A else A
    b = B.transpose(-1, -2) if transposed_B else B
    return _into_out(out, _batched_int8_mm(a, b), A)
