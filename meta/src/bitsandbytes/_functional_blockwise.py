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
    code = _dynamic_code(A.device) if code is None else code.to(A.device)
    q, _absmax = torch.ops.bitsandbytes.quantize_blockwise(A, code, blocksize)
    if out is not None:
        _checks.check_out(out, q.shape, q.dtype)
        out.copy_(q)
        q = out
    if nested:
        offset = _absmax.mean()
        qabsmax, state2 = quantize_blockwise(_absmax - offset, blocksize=blocksize, nested=False)
        state = QuantState(
            absmax=qabsmax, code=code.clone(), blocksize=blocksize, dtype=A.dtype, offset=offset, state2=state2
        )
    else:
        if absmax is not None:
            _checks.check_out(absmax, _absmax.shape, _absmax.dtype)
            absmax.copy_(_absmax)
            _absmax = absmax
        state = QuantState(absmax=_absmax, code=code.clone(), blocksize=blocksize, dtype=A.dtype)
    return q, state


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
    if absmax.dtype == torch.float32 and offset.dtype == torch.float32 and offset.numel() == 1 and offset.dim() <= 1:
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
