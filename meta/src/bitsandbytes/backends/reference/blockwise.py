"""Reference block-wise 8-bit kernels with an arbitrary sorted 256-entry code."""

from __future__ import annotations

import functools

import torch

from ... import _checks as C
from .codebooks import midpoints, nearest_code

# 1 / 1e-38 in f32, written out: where subnormals read as zero (torch.set_flush_denormal(True))
# the subnormal 1e-38 is 0 at run time (shared/include/bnb/numeric.h has the same rule).
INVERSE_ABSMAX_FLOOR = 1.0000001e38


def inverse_absmax(absmax: torch.Tensor) -> torch.Tensor:
    """1 / max(absmax, 1e-38) per block, NaN kept. A zero absmax is tested as such: under
    torch.set_flush_denormal(True) ``absmax < 1e-38`` is false for 0, and 1 / 0 would give a zero
    block NaN codes."""
    return torch.where((absmax < 1e-38) | (absmax == 0), INVERSE_ABSMAX_FLOOR, 1.0 / absmax)


def quantize_blockwise(A: torch.Tensor, code: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Map each element to the nearest entry of ``code`` after per-block absmax scaling."""
    C.check_quantize_blockwise(A, code, blocksize)
    C.check_code_ascending(code)  # the search below needs it (functional.quantize_blockwise sorts)
    x = A.reshape(-1).float()
    n = x.numel()
    blocks = C.num_blocks(n, blocksize)
    width = C.block_width(n, blocksize)
    xb = torch.nn.functional.pad(x, (0, blocks * width - n)).view(blocks, width)
    absmax = xb.abs().amax(dim=1)
    scaled = (xb * inverse_absmax(absmax)[:, None]).clamp(-1.0, 1.0).view(-1)[:n]
    codes = nearest_code(scaled, midpoints(code)).to(torch.uint8)
    return codes.view(A.shape), absmax


def dequantize_blockwise(
    A: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, blocksize: int, dtype: torch.dtype
) -> torch.Tensor:
    """``code[A] * absmax[block]`` in f32, cast to ``dtype``, shaped like ``A``."""
    C.check_dequantize_blockwise(A, absmax, code, blocksize, dtype)
    n = A.numel()
    scale = absmax.repeat_interleave(C.block_width(n, blocksize))[:n]
    out = code[A.reshape(-1).long()] * scale
    return _cast(out, dtype).view(A.shape)


@functools.cache
def _half_nan_is_canonical() -> bool:
    """Whether torch casts an f32 NaN to the f16 quiet NaN 0x7E00 on its one-element path too
    (torch 2.4 and 2.5 write 0x7FFF there, so the NaNs of a tensor's tail differed from its body's)."""
    return int(torch.tensor([float("nan")]).half().view(torch.int16)) == 0x7E00


def _cast(out: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``out.to(dtype)`` with f16 NaNs as 0x7E00 (0xFE00 when negative) whatever torch's version."""
    res = out.to(dtype)
    if dtype == torch.float16 and not _half_nan_is_canonical():
        bits = res.view(torch.int16)
        nan = res.isnan()
        bits.copy_(torch.where(nan, torch.where(bits < 0, -0x200, 0x7E00).to(torch.int16), bits))
    return res


def dequantize_blockwise_out(
    A: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, blocksize: int, dtype: torch.dtype, out: torch.Tensor
) -> None:
    """``dequantize_blockwise`` into a preallocated ``out``."""
    C.check_out(out, A.shape, dtype)
    out.copy_(dequantize_blockwise(A, absmax, code, blocksize, dtype))
