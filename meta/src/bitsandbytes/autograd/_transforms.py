"""The quantized products in plain torch operations, for what the kernels and the autograd
``Function``s cannot serve: torch.func transforms (``vmap``, ``grad``, ``vjp``, ``jvp``,
``jacrev``, ...), forward-mode AD (``torch.autograd.forward_ad``) and backward passes that build a
graph of their own (``create_graph=True``, higher-order derivatives).

Under those, ``matmul_4bit`` and ``matmul`` compute with the dequantized weight (a constant) and
torch's own differentiable, batchable operations. The values are the kernels' (the weight the
kernels read; for LLM.int8()'s inference product the same int8 rounding of the input) and the
derivatives are those the established release's backward gives: the product's with the
dequantized weight (straight through the quantization).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.autograd.forward_ad as _fwad

from .. import _direct
from .. import functional as F
from ..backends.reference.int8 import INV_127_SQ, round_rows
from ..backends.reference.weight_mm import int8_weight_values

if TYPE_CHECKING:
    from ._functions import MatmulLtState


def active(*tensors: torch.Tensor | None) -> bool:
    """Whether a product of ``tensors`` must be made of torch operations: a torch.func transform is
    running, or one of them carries a forward-mode tangent."""
    # (the _direct tests inlined: every eager matmul_4bit / matmul call makes this one)
    if _direct._functorch_active():
        return True
    if getattr(_fwad, "_current_level", -1) < 0:
        return False
    return any(t is not None and _fwad.unpack_dual(t).tangent is not None for t in tensors)


def dequantized_4bit(B: torch.Tensor, quant_state: F.QuantState, dtype: torch.dtype) -> torch.Tensor:
    """The ``[N, K]`` weight packed in ``B`` (any view of the packed data), in ``dtype``."""
    return F.dequantize_4bit(B.detach().reshape(-1, 1), quant_state).to(dtype)


def linear_4bit(A: torch.Tensor, B: torch.Tensor, quant_state: F.QuantState, bias: torch.Tensor | None) -> torch.Tensor:
    """``A @ W.T + bias`` in A's dtype for the 4-bit weight ``W`` packed in ``B``."""
    W = dequantized_4bit(B, quant_state, A.dtype)
    return torch.nn.functional.linear(A, W, None if bias is None else bias.to(A.dtype))


def _rowwise_codes(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``int8_vectorwise_quant``'s codes (as f32 values) and row absmax of the f32 matrix ``rows``
    in which outliers are already zero."""
    stats = rows.abs().amax(dim=-1)
    return round_rows(rows, stats), stats


def _int8_product(
    A: torch.Tensor, CB: torch.Tensor, SCB: torch.Tensor, threshold: float, bias: torch.Tensor | None
) -> torch.Tensor:
    """LLM.int8()'s inference product (``int8_vectorwise_quant`` of A from float16, then
    ``int8_mixed_scaled_mm``): the int8 GEMM of the row-quantized input, and the outlier columns
    (``|A| >= threshold`` in any row) in A's precision. Not differentiable (values only)."""
    a = A.detach()
    rows = a.reshape(-1, a.shape[-1]).to(torch.float16).float()
    outlier_cols = None
    if threshold > 0.0:
        outliers = rows.abs() >= threshold
        outlier_cols = outliers.any(dim=0)
        rows = rows.masked_fill(outlier_cols, 0.0)
    CA, SCA = _rowwise_codes(rows)
    out = (CA @ CB.float().t()) * (SCA.unsqueeze(-1) * SCB.float()) * INV_127_SQ
    if bias is not None:
        out = out + bias.detach().float()
    out = out.to(A.dtype)
    if outlier_cols is not None:
        sub_a = a.reshape(-1, a.shape[-1]).masked_fill(~outlier_cols, 0)
        out = out + sub_a @ int8_weight_values(CB, SCB, A.dtype).t()
    return out.reshape(*A.shape[:-1], CB.shape[0])


def linear_int8(
    A: torch.Tensor,
    B: torch.Tensor,
    state: MatmulLtState,
    bias: torch.Tensor | None,
    int8_weight: tuple[torch.Tensor, torch.Tensor] | None,
) -> torch.Tensor:
    """``bitsandbytes.matmul`` of ``A`` and the weight ``B``/``state`` in torch operations.
    ``int8_weight`` is the layer's prepared ``(CB, SCB)``, or None where ``B`` is a 16/32-bit weight
    quantized on every call (its gradient is then the product's with the quantized weight, as the
    eager backward's ``grad.T @ A``). With ``state.is_training`` on cpu/xpu the product is the
    dequantized weight's (``MatMul8bitFp``); otherwise A is int8-quantized per row
    (``MatMul8bitLt``), with gradients taken straight through that rounding."""
    bias = None if bias is None else bias.to(A.dtype)
    if int8_weight is None:
        rows = B.detach().to(torch.float16).float()
        codes, stats = _rowwise_codes(rows)
        Wq = int8_weight_values(codes, stats, A.dtype)
        W = B.to(A.dtype)
        W = Wq + (W - W.detach())  # Wq's values, B's gradient
    else:
        codes, stats = int8_weight
        W = int8_weight_values(codes, stats, A.dtype)
    dense = torch.nn.functional.linear(A, W, bias)
    if state.is_training and A.device.type in ("cpu", "xpu"):
        return dense
    exact = _int8_product(A, codes, stats, state.threshold, bias)
    return exact + (dense - dense.detach())  # exact's values, dense's derivatives
