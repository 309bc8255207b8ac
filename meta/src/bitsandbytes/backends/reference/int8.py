"""Reference LLM.int8() kernels: vector-wise quantization, int8 GEMM and fused dequantization."""

from __future__ import annotations

import torch

from ... import _checks as C

INV_127 = 7.874015718698502e-3  # 1 / 127, the constant every backend uses
INV_127_SQ = 6.200124e-05  # 1 / 127**2, as the established release's default kernels use it
_EXACT_K_CHUNK = 1024  # |a*b| <= 2**14, so 1024 terms sum exactly in f32 (2**24)


def round_rows(rows: torch.Tensor, row_stats: torch.Tensor) -> torch.Tensor:
    """The int8 codes, as f32 values, of the f32 matrix ``rows`` scaled by ``127 / row_stats``
    (rounded to nearest even, in [-127, 127]; 0 in a row whose statistic is 0, and for NaN)."""
    q = torch.round(rows * (127.0 / row_stats)[:, None])
    return torch.where(row_stats[:, None] == 0, 0.0, q).clamp(-127, 127).nan_to_num(0.0)


def int8_vectorwise_quant(
    A: torch.Tensor, threshold: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Row-wise absmax int8 quantization; columns with ``|A| >= threshold`` are outliers."""
    C.check_dtype(A, "A", C.FLOAT_DTYPES)
    C.check(A.dim() >= 1, "bitsandbytes: A must have at least one dimension")
    C.check(threshold >= 0.0, f"bitsandbytes: threshold must be >= 0, got {threshold}")
    rows = C.int8_matrix(A).float()
    absA = rows.abs()
    outlier_cols = None
    outliers = None
    if threshold > 0.0:
        outliers = absA >= threshold
        absA = absA.masked_fill(outliers, 0.0)
        outlier_cols = torch.argwhere(outliers.any(dim=0)).view(-1)
    row_stats = absA.amax(dim=1) if rows.shape[1] else rows.new_zeros(rows.shape[0])
    out = round_rows(rows, row_stats).to(torch.int8)
    if outliers is not None:
        if rows.shape[0] > 1:
            out[:, outlier_cols] = 0
        else:
            out = out.masked_fill(outliers, 0)
    return out.view(A.shape), row_stats, outlier_cols


def int8_vectorwise_dequant(A: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
    """``A * stats[row] / 127`` as f32."""
    rows, cols = C.check_int8_vectorwise_dequant(A, stats)
    return (A.reshape(rows, cols) * stats.view(-1, 1) * INV_127).view(A.shape)


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


def int8_linear_matmul(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Exact ``A @ B.T`` of int8 matrices with int32 accumulation, on any device.

    Float32 sums of up to 1024 int8 products are exact, so K is split into such chunks.
    """
    _check_int8_matmul(A, B)
    a = A.reshape(torch.Size(A.shape[:-1]).numel(), A.shape[-1])  # a 1-D A is one row, even when empty
    out = torch.zeros(a.shape[0], B.shape[0], dtype=torch.int32, device=A.device)
    for k0 in range(0, a.shape[1], _EXACT_K_CHUNK):
        part = a[:, k0 : k0 + _EXACT_K_CHUNK].float() @ B[:, k0 : k0 + _EXACT_K_CHUNK].float().t()
        out += part.to(torch.int32)
    return out.view(*A.shape[:-1], B.shape[0])


def int8_linear_matmul_out(A: torch.Tensor, B: torch.Tensor, out: torch.Tensor) -> None:
    """``int8_linear_matmul`` into a preallocated int32 ``out``."""
    shape = (*A.shape[:-1], B.shape[0])
    C.check_out(out, shape, torch.int32)
    out.copy_(int8_linear_matmul(A, B))


def int8_mm_dequant(
    A: torch.Tensor,
    row_stats: torch.Tensor,
    col_stats: torch.Tensor,
    dtype: torch.dtype | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``A * row_stats[:, None] * col_stats[None, :] / 127**2 (+ bias)`` in ``dtype`` (default f16)."""
    C.check_int8_mm_dequant(A, row_stats, col_stats, dtype, bias)
    rows = C.int8_matrix(A)
    out = rows.float() * (row_stats.view(-1, 1) * col_stats.view(1, -1)) * INV_127_SQ
    if bias is not None:
        out = out + bias.float()
    return out.to(dtype or torch.float16).view(A.shape)


def int8_scaled_mm(
    A: torch.Tensor,
    B: torch.Tensor,
    row_stats: torch.Tensor,
    col_stats: torch.Tensor,
    bias: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``int8_mm_dequant(int8_linear_matmul(A, B), ...)``."""
    C = torch.ops.bitsandbytes.int8_linear_matmul(A, B)
    return torch.ops.bitsandbytes.int8_mm_dequant(C, row_stats, col_stats, dtype=dtype or torch.float16, bias=bias)


def int8_mixed_scaled_mm(
    A: torch.Tensor,
    CA: torch.Tensor,
    CB: torch.Tensor,
    SCA: torch.Tensor,
    SCB: torch.Tensor,
    outlier_cols: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """LLM.int8() with outlier decomposition: int8 GEMM plus the outlier columns in A's precision."""
    a = C.int8_matrix(A)
    outliers = outlier_cols is not None and outlier_cols.numel() > 0
    if outliers:
        C.check_outlier_cols(outlier_cols, CB.shape[1])
    out = int8_scaled_mm(CA, CB, SCA, SCB, bias=bias, dtype=A.dtype)
    if not outliers:
        return out, a.new_empty(a.shape[0], 0)
    sub_a = a[:, outlier_cols]
    sub_b = int8_vectorwise_dequant(CB[:, outlier_cols].contiguous(), SCB).to(A.dtype)
    out2 = C.int8_matrix(out).addmm(sub_a, sub_b.t())
    return out2.view(out.shape), sub_a


def int8_double_quant(
    A: torch.Tensor, threshold: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Row-wise and column-wise int8 quantization in one call; outlier columns are zero in both."""
    CA, row_stats, outlier_cols = int8_vectorwise_quant(A, threshold)
    rows = C.int8_matrix(A).float()
    absA = rows.abs()
    if outlier_cols is not None:
        absA = absA.masked_fill(absA >= threshold, 0.0)
    col_stats = absA.amax(dim=0) if rows.shape[0] else rows.new_zeros(rows.shape[1])
    q = torch.round(rows * (127.0 / col_stats)[None, :])
    q = torch.where(col_stats[None, :] == 0, 0.0, q).clamp(-127, 127).nan_to_num(0.0)
    CAt = q.to(torch.int8)
    if outlier_cols is not None:
        CAt[:, outlier_cols] = 0
    return CA, CAt.view(A.shape), row_stats, col_stats, outlier_cols
