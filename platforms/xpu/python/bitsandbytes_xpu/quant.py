"""4-bit (NF4/FP4) and block-wise 8-bit quantization and dequantization: Triton kernels + glue.

Per element these compute what the reference kernels compute (codes and absmax bit for bit,
dequantized values bit for bit): absmax = max |x| of the block (NaN if the block holds one),
scale = 1 / max(absmax, 1e-38) correctly rounded, x * scale clamped to [-1, 1], then the nearest
code by counting the midpoints of the sorted table strictly below the value (a tie takes the
lower entry, NaN the last), exactly ``torch.searchsorted`` over the reference's midpoints. The
tables and midpoints are the reference's own (``backends.reference.codebooks``), moved to the
device once.

Races: each program owns whole blocks (quantizers) or a disjoint range of bytes (dequantizers);
no two programs write the same address, so the order in which a GPU runs them cannot matter.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from bitsandbytes import _checks as C
from bitsandbytes.backends.reference.codebooks import four_bit_decode_table, four_bit_lookup, midpoints

from ._launch import (
    LAUNCH,
    OUT_KIND,
    clamp_unit,
    count_below,
    device_guard,
    inverse_absmax,
    mul_cpu_nan,
    nan_absmax,
    nan_max,
    next_pow2,
    store_float,
    store_view,
)

TILE = 4096
"""Elements one program quantizes at a time (whole blocks; one block in slices above this)."""

DEQUANT_BYTES = 1024
"""Packed bytes (2048 outputs) per program of the 4-bit dequantizer; 8-bit: elements per program."""


# ---- Kernels ------------------------------------------------------------------------------------


@triton.jit
def _quantize_4bit_kernel(A, packed, absmax_out, mids, codes, n, nblocks, BS: tl.constexpr, G: tl.constexpr):
    # G blocks of BS elements per program; even elements go to the high nibble.
    HALF: tl.constexpr = BS // 2
    blk = tl.program_id(0) * G + tl.arange(0, G)
    e = blk.to(tl.int64)[:, None] * BS + 2 * tl.arange(0, HALF)[None, :]
    m0 = e < n
    m1 = (e + 1) < n
    x0 = tl.load(A + e, mask=m0, other=0.0).to(tl.float32)
    x1 = tl.load(A + e + 1, mask=m1, other=0.0).to(tl.float32)
    amax = nan_max(nan_absmax(x0, 1), nan_absmax(x1, 1))
    inv = inverse_absmax(amax)[:, None]
    s0 = clamp_unit(x0 * inv)
    s1 = tl.where(m1, clamp_unit(x1 * inv), 0.0)  # an odd n's missing partner encodes 0.0
    c0 = tl.load(codes + count_below(s0, mids, 4)).to(tl.int32)
    c1 = tl.load(codes + count_below(s1, mids, 4)).to(tl.int32)
    tl.store(packed + e // 2, ((c0 << 4) | c1).to(tl.uint8), mask=m0)
    tl.store(absmax_out + blk, amax, mask=blk < nblocks)


@triton.jit
def _dequantize_4bit_kernel(packed, absmax, table, out, n, BS: tl.constexpr, BYTES: tl.constexpr, OUT: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BYTES + tl.arange(0, BYTES)
    e0 = 2 * i
    byte = tl.load(packed + i, mask=e0 < n, other=0).to(tl.int32)
    a0 = tl.load(absmax + e0 // BS, mask=e0 < n, other=0.0)
    a1 = tl.load(absmax + (e0 + 1) // BS, mask=(e0 + 1) < n, other=0.0)
    v0 = mul_cpu_nan(tl.load(table + (byte >> 4)), a0)
    v1 = mul_cpu_nan(tl.load(table + (byte & 15)), a1)
    eo = tl.program_id(0).to(tl.int64) * (2 * BYTES) + tl.arange(0, 2 * BYTES)
    store_float(out + eo, tl.interleave(v0, v1), eo < n, OUT)


@triton.jit
def _quantize_blockwise_kernel(
    A, out, absmax_out, mids, n, nblocks, blocksize, G: tl.constexpr, CW: tl.constexpr, SINGLE: tl.constexpr
):
    # G blocks per program, each read in slices of CW columns (one slice when SINGLE).
    blk = tl.program_id(0) * G + tl.arange(0, G)
    base = blk.to(tl.int64)[:, None] * blocksize
    col = tl.arange(0, CW)[None, :]
    if SINGLE:
        e = base + col
        m = (col < blocksize) & (e < n)
        x = tl.load(A + e, mask=m, other=0.0).to(tl.float32)
        amax = nan_absmax(x, 1)
        s = clamp_unit(x * inverse_absmax(amax)[:, None])
        tl.store(out + e, count_below(s, mids, 8).to(tl.uint8), mask=m)
    else:
        amax = tl.zeros([G], dtype=tl.float32)
        for c0 in range(0, blocksize, CW):
            e = base + c0 + col
            m = (c0 + col < blocksize) & (e < n)
            x = tl.load(A + e, mask=m, other=0.0).to(tl.float32)
            amax = nan_max(amax, nan_absmax(x, 1))
        inv = inverse_absmax(amax)[:, None]
        for c0 in range(0, blocksize, CW):
            e = base + c0 + col
            m = (c0 + col < blocksize) & (e < n)
            x = tl.load(A + e, mask=m, other=0.0).to(tl.float32)
            tl.store(out + e, count_below(clamp_unit(x * inv), mids, 8).to(tl.uint8), mask=m)
    tl.store(absmax_out + blk, amax, mask=blk < nblocks)


@triton.jit
def _dequantize_blockwise_kernel(A, absmax, code, out, n, blocksize, BLOCK: tl.constexpr, OUT: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    q = tl.load(A + i, mask=m, other=0).to(tl.int32)
    a = tl.load(absmax + i // blocksize, mask=m, other=0.0)
    store_float(out + i, mul_cpu_nan(tl.load(code + q), a), m, OUT)


# ---- Tables on the device (the reference's, copied once per device) ------------------------------

_TABLES: dict[tuple, torch.Tensor | tuple[torch.Tensor, torch.Tensor]] = {}


def _four_bit_lookup(quant_type: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    key = ("lookup", quant_type, device)
    hit = _TABLES.get(key)
    if hit is None:
        hit = _TABLES[key] = four_bit_lookup(quant_type, device)
    return hit  # type: ignore[return-value]


def decode_table(quant_type: str, device: torch.device) -> torch.Tensor:
    """The reference's 16-entry decode table of ``quant_type`` on ``device`` (cached)."""
    key = ("decode", quant_type, device)
    hit = _TABLES.get(key)
    if hit is None:
        hit = _TABLES[key] = four_bit_decode_table(quant_type, device)
    return hit  # type: ignore[return-value]


# ---- Glue ---------------------------------------------------------------------------------------


def quantize_4bit(
    A: torch.Tensor, blocksize: int, quant_type: str, quant_storage: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """4-bit quantization (NF4/FP4) of an f32/f16/bf16 tensor: packed codes + f32 absmax."""
    C.check_quantize_4bit(A, blocksize, quant_type, quant_storage)
    A = A.contiguous()
    n = A.numel()
    nblocks = C.num_blocks(n, blocksize)
    packed = torch.empty((n + 1) // 2, dtype=torch.uint8, device=A.device)
    absmax = torch.empty(nblocks, dtype=torch.float32, device=A.device)
    mids, codes = _four_bit_lookup(quant_type, A.device)
    g = max(1, TILE // blocksize)
    with device_guard(A):
        _quantize_4bit_kernel[(triton.cdiv(nblocks, g),)](
            A, packed, absmax, mids, codes, n, nblocks, BS=blocksize, G=g, **LAUNCH
        )
    return packed.view(quant_storage).reshape(-1, 1), absmax


def dequantize_4bit_into(
    A: torch.Tensor, absmax: torch.Tensor, blocksize: int, quant_type: str, out: torch.Tensor
) -> None:
    """Decode into the contiguous ``out`` (its numel elements); arguments already checked."""
    n = out.numel()
    if n == 0:
        return
    raw = A.contiguous().view(torch.uint8)
    absmax = absmax.contiguous()
    table = decode_table(quant_type, out.device)
    with device_guard(out):
        _dequantize_4bit_kernel[(triton.cdiv(n, 2 * DEQUANT_BYTES),)](
            raw, absmax, table, store_view(out), n, BS=blocksize, BYTES=DEQUANT_BYTES, OUT=OUT_KIND[out.dtype], **LAUNCH
        )


def dequantize_4bit(
    A: torch.Tensor, absmax: torch.Tensor, blocksize: int, quant_type: str, shape: Sequence[int], dtype: torch.dtype
) -> torch.Tensor:
    """4-bit dequantization into a new tensor of ``shape`` and ``dtype``."""
    C.check_dequantize_4bit(A, absmax, blocksize, quant_type, shape, dtype)
    out = torch.empty(list(shape), dtype=dtype, device=A.device)
    dequantize_4bit_into(A, absmax, blocksize, quant_type, out)
    return out


def dequantize_4bit_out(
    A: torch.Tensor,
    absmax: torch.Tensor,
    blocksize: int,
    quant_type: str,
    shape: Sequence[int],
    dtype: torch.dtype,
    out: torch.Tensor,
) -> None:
    """4-bit dequantization into ``out`` (a strided ``out``, or one sharing memory with an input, gets
    a fresh result copied in)."""
    C.check_dequantize_4bit(A, absmax, blocksize, quant_type, shape, dtype)
    C.check_out(out, shape, dtype)
    C.check_same_device({"A": A, "out": out})
    if out.is_contiguous() and not C.may_overlap_any(out, A, absmax):
        dequantize_4bit_into(A, absmax, blocksize, quant_type, out)
    else:
        out.copy_(dequantize_4bit(A, absmax, blocksize, quant_type, shape, dtype))


def quantize_blockwise(A: torch.Tensor, code: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-wise 8-bit quantization against any sorted 256-entry code book."""
    C.check_quantize_blockwise(A, code, blocksize)
    A = A.contiguous()
    n = A.numel()
    nblocks = C.num_blocks(n, blocksize)
    out = torch.empty(A.shape, dtype=torch.uint8, device=A.device)
    absmax = torch.empty(nblocks, dtype=torch.float32, device=A.device)
    mids = midpoints(code.to(torch.float32)).contiguous()
    bs = C.block_width(n, blocksize)  # the kernel loops over a block
    width = next_pow2(bs)
    single = width <= TILE
    cw = width if single else TILE
    g = max(1, TILE // width) if single else 1
    with device_guard(A):
        _quantize_blockwise_kernel[(triton.cdiv(nblocks, g),)](
            A, out, absmax, mids, n, nblocks, bs, G=g, CW=cw, SINGLE=single, **LAUNCH
        )
    return out, absmax


def dequantize_blockwise_into(
    A: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, blocksize: int, out: torch.Tensor
) -> None:
    """``code[A] * absmax[block]`` into the contiguous ``out``; arguments already checked."""
    n = A.numel()
    if n == 0:
        return
    A, absmax, code = A.contiguous(), absmax.contiguous(), code.contiguous()
    with device_guard(out):
        _dequantize_blockwise_kernel[(triton.cdiv(n, 2 * DEQUANT_BYTES),)](
            A, absmax, code, store_view(out), n, C.block_width(n, blocksize),
            BLOCK=2 * DEQUANT_BYTES, OUT=OUT_KIND[out.dtype], **LAUNCH,
        )  # fmt: skip


def dequantize_blockwise(
    A: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, blocksize: int, dtype: torch.dtype
) -> torch.Tensor:
    """Block-wise 8-bit dequantization into a new tensor shaped like ``A``."""
    C.check_dequantize_blockwise(A, absmax, code, blocksize, dtype)
    out = torch.empty(A.shape, dtype=dtype, device=A.device)
    dequantize_blockwise_into(A, absmax, code, blocksize, out)
    return out


def dequantize_blockwise_out(
    A: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, blocksize: int, dtype: torch.dtype, out: torch.Tensor
) -> None:
    """Block-wise 8-bit dequantization into ``out`` (a strided ``out``, or one sharing memory with an
    input, gets a fresh result copied in)."""
    C.check_dequantize_blockwise(A, absmax, code, blocksize, dtype)
    C.check_out(out, A.shape, dtype)
    C.check_same_device({"A": A, "out": out})
    if out.is_contiguous() and not C.may_overlap_any(out, A, absmax, code):
        dequantize_blockwise_into(A, absmax, code, blocksize, out)
    else:
        out.copy_(dequantize_blockwise(A, absmax, code, blocksize, dtype))
