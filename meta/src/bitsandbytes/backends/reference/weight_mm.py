"""Reference kernels of the matmuls against a weight kept quantized (interface version 2).

Each dequantizes the weight into the input's dtype (as the established release's training paths
do) and runs a dense matmul; platform kernels may read the quantized weight directly and sum in
f32, so they equal these within the input dtype's rounding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ... import _checks as C
from .fourbit import dequantize_4bit
from .int8 import INV_127


def empty_product(A: torch.Tensor, width: int, bias: torch.Tensor | None = None) -> torch.Tensor:
    """A matmul's result where A has no rows or the sum over its last dimension is empty: zeros
    plus the bias, ``[*A.shape[:-1], width]`` in A's dtype, as torch.nn.functional.linear gives."""
    out = A.new_zeros((*A.shape[:-1], width))
    return out if bias is None else out.add_(bias.to(A.dtype))


def int8_weight_values(CB: torch.Tensor, SCB: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The int8 weight's values ``CB * SCB / 127`` (row scales) in ``dtype``, in torch operations
    (differentiable and batchable where CB and SCB are float)."""
    return (CB * SCB.view(-1, 1) * INV_127).to(dtype)


def int8_weight_mm(
    A: torch.Tensor, CB: torch.Tensor, SCB: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``A @ (CB * SCB / 127)^T + bias`` in A's dtype."""
    C.check_int8_weight_mm(A, CB, SCB, bias)
    C.check_same_device({"A": A, "CB": CB, "SCB": SCB, "bias": bias})
    return torch.nn.functional.linear(
        A, int8_weight_values(CB, SCB, A.dtype), None if bias is None else bias.to(A.dtype)
    )


def int8_weight_mm_t(A: torch.Tensor, CB: torch.Tensor, SCB: torch.Tensor) -> torch.Tensor:
    """``A @ (CB * SCB / 127)`` in A's dtype."""
    C.check_int8_weight_mm(A, CB, SCB, transposed=True)
    C.check_same_device({"A": A, "CB": CB, "SCB": SCB})
    return A @ int8_weight_values(CB, SCB, A.dtype)


def gemm_4bit_t(
    A: torch.Tensor, B: torch.Tensor, shapeB: Sequence[int], absmax: torch.Tensor, blocksize: int, quant_type: str
) -> torch.Tensor:
    """``A @ W`` in A's dtype, W the 4-bit weight of ``shapeB`` (``[N, K]``) packed in B."""
    C.check_gemm_4bit_t(A, B, shapeB, absmax, blocksize, quant_type)
    C.check_same_device({"A": A, "B": B, "absmax": absmax})
    return A @ dequantize_4bit(B, absmax, blocksize, quant_type, list(shapeB), A.dtype)
