"""8-bit block-wise quantization with a code book (the dynamic map by default), nested or not, and
the resolution of a (nested) state's absmax that the 4-bit functions share.

``bitsandbytes.functional`` re-exports everything here.
"""

from __future__ import annotations

import torch

from . import _checks
from ._functional_codebooks import _dynamic_code
from ._quant_state import QuantState


def quantize_blockwise(
    A: torch.Tensor,
    code: torch.Tensor | None = None,
    absmax: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    blocksize: int = 4096,
    nested: bool = False,
) -> tuple[torch.Tensor, QuantState]:
    """Quantize ``A`` to 8-bit codes of ``code`` (default: signed dynamic map) with per-block absmax.

    With ``nested`` the absmax itself is quantized again (mean-centred, same blocksize).
    """
    _checks.check_positive_blocksize(blocksize)
    _checks.check_dtype(A, "A", _checks.FLOAT_DTYPES)
    if nested and absmax is not None:
        raise ValueError("bitsandbytes: absmax= cannot be filled with nested=True (it is quantized)")
    if code is None:
        code = _dynamic_code(A.device)
        q, _absmax = torch.ops.bitsandbytes.quantize_blockwise(A, code, blocksize)  # ascending
    else:
        code = code.to(A.device)
        q, _absmax = _quantize_codes(A, code, blocksize)
    # both preallocated tensors are checked before either is written: a refused call changes nothing
    _check_fill(A, out, q, "out")
    _check_fill(A, absmax, _absmax, "absmax")
    if out is not None:
        q = out.copy_(q)
    if nested:
        # the mean of no scales is 0, not NaN: a checkpoint holds it, and loading refuses NaN
        offset = _absmax.mean() if _absmax.numel() else _absmax.new_zeros(())
        qabsmax, state2 = quantize_blockwise(_absmax - offset, blocksize=blocksize, nested=False)
        state = QuantState(
            absmax=qabsmax, code=code.clone(), blocksize=blocksize, dtype=A.dtype, offset=offset, state2=state2
        )
    else:
        if absmax is not None:
            _absmax = absmax.copy_(_absmax)
        state = QuantState(absmax=_absmax, code=code.clone(), blocksize=blocksize, dtype=A.dtype)
    return q, state


def _check_fill(A: torch.Tensor, given: torch.Tensor | None, result: torch.Tensor, arg: str) -> None:
    """Checks of a preallocated tensor that receives ``result``: its shape, dtype and device.

    A tensor on another device than ``A`` is refused, as torch refuses an ``out=`` there: the
    copy would move the result to that device (on ``meta`` it would be lost) without a word.
    """
    if given is None:
        return
    _checks.check_out(given, result.shape, result.dtype)
    if given.device != A.device:
        raise RuntimeError(f"bitsandbytes: {arg} must be on {A.device} (the device of A), got {given.device}")


def _is_concrete(t: torch.Tensor) -> bool:
    """Whether ``t``'s values can be read here: not a meta or fake tensor, not while compiling."""
    from torch._subclasses.fake_tensor import FakeTensor

    return not (t.device.type == "meta" or isinstance(t, FakeTensor) or torch.compiler.is_compiling())


def _quantize_codes(A: torch.Tensor, code: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``quantize_blockwise`` op for a code book in any order: indices into ``code`` itself.

    The kernels find the nearest entry by bisection of an ascending table. A table in another
    order (a descending one, or ``create_linear_map(signed=False, total_bits<8)``, whose padding
    zeros sit in the middle) would give codes far from the nearest entry without an error, so
    such a table is quantized against its sorted copy and the codes mapped back to its indices.
    """
    op = torch.ops.bitsandbytes.quantize_blockwise
    if (
        code.dim() != 1
        or code.numel() != 256
        or not _is_concrete(code)
        or bool((code[1:] >= code[:-1]).all())
        or not bool(torch.isfinite(code).all())
    ):
        return op(A, code, blocksize)  # ascending, or refused by the op's own checks (at the caller's index)
    ordered, order = code.sort(stable=True)
    q, absmax = op(A, ordered, blocksize)
    return order.to(torch.uint8)[q.long()], absmax


def _resolved_absmax(quant_state: QuantState) -> torch.Tensor:
    """The f32 per-block absmax of a state, undoing double quantization when nested."""
    if not quant_state.nested:
        if not quant_state.absmax.is_floating_point():
            # u8 codes of a nested absmax whose state2 was lost: decoding them as scales is garbage
            raise ValueError(
                f"bitsandbytes: the absmax of a quant state without nested statistics (state2) must be "
                f"floating point, got {quant_state.absmax.dtype}"
            )
        return quant_state.absmax
    absmax = dequantize_blockwise(quant_state.absmax, quant_state.state2)
    offset = quant_state.offset.to(absmax.device)
    if (
        absmax.dtype == torch.float32
        and offset.dtype == torch.float32
        and offset.numel() == 1
        and offset.dim() <= 1
        and not absmax.requires_grad  # of a state from an input requiring grad: in the graph
    ):
        # the new decoded tensor takes the offset in place: the same sums as ``absmax + offset``
        # without a second absmax-sized temporary (4 bytes per block of the weight)
        return absmax.add_(offset)
    return (absmax + offset).float()


def dequantize_blockwise(
    A: torch.Tensor,
    quant_state: QuantState | None = None,
    absmax: torch.Tensor | None = None,
    code: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    blocksize: int = 4096,
    nested: bool = False,
) -> torch.Tensor:
    """Decode 8-bit block-wise codes; needs ``quant_state`` or ``absmax`` (then f32 output)."""
    if quant_state is None and absmax is None:
        raise ValueError("bitsandbytes: dequantize_blockwise needs quant_state or absmax")
    if quant_state is None:
        code = _dynamic_code(A.device) if code is None else code
        quant_state = QuantState(absmax=absmax, code=code, blocksize=blocksize, dtype=torch.float32)
    eff_absmax = _resolved_absmax(quant_state).to(torch.float32)
    code = quant_state.code.to(A.device)
    dtype = quant_state.dtype or torch.float32
    if out is not None:
        torch.ops.bitsandbytes.dequantize_blockwise.out(A, eff_absmax, code, quant_state.blocksize, dtype, out=out)
        return out
    return torch.ops.bitsandbytes.dequantize_blockwise.default(A, eff_absmax, code, quant_state.blocksize, dtype)
