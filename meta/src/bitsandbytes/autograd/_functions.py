"""Autograd functions of LLM.int8() (8-bit) and 4-bit matrix multiplication, and their entry points."""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

import torch

from .. import _checks as C
from .. import _direct
from .. import functional as F
from .._ops import autocast_on
from ..backends.reference.weight_mm import empty_product, int8_weight_values
from . import _transforms


class GlobalOutlierPooler:
    """Singleton pool of outlier feature indices (kept for API compatibility)."""

    _instance: GlobalOutlierPooler | None = None

    def __init__(self) -> None:
        raise RuntimeError("Call get_instance() instead")

    def initialize(self) -> None:
        """Empty the pool and forget the model dimension."""
        self.outliers: set[int] = set()
        self.model_dim: int | None = None

    @classmethod
    def get_instance(cls) -> GlobalOutlierPooler:
        if cls._instance is None:
            cls._instance = cls.__new__(cls)
            cls._instance.initialize()
        return cls._instance

    def add_outliers(self, outlier_idx: torch.Tensor, feature_dim: int) -> None:
        """Record outlier indices of a layer whose input width is ``feature_dim`` (first width wins)."""
        if self.model_dim is None:
            self.model_dim = feature_dim
        if feature_dim != self.model_dim:
            return  # only the outliers of the model's hidden dimension are pooled
        self.outliers.update(outlier_idx.tolist())

    def get_current_outlier_idx(self) -> torch.Tensor:
        """The pooled outlier indices, sorted, as an int64 tensor."""
        return torch.tensor(sorted(self.outliers), dtype=torch.int64)


_REMOVED_STATE_ATTRS = ("CxB", "CxBt", "formatB", "_tile_indices")


@dataclasses.dataclass
class MatmulLtState:
    """Per-layer state of LLM.int8(): the int8 weight ``CB`` with its row scales ``SCB`` and flags."""

    force_no_igemmlt: bool = False
    CB: torch.Tensor | None = None
    SB: Any = None
    SCB: torch.Tensor | None = None
    SBt: Any = None
    CBt: torch.Tensor | None = None
    subB: torch.Tensor | None = None  # noqa: N815  (public name)
    outlier_pool: GlobalOutlierPooler | None = None
    idx: torch.Tensor | None = None

    has_accumulated_gradients = False
    threshold = 0.0
    is_training = True
    has_fp16_weights = True
    use_pool = False

    def reset_grads(self) -> None:
        """Drop the cached int8 weight and its scales."""
        self.CB = None
        self.SB = None
        self.SCB = None
        self.SBt = None
        self.CBt = None

    def __getattr__(self, name: str) -> Any:
        if name in _REMOVED_STATE_ATTRS:
            warnings.warn(
                f"MatmulLtState.{name} was removed (only the row-major int8 layout exists); it is always None.",
                FutureWarning,
                stacklevel=2,
            )
            return None
        raise AttributeError(f"'MatmulLtState' object has no attribute '{name}'")


def _requantized_each_call(B: torch.Tensor, state: MatmulLtState) -> bool:
    """Whether ``B`` is a trainable 16/32-bit weight whose int8 codes every forward makes anew."""
    return state.has_fp16_weights and B.dtype != torch.int8 and not state.has_accumulated_gradients


def _int8_weight(B: torch.Tensor, state: MatmulLtState) -> tuple[torch.Tensor, torch.Tensor]:
    """The int8 weight and its row scales, (re)quantizing ``B`` when it is kept in 16/32 bit."""
    if state.CB is None or _requantized_each_call(B, state):
        if B.dtype == torch.int8:
            scb = state.SCB if state.SCB is not None else getattr(B, "SCB", None)
            if scb is None:
                raise ValueError("bitsandbytes.matmul: B is int8 but neither state.SCB nor B.SCB holds its row scales")
            state.CB, state.SCB = B.data, scb
            return B.data, scb
        # the previous step's codes go first: two int8 copies of the weight need not coexist
        state.CB = state.SCB = None
        CB, SCB, _ = F.int8_vectorwise_quant(B.detach().to(torch.float16))
        state.CB, state.SCB = CB, SCB
        return CB, SCB  # (not read back from the state: another thread sharing it may be at the line above)
    return state.CB, state.SCB


def _uses_prepared_weight(state: MatmulLtState) -> bool:
    """True when the int8 weight in ``state`` is the weight, whatever ``B`` was passed: an
    inference layer (``has_fp16_weights=False``) whose ``CB``/``SCB`` are already set."""
    return state.CB is not None and state.SCB is not None and not state.has_fp16_weights


def _weight_shape(B: torch.Tensor, state: MatmulLtState) -> tuple[int, int]:
    """(out_features, in_features) of the weight: the prepared int8 weight's when ``state`` holds
    one (``B`` may then be that weight, its transpose or the original 16-bit weight), else ``B``'s."""
    W = state.CB if _uses_prepared_weight(state) else B
    if W.dim() != 2:
        raise ValueError(
            f"bitsandbytes.matmul: the weight must be 2-D [out_features, in_features], got {tuple(W.shape)}"
        )
    return W.shape[0], W.shape[1]


def _as_rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a (rows, t.shape[-1]) matrix; reshape(-1, 0) cannot say how many rows an empty
    last dimension leaves."""
    return t.reshape(math.prod(t.shape[:-1]), t.shape[-1])


def _int8_input_grad(
    grad_output: torch.Tensor, CB: torch.Tensor, SCB: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """``grad_output @ (CB * SCB / 127)`` in ``dtype`` with the int8 weight the forward used (kept
    for backward: the shared state may hold another thread's, or none, by now). The weight stays
    int8 (no dequantized copy on platforms that read it directly; the reference dequantizes into
    grad_output's dtype). In a backward that builds a graph (``create_graph=True``) it is made of
    torch operations, differentiable in turn."""
    if torch.is_grad_enabled():
        return (grad_output @ int8_weight_values(CB, SCB, grad_output.dtype)).to(dtype)
    grad = torch.ops.bitsandbytes.int8_weight_mm_t(grad_output, CB, SCB)
    return grad.to(dtype)


def _save_for_backward(
    ctx: Any, A: torch.Tensor, B: torch.Tensor, state: MatmulLtState, CB: torch.Tensor, SCB: torch.Tensor
) -> None:
    """Keep what the int8 backward reads (``_saved``): ``A`` for the weight's gradient, the int8
    weight the forward used for the input's. Codes made by this forward (a 16/32-bit weight,
    requantized on every call) are saved tensors, which autograd frees after the backward: as
    ``ctx`` attributes they lived as long as the graph, and the previous step's graph, still
    referenced during the next forward, held a second int8 copy of every layer's weight. The
    layer's own int8 weight stays a ``ctx`` attribute (no copy; saved-tensor hooks such as
    offloading leave it alone; one quantized under inference_mode could not be saved)."""
    req_a, req_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    fresh = req_a and _requantized_each_call(B, state)
    ctx.int8_weight = (CB, SCB) if req_a and not fresh else None
    ctx.save_for_backward(A if req_b else None, *((CB, SCB) if fresh else (None, None)))


def _saved(ctx: Any) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """``(A, CB, SCB)`` as ``_save_for_backward`` kept them."""
    A, CB, SCB = ctx.saved_tensors
    if ctx.int8_weight is not None:
        CB, SCB = ctx.int8_weight
    return A, CB, SCB


def _int8_forward(
    A: torch.Tensor, B: torch.Tensor, bias: torch.Tensor | None, state: MatmulLtState, ctx: Any = None
) -> torch.Tensor:
    """LLM.int8() forward of a non-empty ``A``: int8 GEMM of the row-quantized input and weight,
    the outlier columns (``|A| >= state.threshold``) in A's precision. With ``ctx``, ``A`` and the
    int8 weight used are kept for the backward (``_save_for_backward``)."""
    CB, SCB = _int8_weight(B, state)
    if ctx is not None:
        _save_for_backward(ctx, A, B, state, CB, SCB)
    A2 = _as_rows(A)
    CA, SCA, outlier_cols = F.int8_vectorwise_quant(A2.to(torch.float16), threshold=state.threshold)
    if state.threshold > 0.0:
        state.idx = outlier_cols
        mixed = _direct.kernel("int8_mixed_scaled_mm", A2, CA, CB, SCA, SCB, outlier_cols, bias)
        mixed = mixed or torch.ops.bitsandbytes.int8_mixed_scaled_mm.default
        output, _ = mixed(A2, CA, CB, SCA, SCB, outlier_cols, bias)
    else:
        scaled = (
            _direct.kernel("int8_scaled_mm", CA, CB, SCA, SCB, bias) or torch.ops.bitsandbytes.int8_scaled_mm.default
        )
        output = scaled(CA, CB, SCA, SCB, bias, A.dtype)
    return output.to(A.dtype).reshape(*A.shape[:-1], CB.shape[0])


def _empty_product(A: torch.Tensor, N: int, bias: torch.Tensor | None, out: torch.Tensor | None) -> torch.Tensor:
    """``A @ W.T + bias`` for an empty A (no rows, or in_features 0): ``empty_product``, into
    ``out`` when given."""
    return C.into_out(out, empty_product(A, N, bias))


class MatMul8bitLt(torch.autograd.Function):
    """LLM.int8(): int8 GEMM of row-wise quantized input and weight, outliers in input precision."""

    @staticmethod
    def forward(ctx, A, B, out=None, bias=None, state=None):  # type: ignore[override]
        state = state or MatmulLtState()
        N = _weight_shape(B, state)[0]
        ctx.state = state
        ctx.dtype_A = A.dtype
        ctx.bias_shape = None if bias is None else bias.shape
        if A.numel() == 0:
            ctx.is_empty = True
            ctx.shape_A = A.shape
            ctx.save_for_backward(None)
            return _empty_product(A, N, bias, out)
        ctx.is_empty = False
        output = _int8_forward(A, B, bias, state, ctx)
        return C.into_out(out, output)

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        if ctx.is_empty:
            # The output was the bias alone (or nothing): its gradient is the rows' sum.
            bias_grad = None
            if ctx.bias_shape is not None and ctx.needs_input_grad[3]:
                bias_grad = _as_rows(grad_output).sum(0).to(ctx.dtype_A)
            grad_A = grad_output.new_zeros(ctx.shape_A, dtype=ctx.dtype_A) if ctx.needs_input_grad[0] else None
            return grad_A, None, None, bias_grad, None
        A, CB, SCB = _saved(ctx)
        req_a, req_b, _, req_bias, _ = ctx.needs_input_grad
        grad_A = grad_B = grad_bias = None
        g2 = _as_rows(grad_output)
        if req_bias:
            grad_bias = g2.sum(0).to(ctx.dtype_A)
        if req_a:
            grad_A = _int8_input_grad(grad_output, CB, SCB, ctx.dtype_A)
        if req_b and A is not None:
            grad_B = g2.t().to(A.dtype) @ _as_rows(A)
        return grad_A, grad_B, None, grad_bias, None


class MatMul8bitFp(torch.autograd.Function):
    """Training path of LLM.int8() on CPU/XPU: dequantize the int8 weight and use a float matmul."""

    @staticmethod
    def forward(ctx, A, B, out=None, bias=None, state=None):  # type: ignore[override]
        state = state or MatmulLtState()
        CB, SCB = _int8_weight(B, state)
        output = torch.ops.bitsandbytes.int8_weight_mm(A, CB, SCB, None if bias is None else bias.to(A.dtype))
        ctx.state = state
        ctx.dtype_A = A.dtype
        _save_for_backward(ctx, A, B, state, CB, SCB)
        return C.into_out(out, output)

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        A, CB, SCB = _saved(ctx)
        req_a, req_b, _, req_bias, _ = ctx.needs_input_grad
        grad_A = grad_B = grad_bias = None
        g2 = _as_rows(grad_output)
        if req_bias:
            grad_bias = g2.sum(0)
        if req_a:
            grad_A = _int8_input_grad(grad_output, CB, SCB, ctx.dtype_A)
        if req_b and A is not None:
            grad_B = g2.t().to(A.dtype) @ _as_rows(A)
        return grad_A, grad_B, None, grad_bias, None


class MatMul4Bit(torch.autograd.Function):
    """4-bit weight matmul; gradients flow to the input and the bias (the packed weight is frozen)."""

    @staticmethod
    def forward(ctx, A, B, out=None, bias=None, quant_state=None):  # type: ignore[override]
        N = quant_state.shape[0]
        ctx.state = quant_state
        ctx.dtype_A = A.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.is_empty = A.numel() == 0
        # A weight quantized under torch.inference_mode cannot be saved for backward (torch
        # raises): as in the established release, which kept it as a ctx attribute, it still
        # serves the input's gradient.
        ctx.inference_weight = B if not torch.compiler.is_compiling() and B.is_inference() else None
        ctx.save_for_backward(None if ctx.inference_weight is not None else B)
        if ctx.is_empty:
            return _empty_product(A, N, bias, out)
        output = F._gemm_4bit(A, B, quant_state, bias)
        return C.into_out(out, output)

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        (B,) = ctx.saved_tensors
        if B is None:
            B = ctx.inference_weight
        req_a, _, _, req_bias, _ = ctx.needs_input_grad
        grad_A = grad_bias = None
        if req_bias:
            grad_bias = _as_rows(grad_output).sum(0).to(ctx.bias_dtype)
        if req_a:
            if ctx.is_empty:
                grad_A = grad_output.new_zeros(*grad_output.shape[:-1], ctx.state.shape[1]).to(ctx.dtype_A)
            elif torch.is_grad_enabled():
                # create_graph=True: a product autograd can differentiate again (the op has no
                # derivative of its own; a second derivative would silently miss this term)
                W = _transforms.dequantized_4bit(B, ctx.state, grad_output.dtype)
                grad_A = (grad_output @ W).to(ctx.dtype_A)
            else:
                state = ctx.state
                absmax = F._resolved_absmax(state).to(torch.float32)
                shape = [int(s) for s in state.shape]
                grad_A = torch.ops.bitsandbytes.gemm_4bit_t(
                    grad_output, B.reshape(-1), shape, absmax, state.blocksize, state.quant_type
                ).to(ctx.dtype_A)
        return grad_A, None, None, grad_bias, None


def _autocast_operands(
    A: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``A`` and ``bias`` as autocast casts ``torch.nn.functional.linear``'s operands, where
    autocast is on for A's device: the established release computes the 4-bit product (all but
    one row without gradients) and LLM.int8()'s CPU/XPU training product with ``linear``, so under
    autocast they run in its dtype. The ops themselves ignore autocast (``_ops``); this cast, made
    before them and recorded by autograd, is the one place it acts. As for torch's ops, a call
    with an ``out`` is not cast (its result keeps out's dtype), nor one on a device autocast does
    not know (``meta``)."""
    if out is not None or not autocast_on():
        return A, bias
    device = A.device.type
    try:
        if not torch.is_autocast_enabled(device):
            return A, bias
    except RuntimeError:  # a device type without autocast (meta): torch's linear is not cast there
        return A, bias
    dtype = torch.get_autocast_dtype(device)

    def cast(t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None or not t.is_floating_point() or t.dtype in (dtype, torch.float64):
            return t
        return t.to(dtype)

    return cast(A), cast(bias)


def matmul(
    A: torch.Tensor,
    B: torch.Tensor,
    out: torch.Tensor | None = None,
    state: MatmulLtState | None = None,
    threshold: float = 0.0,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """LLM.int8() linear: ``A @ W.T + bias`` where ``B``/``state`` describe ``W`` (``[N, K]``)."""
    state = state or MatmulLtState()
    if threshold > 0.0:
        state.threshold = threshold
    _, K = _weight_shape(B, state)
    C.check_has_dim(A, "A")
    if A.shape[-1] != K:
        where = "state.CB.shape[1]" if _uses_prepared_weight(state) else "B.shape[1]"
        raise ValueError(f"bitsandbytes.matmul: A's last dimension ({A.shape[-1]}) must equal {where} ({K})")
    if not torch.compiler.is_compiling() and _transforms.active(A, B, bias):
        # torch.func transforms, forward-mode tangents: the same product in torch operations
        if state.is_training and A.device.type in ("cpu", "xpu"):
            A, bias = _autocast_operands(A, bias, out)
        weight = None if _requantized_each_call(B, state) else _int8_weight(B, state)
        return C.into_out(out, _transforms.linear_int8(A, B, state, bias, weight))
    if state.is_training and A.device.type in ("cpu", "xpu"):
        A, bias = _autocast_operands(A, bias, out)
        return MatMul8bitFp.apply(A, B, out, bias, state)
    needs_grad = torch.is_grad_enabled() and (
        A.requires_grad or B.requires_grad or (bias is not None and bias.requires_grad)
    )
    if needs_grad or A.numel() == 0:
        return MatMul8bitLt.apply(A, B, out, bias, state)
    # Inference: the same forward without the autograd.Function machinery (~10 us a call).
    output = _int8_forward(A, B, bias, state)
    return C.into_out(out, output)


def matmul_4bit(
    A: torch.Tensor,
    B: torch.Tensor,
    quant_state: F.QuantState | None,
    out: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``A @ W.T + bias`` for a packed 4-bit weight ``B`` (any view, e.g. ``weight.t()``) of shape ``[N, K]``."""
    if quant_state is None:
        raise ValueError("bitsandbytes.matmul_4bit: quant_state is required (the weight is not quantized?)")
    if quant_state.shape is None or len(quant_state.shape) != 2:
        raise ValueError(f"bitsandbytes.matmul_4bit: quant_state.shape must be 2-D [N, K], got {quant_state.shape}")
    N, K = quant_state.shape
    C.check_has_dim(A, "A")
    if A.shape[-1] != K:
        if A.shape[-1] == N:
            if not torch.compiler.is_compiling():
                warnings.warn(
                    f"matmul_4bit: weight was quantized from a [K, N] tensor (quant_state.shape={list(quant_state.shape)}). "
                    "Re-quantize from the weight in [N, K] (out_features, in_features) orientation. "
                    "This will be an error in a future version.",
                    DeprecationWarning,
                    stacklevel=2,
                )
            W = F.dequantize_4bit(B.reshape(-1, 1), quant_state).to(A.dtype)
            result = torch.nn.functional.linear(A, W.t(), None if bias is None else bias.to(A.dtype))
            return C.into_out(out, result)
        raise ValueError(
            f"bitsandbytes.matmul_4bit: input's last dimension ({A.shape[-1]}) does not match the weight's "
            f"in_features ({K})"
        )
    if not torch.compiler.is_compiling() and _transforms.active(A, bias):
        # torch.func transforms, forward-mode tangents: the same product in torch operations
        A, bias = _autocast_operands(A, bias, out)
        return C.into_out(out, _transforms.linear_4bit(A, B, quant_state, bias))
    needs_grad = torch.is_grad_enabled() and (A.requires_grad or (bias is not None and bias.requires_grad))
    if needs_grad or A.numel() != A.shape[-1]:  # (one row without gradients: the established GEMV)
        A, bias = _autocast_operands(A, bias, out)
    if needs_grad:
        return MatMul4Bit.apply(A, B, out, bias, quant_state)
    if A.numel() == 0:
        return _empty_product(A, N, bias, out)
    return C.into_out(out, F._gemm_4bit(A, B, quant_state, bias))


__all__ = [
    "GlobalOutlierPooler",
    "MatMul4Bit",
    "MatMul8bitFp",
    "MatMul8bitLt",
    "MatmulLtState",
    "matmul",
    "matmul_4bit",
]
