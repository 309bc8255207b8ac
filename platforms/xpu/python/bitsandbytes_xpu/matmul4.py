"""The 4-bit matmuls: a fused ``gemv_4bit`` (decodes each packed weight once and applies it to
every row of A, batch 1 to 8 and beyond) and ``gemm_4bit`` (the fused kernel for small batches;
dequantize into a reused buffer + torch's matmul for large ones), nested absmax resolved once.

The fused kernel sums in f32 in its own order and uses the weight code * absmax unrounded (the
reference rounds the weight to A's dtype first): results agree with the reference within the
rounding of the output dtype, as the conformance tests check.

Races: a program owns BLOCK_N output columns for every row of A and walks K alone; nothing is
shared between programs (no atomics, no split-K), so the result does not depend on their order.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from bitsandbytes import _checks as C
from bitsandbytes.backends.reference.fourbit import cached_nested_absmax

from ._launch import LAUNCH, OUT_KIND, device_guard, interpreted, next_pow2, store_float, store_view
from .quant import decode_table, dequantize_4bit_into, dequantize_blockwise

FUSED_MAX_ROWS = 16
"""gemm_4bit uses the fused kernel up to this many rows of A; above, dequantize + dense matmul."""


@triton.jit
def _gemv_4bit_kernel(
    A,
    packed,
    absmax,
    table,
    bias,
    out,
    M,
    N,
    K,
    blocksize,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    EVEN_K: tl.constexpr,
    OUT: tl.constexpr,
):
    # out[m, n] = sum_k A[m, k] * code[B(n, k)] * absmax[(n*K + k) // blocksize]; weight element
    # e = n*K + k lives in byte e // 2 (high nibble when e is even).
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = cols < N
    rows = tl.arange(0, BLOCK_M)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    row_base = cols.to(tl.int64)[:, None] * K
    if EVEN_K:
        # K even: every row starts on a byte, and a byte's two elements share a block (the glue
        # takes this path for even block sizes only), so each packed byte and each absmax is
        # loaded once for its two elements.
        HALF: tl.constexpr = BLOCK_K // 2
        for k0 in range(0, K, BLOCK_K):
            ke = k0 + 2 * tl.arange(0, HALF)  # the even k of each byte
            kmask = ke < K
            wmask = nmask[:, None] & kmask[None, :]
            e = row_base + ke[None, :]
            byte = tl.load(packed + e // 2, mask=wmask, other=0).to(tl.int32)
            scale = tl.load(absmax + e // blocksize, mask=wmask, other=0.0)
            w0 = tl.where(wmask, tl.load(table + (byte >> 4)) * scale, 0.0)
            w1 = tl.where(wmask, tl.load(table + (byte & 15)) * scale, 0.0)
            for m in range(0, M):
                a0 = tl.load(A + m * K + ke, mask=kmask, other=0.0).to(tl.float32)
                a1 = tl.load(A + m * K + ke + 1, mask=kmask, other=0.0).to(tl.float32)
                part = tl.sum(w0 * a0[None, :] + w1 * a1[None, :], axis=1)
                acc = tl.where(rows[:, None] == m, acc + part[None, :], acc)
    else:
        # K odd: rows start mid-byte and blocks straddle rows; every index comes from e.
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            kmask = ks < K
            wmask = nmask[:, None] & kmask[None, :]
            e = row_base + ks[None, :]
            byte = tl.load(packed + e // 2, mask=wmask, other=0).to(tl.int32)
            nib = tl.where((e % 2) == 0, byte >> 4, byte & 15)
            w = tl.load(table + nib) * tl.load(absmax + e // blocksize, mask=wmask, other=0.0)
            w = tl.where(wmask, w, 0.0)
            for m in range(0, M):
                a = tl.load(A + m * K + ks, mask=kmask, other=0.0).to(tl.float32)
                part = tl.sum(w * a[None, :], axis=1)
                acc = tl.where(rows[:, None] == m, acc + part[None, :], acc)
    if HAS_BIAS:
        acc = acc + tl.load(bias + cols, mask=nmask, other=0.0).to(tl.float32)[None, :]
    omask = (rows[:, None] < M) & nmask[None, :]
    store_float(out + rows[:, None] * N + cols[None, :], acc, omask, OUT)


ROWS_PER_LAUNCH = 8
"""Rows of A one launch of the fused kernel serves (its accumulators stay in registers)."""


def _fused_into(
    A: torch.Tensor,
    B: torch.Tensor,
    shapeB: Sequence[int],
    absmax: torch.Tensor,
    table: torch.Tensor,
    blocksize: int,
    bias: torch.Tensor | None,
    out: torch.Tensor,
) -> None:
    """The fused kernel into the contiguous ``out`` (rows × N), ROWS_PER_LAUNCH rows per launch."""
    N, K = shapeB
    if out.numel() == 0:
        return
    if K == 0:  # an empty sum: zeros, plus the bias
        out.zero_()
        if bias is not None:
            out += bias
        return
    a = A.reshape(-1, K).contiguous()
    rows = a.shape[0]
    o = store_view(out).view(rows, N)
    raw = B.contiguous().view(torch.uint8).reshape(-1)
    absmax, table = absmax.contiguous().float(), table.contiguous().float()
    # GPU: many small programs (N/8 for large N) so that every core streams weights; the
    # interpreter runs programs one after another, so it gets few large ones.
    block_k = min(1024 if interpreted() else 512, max(16, next_pow2(K)))
    block_n = 64 if interpreted() else (8 if N >= 2048 else 16)
    bias_t = bias.contiguous() if bias is not None else absmax
    with device_guard(A):
        for r0 in range(0, rows, ROWS_PER_LAUNCH):
            m = min(ROWS_PER_LAUNCH, rows - r0)
            _gemv_4bit_kernel[(triton.cdiv(N, block_n),)](
                a[r0:], raw, absmax, table, bias_t, o[r0:], m, N, K, blocksize,
                HAS_BIAS=bias is not None, BLOCK_M=next_pow2(m), BLOCK_N=block_n, BLOCK_K=block_k, EVEN_K=K % 2 == 0 and blocksize % 2 == 0,
                OUT=OUT_KIND[out.dtype], **LAUNCH,
            )  # fmt: skip


def gemv_4bit(
    A: torch.Tensor, B: torch.Tensor, shapeB: Sequence[int], absmax: torch.Tensor, code: torch.Tensor, blocksize: int
) -> torch.Tensor:
    """Fused 4-bit matmul ``A @ dequant(B).T``: the packed weight is read once per 8 rows of A."""
    C.check_gemv_4bit(A, B, shapeB, absmax, code, blocksize)
    out = torch.empty((*A.shape[:-1], shapeB[0]), dtype=A.dtype, device=A.device)
    _fused_into(A, B, shapeB, absmax, code, blocksize, None, out)
    return out


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
    C.check_gemv_4bit(A, B, shapeB, absmax, code, blocksize)
    C.check_same_device({"A": A, "out": out})
    if out.is_contiguous() and not C.may_overlap_any(out, A, B, absmax, code):
        _fused_into(A, B, shapeB, absmax, code, blocksize, None, out)
    else:
        out.copy_(gemv_4bit(A, B, shapeB, absmax, code, blocksize))


# ---- gemm_4bit ----------------------------------------------------------------------------------


def resolve_nested_absmax(absmax, absmax_8bit, absmax_code, absmax_offset) -> torch.Tensor:
    """f32 absmax of a double-quantized state: one block-wise dequantization plus the offset,
    done once per weight and kept on ``absmax_8bit`` (``cached_nested_absmax``)."""
    return cached_nested_absmax(
        absmax, absmax_8bit, absmax_code, absmax_offset, dequantize_blockwise, "_bnb_xpu_resolved_absmax"
    )


class _Buffers(threading.local):
    """One reused dequantization buffer per thread, device and dtype (grown, never shrunk)."""

    def __init__(self) -> None:
        self.by_key: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def get(self, shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        n = C.prod(shape)
        buf = self.by_key.get((device, dtype))
        if buf is None or buf.numel() < n:
            with torch.inference_mode(False):
                buf = torch.empty(n, dtype=dtype, device=device)
            self.by_key[(device, dtype)] = buf
        return buf[:n].view(list(shape))


_BUFFERS = _Buffers()


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
    """``A @ dequant(B).T + bias``: the fused kernel up to FUSED_MAX_ROWS rows of A, above that
    the weight dequantized into a reused buffer and torch's matmul (the reference's own steps)."""
    C.check(len(shapeB) == 2, f"bitsandbytes: shapeB must have 2 dimensions, got {list(shapeB)}")
    C.check_has_dim(A, "A")
    C.check(
        A.shape[-1] == shapeB[1],
        f"bitsandbytes: A's last dimension ({A.shape[-1]}) must equal shapeB[1] ({shapeB[1]})",
    )
    C.check_dtype(A, "A", C.FLOAT_DTYPES)
    C.check_dtype(B, "B", (torch.uint8, torch.bfloat16, torch.float16, torch.float32))
    C.check_quant_type(quant_type)
    eff = resolve_nested_absmax(absmax, absmax_8bit, absmax_code, absmax_offset)
    scales = "absmax" if absmax_8bit is None else "absmax_8bit"
    C.check_dequantize_4bit(B, eff, blocksize, quant_type, list(shapeB), A.dtype, "B", "shapeB", scales)
    if bias is not None:
        C.check(
            bias.dim() == 1 and bias.shape[0] == shapeB[0],
            f"bitsandbytes: bias must have shape ({shapeB[0]},), got {tuple(bias.shape)}",
        )
    C.check_same_device({"A": A, "B": B, "absmax": eff, "bias": bias})
    rows = A.numel() // A.shape[-1] if A.shape[-1] else 0
    b = None if bias is None else bias.to(A.dtype)
    if rows > FUSED_MAX_ROWS:
        # A buffer that nothing can keep: a direct call with gradients on would save the weight
        # for backward, so it gets a tensor of its own.
        keep = torch.is_grad_enabled() and (A.requires_grad or (bias is not None and bias.requires_grad))
        W = torch.empty(list(shapeB), dtype=A.dtype, device=A.device) if keep else None
        if W is None:
            W = _BUFFERS.get(shapeB, A.dtype, A.device)
        dequantize_4bit_into(B, eff, blocksize, quant_type, W)
        return torch.nn.functional.linear(A, W, b)
    out = torch.empty((*A.shape[:-1], shapeB[0]), dtype=A.dtype, device=A.device)
    _fused_into(A, B, shapeB, eff, decode_table(quant_type, A.device), blocksize, b, out)
    return out
