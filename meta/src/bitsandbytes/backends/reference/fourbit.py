"""Reference 4-bit kernels (NF4 / FP4): quantize, dequantize, gemv and gemm."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ... import _checks as C
from .blockwise import dequantize_blockwise, inverse_absmax
from .codebooks import four_bit_decode_table, four_bit_lookup, nearest_code


def _blockwise_scaled(A: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Flatten ``A`` to f32 blocks; return (values scaled into [-1, 1], absmax, n)."""
    x = A.reshape(-1).float()
    n = x.numel()
    blocks = C.num_blocks(n, blocksize)
    pad = blocks * blocksize - n
    if pad:
        x = torch.nn.functional.pad(x, (0, pad))
    xb = x.view(blocks, blocksize)
    absmax = xb.abs().amax(dim=1)
    scaled = (xb * inverse_absmax(absmax)[:, None]).clamp(-1.0, 1.0)
    return scaled.view(-1), absmax, n


def quantize_4bit(
    A: torch.Tensor, blocksize: int, quant_type: str, quant_storage: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pack ``A`` into 4-bit codes (two per byte, element 2i in the high nibble) plus f32 absmax."""
    C.check_quantize_4bit(A, blocksize, quant_type, quant_storage)
    scaled, absmax, n = _blockwise_scaled(A, blocksize)
    mids, sorted_codes = four_bit_lookup(quant_type, A.device)
    codes = sorted_codes[nearest_code(scaled, mids)][:n]
    if n % 2:
        # The missing partner of the last element encodes 0.0.
        codes = torch.cat([codes, sorted_codes[nearest_code(scaled.new_zeros(1), mids)]])
    packed = (codes[0::2] << 4) | codes[1::2]
    packed = packed.view(quant_storage).reshape(-1, 1)
    return packed, absmax


def _unpack_codes(A: torch.Tensor, n: int) -> torch.Tensor:
    raw = A.contiguous().view(torch.uint8).reshape(-1)
    return torch.stack([raw >> 4, raw & 0x0F], dim=1).reshape(-1)[:n].long()


def _dequantize_flat(
    A: torch.Tensor, absmax: torch.Tensor, blocksize: int, table: torch.Tensor, n: int
) -> torch.Tensor:
    codes = _unpack_codes(A, n)
    # A block longer than the tensor is one block of n values: repeating each scale blocksize
    # times would allocate that many (gemv_4bit takes any positive block size, 2**62 included).
    scale = absmax.float().repeat_interleave(min(blocksize, max(n, 1)))[:n]
    return table.to(A.device)[codes] * scale


def dequantize_4bit(
    A: torch.Tensor, absmax: torch.Tensor, blocksize: int, quant_type: str, shape: Sequence[int], dtype: torch.dtype
) -> torch.Tensor:
    """Decode packed 4-bit codes: ``table[code] * absmax[block]`` in f32, cast to ``dtype``."""
    C.check_dequantize_4bit(A, absmax, blocksize, quant_type, shape, dtype)
    return _decode_4bit(A, absmax, blocksize, quant_type, shape, dtype)


def _decode_4bit(
    A: torch.Tensor, absmax: torch.Tensor, blocksize: int, quant_type: str, shape: Sequence[int], dtype: torch.dtype
) -> torch.Tensor:
    """``dequantize_4bit`` of checked arguments."""
    out = _dequantize_flat(A, absmax, blocksize, four_bit_decode_table(quant_type), C.prod(shape))
    return out.to(dtype).reshape(shape)


def dequantize_4bit_out(
    A: torch.Tensor,
    absmax: torch.Tensor,
    blocksize: int,
    quant_type: str,
    shape: Sequence[int],
    dtype: torch.dtype,
    out: torch.Tensor,
) -> None:
    """``dequantize_4bit`` into a preallocated ``out``."""
    C.check_out(out, shape, dtype)
    C.check_same_device({"A": A, "out": out})
    out.copy_(dequantize_4bit(A, absmax, blocksize, quant_type, shape, dtype))


def gemv_4bit(
    A: torch.Tensor, B: torch.Tensor, shapeB: Sequence[int], absmax: torch.Tensor, code: torch.Tensor, blocksize: int
) -> torch.Tensor:
    """``A @ dequant(B).T`` where B holds a packed ``shapeB = [N, K]`` weight decoded with ``code``."""
    C.check_gemv_4bit(A, B, shapeB, absmax, code, blocksize)
    n = shapeB[0] * shapeB[1]
    W = _dequantize_flat(B, absmax, blocksize, code.float(), n).view(shapeB[0], shapeB[1])
    return torch.nn.functional.linear(A, W.to(A.dtype))


def gemv_4bit_out(
    A: torch.Tensor,
    B: torch.Tensor,
    shapeB: Sequence[int],
    absmax: torch.Tensor,
    code: torch.Tensor,
    blocksize: int,
    out: torch.Tensor,
) -> None:
    """``gemv_4bit`` into a preallocated ``out``."""
    shape = (*A.shape[:-1], shapeB[0])
    C.check_out(out, shape, A.dtype)
    out.copy_(gemv_4bit(A, B, shapeB, absmax, code, blocksize))


def resolve_nested_absmax(
    absmax: torch.Tensor,
    absmax_8bit: torch.Tensor | None,
    absmax_code: torch.Tensor | None,
    absmax_offset: torch.Tensor | None,
) -> torch.Tensor:
    """The effective f32 absmax of a nested (double-quantized) state, or ``absmax`` itself."""
    if absmax_8bit is None:
        return absmax
    C.check_nested_absmax(absmax, absmax_8bit, absmax_code, absmax_offset)
    return decode_nested_absmax(absmax, absmax_8bit, absmax_code, absmax_offset, dequantize_blockwise)


def decode_nested_absmax(
    absmax: torch.Tensor,
    absmax_8bit: torch.Tensor,
    absmax_code: torch.Tensor,
    absmax_offset: torch.Tensor,
    dequantize: Callable[..., torch.Tensor],
) -> torch.Tensor:
    """The f32 scales of checked nested parts (``check_nested_absmax``) through a platform's
    block-wise ``dequantize`` (the ``dequantize_blockwise`` op's arguments): the codes decoded in
    blocks of 256, plus the one offset value."""
    decoded = dequantize(absmax_8bit, absmax, absmax_code, 256, torch.float32)  # a fresh tensor
    return decoded.add_(absmax_offset.float().reshape(()))


def cached_nested_absmax(
    absmax: torch.Tensor,
    absmax_8bit: torch.Tensor | None,
    absmax_code: torch.Tensor | None,
    absmax_offset: torch.Tensor | None,
    dequantize: Callable[..., torch.Tensor],
    slot: str,
) -> torch.Tensor:
    """``resolve_nested_absmax`` through a platform's block-wise ``dequantize`` (the
    ``dequantize_blockwise`` op's arguments), done once per weight and kept on ``absmax_8bit``
    under the attribute ``slot`` (4 bytes per block of the weight, 1/16 byte per weight at block
    size 64): re-resolving on every call would cost a decoded token one dequantization per layer.
    Any in-place change of the inputs (their version counters) or other inputs resolve it again;
    the key holds each input's layout too, since two views of one storage (one version counter)
    can start at the same address with the same size and hold different values (``x[:n]``,
    ``x[::2]``). A write through ``.data`` (a tensor with a version counter of its own) is not
    seen: quant-state tensors are replaced, not edited so. CPU inputs in shared memory are
    resolved on every call: another process's in-place writes advance no version counter here
    (torch calls every GPU storage shared, and GPU tensors are not written so across processes)."""
    if absmax_8bit is None:
        return absmax
    C.check_nested_absmax(absmax, absmax_8bit, absmax_code, absmax_offset)
    try:
        inputs = (absmax_8bit, absmax, absmax_code, absmax_offset)
        if C.in_shared_cpu_memory(*inputs):
            key = None  # another process may write these in place, which advances no counter here
        else:
            key = tuple((t.data_ptr(), t._version, t.shape, t.stride(), t.dtype) for t in inputs)
        hit = getattr(absmax_8bit, slot, None) if key is not None else None
        if hit is not None and hit[0] == key:
            return hit[1]
    except (RuntimeError, AttributeError, NotImplementedError):  # no storage or version (tracing, vmap)
        key = None
    resolved = decode_nested_absmax(absmax, absmax_8bit, absmax_code, absmax_offset, dequantize)
    if key is not None:
        try:
            setattr(absmax_8bit, slot, (key, resolved))
        except (RuntimeError, AttributeError):
            pass
    return resolved


def gemm_4bit(
    A: torch.Tensor,
    B: torch.Tensor,
    shapeB: Sequence[int],
    absmax: torch.Tensor,
    blocksize: int,
    quant_type: str,
    bias: torch.Tensor | None = None,
    absmax_8bit: torch.Tensor | None = None,
    absmax_code: torch.Tensor | None = None,
    absmax_offset: torch.Tensor | None = None,
) -> torch.Tensor:
    """``A @ dequant(B).T + bias`` with an optionally nested absmax."""
    C.check(len(shapeB) == 2, f"bitsandbytes: shapeB must have 2 dimensions, got {list(shapeB)}")
    C.check_has_dim(A, "A")
    C.check(
        A.shape[-1] == shapeB[1],
        f"bitsandbytes: A's last dimension ({A.shape[-1]}) must equal shapeB[1] ({shapeB[1]})",
    )
    C.check_dtype(A, "A", C.FLOAT_DTYPES)
    C.check_dtype(B, "B", (torch.uint8, torch.bfloat16, torch.float16, torch.float32))
    eff = resolve_nested_absmax(absmax, absmax_8bit, absmax_code, absmax_offset)
    scales = "absmax" if absmax_8bit is None else "absmax_8bit"
    C.check_dequantize_4bit(B, eff, blocksize, quant_type, list(shapeB), A.dtype, "B", "shapeB", scales)
    W = _decode_4bit(B, eff, blocksize, quant_type, list(shapeB), A.dtype)
    if bias is not None:
        C.check(
            bias.dim() == 1 and bias.shape[0] == shapeB[0],
            f"bitsandbytes: bias must have shape ({shapeB[0]},), got {tuple(bias.shape)}",
        )
        bias = bias.to(A.dtype)
    return torch.nn.functional.linear(A, W, bias)
