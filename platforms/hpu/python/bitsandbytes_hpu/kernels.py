"""Gaudi kernels for 4-bit, block-wise 8-bit and LLM.int8() quantization: PyTorch tensor programs.

Gaudi runs PyTorch by handing whole graphs of tensor ops to its graph compiler, which fuses them
into TPC kernels and MME matmuls. A kernel written for that compiler follows three rules, and
every function here does (``tests/test_hpu_platform.py`` traces each one and fails on a break):

* static shapes: every intermediate's shape follows from the input shapes and the scalar
  arguments (block size, quant type), never from tensor values;
* no data-dependent Python control flow: Python branches only on shapes, dtypes and scalar
  arguments, never on a tensor's value (no ``bool(tensor)``, no ``if t.any()``);
* no host synchronisation: no ``.item()``, ``.tolist()``, ``nonzero`` or ``torch.equal``. The
  one exception is the list of outlier columns of the LLM.int8() ops with ``threshold > 0``,
  whose length the op's schema makes data-dependent; it is computed last, from a mask that
  nothing else depends on.

The nearest-code search is a branchless binary search (compare, select and gather from a table
of 15 or 255 midpoints), ops the TPC fuser merges with the scaling around them, instead of
``torch.searchsorted``. Indices are int32 (Gaudi's native integer width).

The arithmetic is the reference backend's, operation for operation, so on CPU tensors the codes
are bit-identical and the floats equal (``BNB_TEST_HOST_KERNELS=hpu``). ``dequantize_4bit`` uses
Gaudi's ``torch.ops.hpu.dequantize_nf4`` when the runtime has it (see ``_gaudi``).
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Sequence

import torch

from bitsandbytes import _checks as C
from bitsandbytes.backends.reference.blockwise import inverse_absmax
from bitsandbytes.backends.reference.codebooks import FP4_DECODE_VALUES, FP4_VALUES, NF4_VALUES, midpoints
from bitsandbytes.backends.reference.fourbit import _blockwise_scaled, decode_nested_absmax

from . import _gaudi

# ----------------------------------------------------------------------------------- helpers


def nearest_index(x: torch.Tensor, mids: torch.Tensor) -> torch.Tensor:
    """int32 index into the ascending table whose midpoints are ``mids`` of the entry nearest to
    each value of ``x``: the number of midpoints strictly below the value.

    Equal to ``torch.searchsorted(mids, x)`` (a value on a midpoint takes the lower entry, NaN
    the last), computed as a branchless binary search: ``len(mids)`` must be ``2**k - 1``.
    """
    steps = len(mids) + 1
    if steps & (steps - 1):
        raise ValueError(f"bitsandbytes_hpu: {len(mids)} midpoints; the search needs 2**k - 1")
    pos = torch.zeros(x.shape, dtype=torch.int32, device=x.device)
    step = steps // 2
    while step:
        cand = pos + step
        below = mids.index_select(0, (cand - 1).reshape(-1)).view(x.shape) < x
        pos = torch.where(below, cand, pos)
        step //= 2
    return torch.where(torch.isnan(x), steps - 1, pos)


def _f32(x: float) -> float:
    """``x`` rounded to the nearest f32 value."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


@functools.cache
def four_bit_constants(quant_type: str) -> tuple[tuple[float, ...], tuple[int, ...], tuple[float, ...]]:
    """(f32 midpoints of the ascending table, code of each ascending entry, decode table) of
    ``quant_type``, as Python numbers.

    The same values as the reference's ``four_bit_lookup`` (stable sort, f32 midpoints), computed
    without torch so that they can be cached safely: a kernel traced into a graph before any
    eager call would otherwise cache the tracer's tensors.
    """
    values = [_f32(v) for v in {"nf4": NF4_VALUES, "fp4": FP4_VALUES}[quant_type]]
    order = sorted(range(16), key=values.__getitem__)  # stable: code 0 before code 8 for FP4
    ascending = [values[i] for i in order]
    # a + b of two f32 values is exact in f64; rounding it once to f32 is f32 addition; / 2 is exact.
    mids = tuple(_f32(a + b) / 2 for a, b in zip(ascending[:-1], ascending[1:]))
    decode = tuple(_f32(v) for v in {"nf4": NF4_VALUES, "fp4": FP4_DECODE_VALUES}[quant_type])
    return mids, tuple(order), decode


def _four_bit_tables(quant_type: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(midpoints, code of each ascending entry, decode table) as tensors on ``device``: constants
    of the graph, 47 numbers copied with it."""
    mids, codes, decode = four_bit_constants(quant_type)
    return (
        torch.tensor(mids, dtype=torch.float32, device=device),
        torch.tensor(codes, dtype=torch.uint8, device=device),
        torch.tensor(decode, dtype=torch.float32, device=device),
    )


def _block_scale(absmax: torch.Tensor, blocksize: int, n: int) -> torch.Tensor:
    """``absmax[i // blocksize]`` for i < n, as a broadcast (no ``repeat_interleave``)."""
    blocks = C.num_blocks(n, blocksize)
    width = C.block_width(n, blocksize)
    return absmax.reshape(-1)[:blocks].float().unsqueeze(1).expand(blocks, width).reshape(-1)[:n]


def _packed_bytes(A: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``ceil(n/2)`` bytes of packed 4-bit storage of any dtype."""
    return A.contiguous().view(torch.uint8).reshape(-1)[: (n + 1) // 2]


def swap_nibbles(raw: torch.Tensor) -> torch.Tensor:
    """Each byte with its two nibbles exchanged (uint8)."""
    return (raw >> 4) | (raw << 4)


# ------------------------------------------------------------------------------------- 4-bit


def quantize_4bit(
    A: torch.Tensor, blocksize: int, quant_type: str, quant_storage: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pack ``A`` into 4-bit codes (element 2i in the high nibble) plus f32 absmax per block."""
    C.check_quantize_4bit(A, blocksize, quant_type, quant_storage)
    scaled, absmax, n = _blockwise_scaled(A, blocksize)
    mids, sorted_codes, _ = _four_bit_tables(quant_type, A.device)
    codes = sorted_codes.index_select(0, nearest_index(scaled, mids))[:n]
    if n % 2:
        # The missing partner of the last element encodes 0.0 (whatever its block's scale).
        zero = sorted_codes.index_select(0, nearest_index(scaled.new_zeros(1), mids))
        codes = torch.cat([codes, zero])
    packed = (codes[0::2] << 4) | codes[1::2]
    return packed.view(quant_storage).reshape(-1, 1), absmax


def _dequantize_codes(
    A: torch.Tensor, absmax: torch.Tensor, blocksize: int, table: torch.Tensor, n: int
) -> torch.Tensor:
    """f32 ``table[code] * absmax[block]`` of the first ``n`` packed codes."""
    raw = _packed_bytes(A, n)
    codes = torch.stack([raw >> 4, raw & 0x0F], dim=1).reshape(-1)[:n].to(torch.int32)
    return table.float().index_select(0, codes) * _block_scale(absmax, blocksize, n)


GAUDI_NF4_STORAGE = (torch.uint8, torch.bfloat16)
GAUDI_NF4_DTYPES = (torch.bfloat16, torch.float32)
"""What ``torch.ops.hpu.dequantize_nf4`` is documented and tested with (uint8 packed input, the
bf16 storage read as its bytes; bf16 and f32 outputs). Anything else runs the tensor program."""


def uses_gaudi_nf4(A: torch.Tensor, quant_type: str, n: int, dtype: torch.dtype) -> bool:
    """Whether ``dequantize_4bit`` hands these arguments to Gaudi's NF4 op: NF4, uint8 or bf16
    storage, a bf16 or f32 output, an even element count, and the op present with a known
    software version (the nibble order depends on it)."""
    return (
        quant_type == "nf4"
        and A.dtype in GAUDI_NF4_STORAGE
        and dtype in GAUDI_NF4_DTYPES
        and n > 0
        and n % 2 == 0
        and _gaudi.gaudi_ops().dequantize_nf4 is not None
    )


def dequantize_4bit(
    A: torch.Tensor, absmax: torch.Tensor, blocksize: int, quant_type: str, shape: Sequence[int], dtype: torch.dtype
) -> torch.Tensor:
    """Decode packed 4-bit codes: ``table[code] * absmax[block]``, shaped ``shape`` in ``dtype``.

    NF4 goes to ``torch.ops.hpu.dequantize_nf4`` where the runtime has it (bytes nibble-swapped
    for Gaudi software older than 1.22; the op scales by absmax in ``dtype``, so bf16 results
    agree with the reference within bf16 rounding); everything else is the tensor program.
    """
    C.check_dequantize_4bit(A, absmax, blocksize, quant_type, shape, dtype)
    n = C.prod(shape)
    if uses_gaudi_nf4(A, quant_type, n, dtype):
        ops = _gaudi.gaudi_ops()
        raw = _packed_bytes(A, n)
        if ops.swap_nibbles:
            raw = swap_nibbles(raw)
        blocks = C.num_blocks(n, blocksize)
        out = ops.dequantize_nf4(raw, absmax.reshape(-1)[:blocks].to(dtype), blocksize, out_shape=(n,), out_dtype=dtype)
        return out.reshape(shape)
    table = _four_bit_tables(quant_type, A.device)[2]
    return _dequantize_codes(A, absmax, blocksize, table, n).to(dtype).reshape(shape)


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
    """``A @ dequant(B).T`` with B decoded by ``code``: dequantize, then one matmul in A's dtype
    (on Gaudi the decode fuses into a TPC kernel that feeds the MME)."""
    C.check_gemv_4bit(A, B, shapeB, absmax, code, blocksize)
    n = shapeB[0] * shapeB[1]
    W = _dequantize_codes(B, absmax, blocksize, code, n).view(shapeB[0], shapeB[1])
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
    C.check_out(out, (*A.shape[:-1], shapeB[0]), A.dtype)
    out.copy_(gemv_4bit(A, B, shapeB, absmax, code, blocksize))


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
    """``A @ dequant(B).T + bias`` in A's dtype, a nested absmax resolved first (8-bit
    dequantize plus offset); NF4 weights decode through Gaudi's op where it applies."""
    C.check(len(shapeB) == 2, f"bitsandbytes: shapeB must have 2 dimensions, got {list(shapeB)}")
    C.check_has_dim(A, "A")
    C.check(
        A.shape[-1] == shapeB[1],
        f"bitsandbytes: A's last dimension ({A.shape[-1]}) must equal shapeB[1] ({shapeB[1]})",
    )
    C.check_dtype(A, "A", C.FLOAT_DTYPES)
    C.check_dtype(B, "B", (torch.uint8, torch.bfloat16, torch.float16, torch.float32))
    if bias is not None:
        C.check(
            bias.dim() == 1 and bias.shape[0] == shapeB[0],
            f"bitsandbytes: bias must have shape ({shapeB[0]},), got {tuple(bias.shape)}",
        )
        bias = bias.to(A.dtype)
    C.check_blocksize_4bit(blocksize)
    C.check_4bit_weight(list(shapeB), B, blocksize, absmax, absmax_8bit, absmax_code, absmax_offset)
    if absmax_8bit is not None:
        absmax = decode_nested_absmax(absmax, absmax_8bit, absmax_code, absmax_offset, dequantize_blockwise)
    W = dequantize_4bit(B, absmax, blocksize, quant_type, list(shapeB), A.dtype)
    return torch.nn.functional.linear(A, W, bias)


# ----------------------------------------------------------------------------- block-wise 8-bit


def quantize_blockwise(A: torch.Tensor, code: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each element to the nearest entry of the sorted 256-entry ``code`` after per-block absmax
    scaling (an 8-step branchless search)."""
    C.check_quantize_blockwise(A, code, blocksize)
    x = A.reshape(-1).float()
    n = x.numel()
    blocks = C.num_blocks(n, blocksize)
    width = C.block_width(n, blocksize)
    xb = torch.nn.functional.pad(x, (0, blocks * width - n)).view(blocks, width)
    absmax = xb.abs().amax(dim=1)
    scaled = (xb * inverse_absmax(absmax)[:, None]).clamp(-1.0, 1.0).view(-1)[:n]
    codes = nearest_index(scaled, midpoints(code)).to(torch.uint8)
    return codes.view(A.shape), absmax


def dequantize_blockwise(
    A: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, blocksize: int, dtype: torch.dtype
) -> torch.Tensor:
    """``code[A] * absmax[block]`` in f32, cast to ``dtype``, shaped like ``A``."""
    C.check_dequantize_blockwise(A, absmax, code, blocksize, dtype)
    n = A.numel()
    vals = code.index_select(0, A.reshape(-1).to(torch.int32))
    return (vals * _block_scale(absmax, blocksize, n)).to(dtype).view(A.shape)


def dequantize_blockwise_out(
    A: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, blocksize: int, dtype: torch.dtype, out: torch.Tensor
) -> None:
    """``dequantize_blockwise`` into a preallocated ``out``."""
    C.check_out(out, A.shape, dtype)
    out.copy_(dequantize_blockwise(A, absmax, code, blocksize, dtype))


# ------------------------------------------------------------------------------------ LLM.int8()


def _int8_quantize(
    A: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(rows in f32, |rows| with outliers zeroed, row absmax, row-wise int8 codes with outlier
    columns zeroed, outlier-column mask or None): every output static in shape."""
    C.check_dtype(A, "A", C.FLOAT_DTYPES)
    C.check(A.dim() >= 1, "bitsandbytes: A must have at least one dimension")
    C.check(threshold >= 0.0, f"bitsandbytes: threshold must be >= 0, got {threshold}")
    rows = C.int8_matrix(A).float()
    absA = rows.abs()
    col_mask = None
    if threshold > 0.0:
        outliers = absA >= threshold
        absA = absA.masked_fill(outliers, 0.0)
        col_mask = outliers.any(dim=0)
    row_stats = absA.amax(dim=1) if rows.shape[1] else rows.new_zeros(rows.shape[0])
    return rows, absA, row_stats, _int8_codes(rows, row_stats[:, None], col_mask), col_mask


def _int8_codes(rows: torch.Tensor, stats: torch.Tensor, col_mask: torch.Tensor | None) -> torch.Tensor:
    """``round(x * 127 / stat)`` as int8 (0 where the statistic is 0 or the value NaN), the
    outlier columns zeroed; ``stats`` broadcasts along rows or columns."""
    q = torch.round(rows * (127.0 / stats))
    q = torch.where(stats == 0, 0.0, q).clamp(-127, 127).nan_to_num(0.0)
    out = q.to(torch.int8)
    return out.masked_fill(col_mask[None, :], 0) if col_mask is not None else out


def _outlier_columns(col_mask: torch.Tensor | None) -> torch.Tensor | None:
    """The outlier column indices (int64): the op schema's one data-dependent output, last."""
    return None if col_mask is None else torch.argwhere(col_mask).view(-1)


def int8_vectorwise_quant(
    A: torch.Tensor, threshold: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Row-wise absmax int8 quantization; columns with ``|A| >= threshold`` are outliers (zeroed)."""
    _, _, row_stats, out, col_mask = _int8_quantize(A, threshold)
    return out.view(A.shape), row_stats, _outlier_columns(col_mask)


def int8_double_quant(
    A: torch.Tensor, threshold: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Row-wise and column-wise int8 quantization in one pass; outlier columns zero in both."""
    rows, absA, row_stats, CA, col_mask = _int8_quantize(A, threshold)
    col_stats = absA.amax(dim=0) if rows.shape[0] else rows.new_zeros(rows.shape[1])
    CAt = _int8_codes(rows, col_stats[None, :], col_mask)
    return CA.view(A.shape), CAt.view(A.shape), row_stats, col_stats, _outlier_columns(col_mask)
