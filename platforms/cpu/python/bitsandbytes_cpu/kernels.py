"""Python glue: validate arguments, allocate outputs, call the native kernels.

Validation uses the op interface's shared checks (``bitsandbytes._checks``), so every platform
raises the same errors, before any native code touches memory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from bitsandbytes import _checks as C
from bitsandbytes.backends.reference.fourbit import cached_nested_absmax
from bitsandbytes.backends.reference.weight_mm import empty_product

from . import _C, amx
from ._codes import DTYPE_CODE, QUANT_CODE
from ._panels import block_step, panelled_product


def _nt() -> int:
    """Threads the native kernels may use for this call: torch's intra-op setting (inside one of
    torch's own worker threads this is 1, so the library never oversubscribes)."""
    return torch.get_num_threads()


def dense_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype in which a dense GEMM on an expanded weight runs for activations of ``dtype``.

    torch has no fast f16 GEMM on the CPU, and a fast bf16 one only where the CPU multiplies bf16
    itself (AVX512-BF16 or AMX, which the avx512 kernel table requires): elsewhere oneDNN's bf16
    fallback is slower than f32 by up to x100 for ``A @ W`` (AVX2, 8x4096 @ 4096x4096: 944 ms in
    bf16, 8.5 ms in f32). Those GEMMs run in f32 and the result is rounded to A's dtype once.
    """
    if dtype == torch.float16 or (dtype == torch.bfloat16 and _C.get_isa() != "avx512"):
        return torch.float32
    return dtype


def _on_cpu(**tensors: torch.Tensor | None) -> None:
    for name, t in tensors.items():
        if t is not None and not t.is_cpu:
            raise RuntimeError(f"bitsandbytes_cpu: {name} must be on the CPU, got {t.device}")


def quantize_4bit(
    A: torch.Tensor, blocksize: int, quant_type: str, quant_storage: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Native 4-bit quantization (NF4/FP4) of an f32/f16/bf16 tensor."""
    C.check_quantize_4bit(A, blocksize, quant_type, quant_storage)
    _on_cpu(A=A)
    A = A.contiguous()
    n = A.numel()
    packed = torch.empty((n + 1) // 2, dtype=torch.uint8)
    absmax = torch.empty(C.num_blocks(n, blocksize), dtype=torch.float32)
    if n:  # an empty tensor quantizes to empty outputs, as torch ops do
        _C.quantize_4bit(
            A.data_ptr(),
            DTYPE_CODE[A.dtype],
            n,
            blocksize,
            QUANT_CODE[quant_type],
            packed.data_ptr(),
            absmax.data_ptr(),
            _nt(),
        )
    return packed.view(quant_storage).reshape(-1, 1), absmax


def _dequantize_4bit_into(
    A: torch.Tensor, absmax: torch.Tensor, blocksize: int, quant_type: str, out: torch.Tensor
) -> None:
    n = out.numel()
    if n == 0:
        return
    raw = A.contiguous().view(torch.uint8)
    absmax = absmax.contiguous()
    _C.dequantize_4bit(
        raw.data_ptr(),
        absmax.data_ptr(),
        n,
        blocksize,
        QUANT_CODE[quant_type],
        out.data_ptr(),
        DTYPE_CODE[out.dtype],
        _nt(),
    )


def dequantize_4bit(
    A: torch.Tensor, absmax: torch.Tensor, blocksize: int, quant_type: str, shape: Sequence[int], dtype: torch.dtype
) -> torch.Tensor:
    """Native 4-bit dequantization into a new tensor of ``shape`` and ``dtype``."""
    C.check_dequantize_4bit(A, absmax, blocksize, quant_type, shape, dtype)
    _on_cpu(A=A, absmax=absmax)
    out = torch.empty(list(shape), dtype=dtype)
    _dequantize_4bit_into(A, absmax, blocksize, quant_type, out)
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
    """Native 4-bit dequantization into ``out``."""
    C.check_dequantize_4bit(A, absmax, blocksize, quant_type, shape, dtype)
    C.check_out(out, shape, dtype)
    _on_cpu(A=A, absmax=absmax, out=out)
    if out.is_contiguous() and not C.may_overlap_any(out, A, absmax):
        _dequantize_4bit_into(A, absmax, blocksize, quant_type, out)
    else:
        out.copy_(dequantize_4bit(A, absmax, blocksize, quant_type, shape, dtype))


def quantize_blockwise(A: torch.Tensor, code: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Native block-wise 8-bit quantization against a sorted 256-entry code book."""
    C.check_quantize_blockwise(A, code, blocksize)
    _on_cpu(A=A, code=code)
    A = A.contiguous()
    code = code.contiguous()
    n = A.numel()
    out = torch.empty(A.shape, dtype=torch.uint8)
    absmax = torch.empty(C.num_blocks(n, blocksize), dtype=torch.float32)
    if n:
        _C.quantize_blockwise(
            A.data_ptr(), DTYPE_CODE[A.dtype], code.data_ptr(), n, blocksize, out.data_ptr(), absmax.data_ptr(), _nt()
        )
    else:  # the library is not called: its check of the code book, as the reference makes it
        C.check_code_ascending(code)
    return out, absmax


def _dequantize_blockwise_into(
    A: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, blocksize: int, out: torch.Tensor
) -> None:
    n = A.numel()
    if n == 0:
        return
    A, absmax, code = A.contiguous(), absmax.contiguous(), code.contiguous()
    _C.dequantize_blockwise(
        A.data_ptr(), code.data_ptr(), absmax.data_ptr(), n, blocksize, out.data_ptr(), DTYPE_CODE[out.dtype], _nt()
    )


def dequantize_blockwise(
    A: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, blocksize: int, dtype: torch.dtype
) -> torch.Tensor:
    """Native block-wise 8-bit dequantization."""
    C.check_dequantize_blockwise(A, absmax, code, blocksize, dtype)
    _on_cpu(A=A, absmax=absmax, code=code)
    out = torch.empty(A.shape, dtype=dtype)
    _dequantize_blockwise_into(A, absmax, code, blocksize, out)
    return out


def dequantize_blockwise_out(
    A: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, blocksize: int, dtype: torch.dtype, out: torch.Tensor
) -> None:
    """Native block-wise 8-bit dequantization into ``out``."""
    C.check_dequantize_blockwise(A, absmax, code, blocksize, dtype)
    C.check_out(out, A.shape, dtype)
    _on_cpu(A=A, out=out)
    if out.is_contiguous() and not C.may_overlap_any(out, A, absmax, code):
        _dequantize_blockwise_into(A, absmax, code, blocksize, out)
    else:
        out.copy_(dequantize_blockwise(A, absmax, code, blocksize, dtype))


# ---- 4-bit matmul ---------------------------------------------------------------------------


def _f32(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a contiguous f32 tensor (itself when it already is one)."""
    t = t.contiguous()
    return t if t.dtype == torch.float32 else t.float()


def _rows(A: torch.Tensor) -> int:
    return A.numel() // A.shape[-1] if A.shape[-1] else 0


def _gemm_4bit_into(
    A: torch.Tensor,
    B: torch.Tensor,
    shapeB: Sequence[int],
    absmax: torch.Tensor,
    code: torch.Tensor,
    blocksize: int,
    bias: torch.Tensor | None,
    out: torch.Tensor,
) -> None:
    # Each conversion only where needed: this glue runs once per decoded token per layer.
    A = A.contiguous()
    raw = B.contiguous()
    if raw.dtype != torch.uint8:
        raw = raw.view(torch.uint8)
    absmax = _f32(absmax)
    code = _f32(code)
    bias_ptr = 0
    if bias is not None:
        if bias.dtype != A.dtype:
            bias = bias.to(A.dtype)
        bias = bias.contiguous()
        bias_ptr = bias.data_ptr()
    _C.gemm_4bit(
        A.data_ptr(),
        DTYPE_CODE[A.dtype],
        _rows(A),
        shapeB[0],
        shapeB[1],
        raw.data_ptr(),
        absmax.data_ptr(),
        code.data_ptr(),
        blocksize,
        bias_ptr,
        out.data_ptr(),
        _nt(),
    )


_PACKED_4BIT_DTYPES = (torch.uint8, torch.bfloat16, torch.float16, torch.float32)
"""Storage dtypes a packed 4-bit weight may come in (``quant_storage``)."""

FUSED_MAX_ROWS = 32
"""gemm_4bit runs the fused kernel up to this many rows of A, and dequantize + dense GEMM above."""


def gemv_4bit(
    A: torch.Tensor, B: torch.Tensor, shapeB: Sequence[int], absmax: torch.Tensor, code: torch.Tensor, blocksize: int
) -> torch.Tensor:
    """Fused 4-bit matmul: reads the packed weight directly (no dequantized temporary)."""
    C.check_gemv_4bit(A, B, shapeB, absmax, code, blocksize)
    _on_cpu(A=A, B=B)
    out = torch.empty((*A.shape[:-1], shapeB[0]), dtype=A.dtype)
    if out.numel():
        if shapeB[1] == 0:
            return out.zero_()  # an empty sum
        _gemm_4bit_into(A, B, shapeB, absmax, code, blocksize, None, out)
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
    shape = (*A.shape[:-1], shapeB[0])
    C.check_out(out, shape, A.dtype)
    C.check_gemv_4bit(A, B, shapeB, absmax, code, blocksize)
    _on_cpu(A=A, B=B, out=out)
    if shapeB[1] == 0:
        out.zero_()  # an empty sum
    elif out.is_contiguous() and not C.may_overlap_any(out, A, B, absmax, code):
        if out.numel():
            _gemm_4bit_into(A, B, shapeB, absmax, code, blocksize, None, out)
    else:
        out.copy_(gemv_4bit(A, B, shapeB, absmax, code, blocksize))


# The 16-entry decode tables (bnb/codebooks.h; FP4 code 8 decodes to -0.0).
_DECODE_VALUES = {
    "nf4": (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
            -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
            0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
            0.7229568362236023, 1.0),
    "fp4": (0.0, 0.0052083334885537624, 0.6666666865348816, 1.0, 0.3333333432674408, 0.5, 0.1666666716337204,
            0.25, -0.0, -0.0052083334885537624, -0.6666666865348816, -1.0, -0.3333333432674408, -0.5,
            -0.1666666716337204, -0.25),
}  # fmt: skip
_DECODE_TABLES: dict[str, torch.Tensor] = {}


def _decode_table(quant_type: str) -> torch.Tensor:
    table = _DECODE_TABLES.get(quant_type)
    if table is None:
        table = _DECODE_TABLES[quant_type] = torch.tensor(_DECODE_VALUES[quant_type], dtype=torch.float32)
    return table


def _resolve_nested_absmax(absmax, absmax_8bit, absmax_code, absmax_offset) -> torch.Tensor:
    """f32 absmax of a double-quantized state: one native block-wise dequantization plus the
    offset, done once per weight and kept on ``absmax_8bit`` (``cached_nested_absmax``)."""
    return cached_nested_absmax(
        absmax, absmax_8bit, absmax_code, absmax_offset, dequantize_blockwise, "_bnb_cpu_resolved_absmax"
    )


def _gemm_4bit_args_ok(
    A: torch.Tensor,
    B: torch.Tensor,
    shapeB: Sequence[int],
    absmax: torch.Tensor,
    blocksize: int,
    quant_type: str,
    bias: torch.Tensor | None,
) -> bool:
    """Whether gemm_4bit's arguments (absmax not nested) pass every check of its detailed path,
    tested in one expression; False sends the call through those checks, which name the fault."""
    if len(shapeB) != 2 or not A.dim():
        return False
    n, k = shapeB
    return (
        n >= 0
        and k >= 0
        and A.shape[-1] == k
        and A.dtype in C.FLOAT_DTYPES
        and B.dtype in _PACKED_4BIT_DTYPES
        and absmax.dtype == torch.float32
        and blocksize in C.FOUR_BIT_BLOCKSIZES
        and quant_type in C.QUANT_TYPES
        and A.is_cpu
        and B.is_cpu
        and absmax.is_cpu
        and B.numel() * B.element_size() == (n * k + 1) // 2
        and absmax.numel() == -(n * k // -blocksize)
        and (bias is None or (bias.is_cpu and bias.dim() == 1 and bias.shape[0] == n))
    )


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
    """``A @ dequant(B).T + bias`` fused (batch 1 and small batches read the packed weight once)."""
    # Every check below in one test first: a decoding model makes this call per layer and token,
    # with caches that the previous layer's weights have just evicted, where every Python step
    # costs microseconds (bench/cpu_glue.py). A failed test runs the checks, which name the fault.
    eff = absmax
    if absmax_8bit is not None or not _gemm_4bit_args_ok(A, B, shapeB, absmax, blocksize, quant_type, bias):
        if len(shapeB) != 2:
            raise ValueError(f"bitsandbytes: shapeB must have 2 dimensions, got {list(shapeB)}")
        C.check_has_dim(A, "A")
        if A.shape[-1] != shapeB[1]:
            raise ValueError(f"bitsandbytes: A's last dimension ({A.shape[-1]}) must equal shapeB[1] ({shapeB[1]})")
        C.check_dtype(A, "A", C.FLOAT_DTYPES)
        if B.dtype not in _PACKED_4BIT_DTYPES:
            C.check_dtype(B, "B", _PACKED_4BIT_DTYPES)
        eff = _resolve_nested_absmax(absmax, absmax_8bit, absmax_code, absmax_offset)
        scales = "absmax" if absmax_8bit is None else "absmax_8bit"
        C.check_dequantize_4bit(B, eff, blocksize, quant_type, shapeB, A.dtype, "B", "shapeB", scales)
        if bias is not None:
            if not (bias.dim() == 1 and bias.shape[0] == shapeB[0]):
                raise ValueError(f"bitsandbytes: bias must have shape ({shapeB[0]},), got {tuple(bias.shape)}")
        _on_cpu(A=A, B=B, absmax=eff, bias=bias)
    n, k = shapeB
    rows = _rows(A)
    # amx.eligible needs MIN_ROWS rows: testing that first spares a decoding call the function call.
    if rows >= amx.MIN_ROWS["gemm_4bit"] and amx.eligible("gemm_4bit", A, rows, k, blocksize):
        out = amx.weight_matmul(
            A.reshape(-1, k),
            n,
            k,
            B=B.contiguous().view(torch.uint8),
            absmax=_f32(eff),
            quant_type=quant_type,
            blocksize=blocksize,
            bias=None if bias is None else bias.to(A.dtype),
            nthreads=_nt(),
        )
        return out.view(*A.shape[:-1], n)
    if rows > FUSED_MAX_ROWS:
        # Prefill-sized inputs: the dense GEMM on the dequantized weight wins once the weight's
        # decoding is shared by enough rows; the fused kernel serves decoding (<= 32 rows).
        # Where torch has no fast GEMM in A's dtype (dense_dtype) it runs in f32, the weight
        # unrounded (the reference rounds it to A's dtype; the difference is inside A's
        # tolerance), the bias rounded to A's dtype as the reference's.
        dt = dense_dtype(A.dtype)
        b = None if bias is None else bias.to(A.dtype).to(dt)
        # A direct call (not through torch.ops, which runs below autograd) with gradients on
        # multiplies the whole weight, which autograd saves for backward; otherwise the weight is
        # dequantized panel by panel into this thread's reused buffer (see _panels).
        if torch.is_grad_enabled() and (A.requires_grad or (bias is not None and bias.requires_grad)):
            W = torch.empty(list(shapeB), dtype=dt)
            _dequantize_4bit_into(B, eff, blocksize, quant_type, W)
            return torch.nn.functional.linear(A.to(dt), W, b).to(A.dtype)
        raw = B.contiguous().view(torch.uint8)
        absmax = _f32(eff)

        def expand(r0: int, r1: int, panel: torch.Tensor) -> None:
            _C.dequantize_4bit(
                raw.data_ptr() + r0 * k // 2,
                absmax.data_ptr() + r0 * k // blocksize * 4,
                (r1 - r0) * k,
                blocksize,
                QUANT_CODE[quant_type],
                panel.data_ptr(),
                DTYPE_CODE[dt],
                _nt(),
            )

        A2 = A.reshape(-1, k).to(dt)
        out = panelled_product(A2, n, expand, bias=b, step=block_step(k, blocksize))
        return out.to(A.dtype).view(*A.shape[:-1], n)
    if rows and n:
        out = torch.empty((*A.shape[:-1], n), dtype=A.dtype)
        _gemm_4bit_into(A, B, shapeB, eff, _decode_table(quant_type), blocksize, bias, out)
        return out
    return empty_product(A, n, bias)  # no rows, no columns or k = 0 (for which rows is 0 too)


KERNELS: dict[str, Callable] = {
    "quantize_4bit": quantize_4bit,
    "dequantize_4bit": dequantize_4bit,
    "dequantize_4bit.out": dequantize_4bit_out,
    "quantize_blockwise": quantize_blockwise,
    "dequantize_blockwise": dequantize_blockwise,
    "dequantize_blockwise.out": dequantize_blockwise_out,
    "gemv_4bit": gemv_4bit,
    "gemv_4bit.out": gemv_4bit_out,
    "gemm_4bit": gemm_4bit,
}
"""The ops of this module; ``kernels_int8`` and ``kernels_optim`` hold the LLM.int8() and optimizer
ops, and ``register()`` binds all of them."""
