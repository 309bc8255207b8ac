"""4-bit NF4/FP4 quantization: (de)quantize with per-block absmax (optionally double-quantized) and
the matrix products over a packed weight (``gemv_4bit``, the ``gemm_4bit`` op).

``bitsandbytes.functional`` re-exports everything here.
"""

from __future__ import annotations

import torch

from . import _checks, _direct
from ._functional_blockwise import _check_fill, _resolved_absmax, quantize_blockwise
from ._functional_codebooks import get_4bit_type
from ._quant_state import QuantState


def quantize_4bit(
    A: torch.Tensor,
    absmax: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    blocksize: int | None = None,
    compress_statistics: bool = False,
    quant_type: str = "fp4",
    quant_storage: torch.dtype = torch.uint8,
) -> tuple[torch.Tensor, QuantState]:
    """Quantize ``A`` to packed 4-bit NF4/FP4 codes (two per byte) with per-block absmax.

    ``compress_statistics`` double-quantizes the absmax (8-bit, blocksize 256, mean-centred).
    """
    blocksize = 64 if blocksize is None else blocksize
    _checks.check_blocksize_4bit(blocksize)
    _checks.check_quant_type(quant_type)
    if not isinstance(A, torch.Tensor):
        raise TypeError(f"bitsandbytes: A must be a tensor, got {type(A).__name__}")
    _checks.check_dtype(A, "A", _checks.FLOAT_DTYPES)
    input_shape = A.shape
    if compress_statistics and absmax is not None:
        raise ValueError("bitsandbytes: absmax= cannot be filled with compress_statistics=True (it is quantized)")
    packed, _absmax = torch.ops.bitsandbytes.quantize_4bit(A, blocksize, quant_type, quant_storage)
    # both preallocated tensors are checked before either is written: a refused call changes nothing
    _check_fill(A, out, packed, "out")
    _check_fill(A, absmax, _absmax, "absmax")
    code = get_4bit_type(quant_type, device=A.device)
    if compress_statistics:
        # the mean of no scales is 0, not NaN: a checkpoint holds it, and loading refuses NaN
        offset = _absmax.mean() if _absmax.numel() else _absmax.new_zeros(())
        # the op's absmax is a temporary here: centred in place, not copied (the same differences);
        # of an input that requires grad, torch marks it as part of the graph, where in place is refused
        centred = _absmax - offset if _absmax.requires_grad else _absmax.sub_(offset)
        qabsmax, state2 = quantize_blockwise(centred, blocksize=256)
        state = QuantState(
            absmax=qabsmax,
            shape=input_shape,
            dtype=A.dtype,
            blocksize=blocksize,
            code=code,
            quant_type=quant_type,
            offset=offset,
            state2=state2,
        )
    else:
        if absmax is not None:
            _absmax = absmax.copy_(_absmax)
        state = QuantState(
            absmax=_absmax, shape=input_shape, dtype=A.dtype, blocksize=blocksize, code=code, quant_type=quant_type
        )
    if out is not None:
        packed = out.copy_(packed)
    return packed, state


def quantize_fp4(
    A: torch.Tensor,
    absmax: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    blocksize: int | None = None,
    compress_statistics: bool = False,
    quant_storage: torch.dtype = torch.uint8,
) -> tuple[torch.Tensor, QuantState]:
    """``quantize_4bit(..., quant_type="fp4")``."""
    return quantize_4bit(A, absmax, out, blocksize, compress_statistics, "fp4", quant_storage)


def quantize_nf4(
    A: torch.Tensor,
    absmax: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    blocksize: int | None = None,
    compress_statistics: bool = False,
    quant_storage: torch.dtype = torch.uint8,
) -> tuple[torch.Tensor, QuantState]:
    """``quantize_4bit(..., quant_type="nf4")``."""
    return quantize_4bit(A, absmax, out, blocksize, compress_statistics, "nf4", quant_storage)


def dequantize_4bit(
    A: torch.Tensor,
    quant_state: QuantState | None = None,
    absmax: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    blocksize: int | None = None,
    quant_type: str = "fp4",
) -> torch.Tensor:
    """Decode packed 4-bit codes to ``quant_state.dtype`` with shape ``quant_state.shape``.

    Without a state, ``absmax`` and ``out`` (which gives shape and dtype) are required. A packed
    input of shape ``[1, n]`` (legacy transposed layout) gives a transposed result.
    """
    blocksize = 64 if blocksize is None else blocksize
    if quant_state is None:
        if absmax is None or out is None:
            raise ValueError("bitsandbytes: dequantize_4bit needs quant_state, or both absmax and out")
        quant_state = QuantState(
            absmax=absmax, shape=out.shape, dtype=out.dtype, blocksize=blocksize, quant_type=quant_type
        )
    if quant_state.shape is None or quant_state.dtype is None:
        raise ValueError("bitsandbytes: dequantize_4bit needs a quant_state with shape and dtype")
    _checks.check_blocksize_4bit(quant_state.blocksize)
    _checks.check_quant_type(quant_state.quant_type)
    shape = list(quant_state.shape)
    have, need = A.numel() * A.element_size(), (_checks.prod(shape) + 1) // 2
    if have != need:
        # more bytes than the shape needs means the state does not describe this data (a wrong or
        # tampered shape): decoding a prefix of it would be a silent wrong answer
        raise ValueError(
            f"bitsandbytes: dequantize_4bit: the packed data holds {have} bytes but quant_state.shape "
            f"{tuple(shape)} needs {need}"
        )
    eff_absmax = _resolved_absmax(quant_state).to(torch.float32)
    if out is not None:
        torch.ops.bitsandbytes.dequantize_4bit.out(
            A, eff_absmax, quant_state.blocksize, quant_state.quant_type, shape, quant_state.dtype, out=out
        )
        result = out
    else:
        result = torch.ops.bitsandbytes.dequantize_4bit.default(
            A, eff_absmax, quant_state.blocksize, quant_state.quant_type, shape, quant_state.dtype
        )
    if A.dim() == 2 and A.shape[0] == 1 and A.shape[1] > 1:  # (1, 1) is the usual (n, 1) layout
        return result.t()
    return result


def dequantize_fp4(
    A: torch.Tensor,
    quant_state: QuantState | None = None,
    absmax: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    blocksize: int | None = None,
) -> torch.Tensor:
    """``dequantize_4bit(..., quant_type="fp4")``."""
    return dequantize_4bit(A, quant_state, absmax, out, blocksize, "fp4")


def dequantize_nf4(
    A: torch.Tensor,
    quant_state: QuantState | None = None,
    absmax: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    blocksize: int | None = None,
) -> torch.Tensor:
    """``dequantize_4bit(..., quant_type="nf4")``."""
    return dequantize_4bit(A, quant_state, absmax, out, blocksize, "nf4")


def _as_packed_bytes(B: torch.Tensor) -> torch.Tensor:
    """Packed 4-bit data as an ``(n, 1)`` column in a storage dtype the ops accept."""
    if not (B.dim() == 2 and B.shape[1] == 1):  # already a column (the usual weight): no new view
        B = B.reshape(-1, 1)
    if B.dtype == torch.int8:
        B = B.view(torch.uint8)
    return B


def gemv_4bit(
    A: torch.Tensor,
    B: torch.Tensor,
    out: torch.Tensor | None = None,
    transposed_A: bool = False,
    transposed_B: bool = False,
    state: QuantState | None = None,
) -> torch.Tensor:
    """``A @ dequant(B).T`` for a packed ``[N, K]`` weight described by ``state``; output in ``A.dtype``."""
    if state is None:
        raise ValueError("bitsandbytes: gemv_4bit needs the weight's quant state (state=...)")
    if state.shape is None or len(state.shape) != 2:
        raise ValueError(f"bitsandbytes: gemv_4bit needs a 2-D weight state, got shape {state.shape}")
    eff_absmax = _resolved_absmax(state).to(torch.float32)
    code = state.code.to(A.device)
    Bp = _as_packed_bytes(B)
    if out is not None:
        torch.ops.bitsandbytes.gemv_4bit.out(A, Bp, list(state.shape), eff_absmax, code, state.blocksize, out=out)
        return out
    return torch.ops.bitsandbytes.gemv_4bit.default(A, Bp, list(state.shape), eff_absmax, code, state.blocksize)


def _gemm_4bit(A: torch.Tensor, B: torch.Tensor, quant_state: QuantState, bias: torch.Tensor | None) -> torch.Tensor:
    """``A @ dequant(B).T + bias`` through the ``gemm_4bit`` op (nested absmax passed through when possible)."""
    Bp = _as_packed_bytes(B)
    shape = list(quant_state.shape)
    if bias is not None and bias.dtype != A.dtype:
        bias = bias.to(A.dtype)
    if quant_state.nested and quant_state.state2.blocksize == 256:
        s2 = quant_state.state2
        absmax, absmax_8bit = s2.absmax.float(), quant_state.absmax
        code, offset = s2.code.to(A.device), quant_state.offset.reshape(()).float()
        gemm = _direct.kernel("gemm_4bit", A, Bp, absmax, bias, absmax_8bit, code, offset)
        gemm = gemm or torch.ops.bitsandbytes.gemm_4bit.default
        return gemm(
            A, Bp, shape, absmax, quant_state.blocksize, quant_state.quant_type, bias, absmax_8bit, code, offset
        )
    absmax = _resolved_absmax(quant_state)
    if absmax.dtype != torch.float32:
        absmax = absmax.float()
    # This call runs once per quantized layer and decoded token: past the dispatcher where the
    # dispatcher would run the same kernel (_direct).
    gemm = _direct.kernel("gemm_4bit", A, Bp, absmax, bias) or torch.ops.bitsandbytes.gemm_4bit.default
    return gemm(A, Bp, shape, absmax, quant_state.blocksize, quant_state.quant_type, bias)
