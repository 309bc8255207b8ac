"""Python glue: validate arguments, allocate outputs, call the native kernels.

Validation uses the op interface's shared checks (``bitsandbytes._checks``), so every platform
raises the same errors, before any native code touches memory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from bitsandbytes import _checks as C
from bitsandbytes.backends.reference.int8 import INV_127

from . import _C, amx
from ._codes import DTYPE_CODE, QUANT_CODE
from ._scratch import scratch


def _nt() -> int:
    """Threads the native kernels may use for this call: torch's intra-op setting (inside one of
    torch's own worker threads this is 1, so the library never oversubscribes)."""
    return torch.get_num_threads()


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
    if out.is_contiguous():
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
    if out.is_contiguous():
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
    if out.is_contiguous():
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
    """f32 absmax of a double-quantized state: one native block-wise dequantization (blocks of
    256) plus the offset, done once per weight and kept on ``absmax_8bit`` (4 bytes per block of
    the weight, 1/16 byte per weight at block size 64); any in-place change of the inputs (their
    version counters) or new inputs resolve it again."""
    if absmax_8bit is None:
        return absmax
    C.check(
        absmax_code is not None and absmax_offset is not None,
        "bitsandbytes: absmax_8bit needs absmax_code and absmax_offset",
    )
    try:
        key = tuple((t.data_ptr(), t._version, t.numel()) for t in (absmax_8bit, absmax, absmax_code, absmax_offset))
        hit = getattr(absmax_8bit, "_bnb_cpu_resolved_absmax", None)
        if hit is not None and hit[0] == key:
            return hit[1]
    except (RuntimeError, AttributeError):  # tensors without storage or version (tracing)
        key = None
    inner = dequantize_blockwise(absmax_8bit, absmax, absmax_code, 256, torch.float32)
    resolved = inner.add_(absmax_offset.float())
    if key is not None:
        try:
            absmax_8bit._bnb_cpu_resolved_absmax = (key, resolved)
        except (RuntimeError, AttributeError):
            pass
    return resolved


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
    if len(shapeB) != 2:
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
        and B.numel() * B.element_size() >= (n * k + 1) // 2
        and absmax.numel() >= -(n * k // -blocksize)
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
        if A.shape[-1] != shapeB[1]:
            raise ValueError(f"bitsandbytes: A's last dimension ({A.shape[-1]}) must equal shapeB[1] ({shapeB[1]})")
        C.check_dtype(A, "A", C.FLOAT_DTYPES)
        if B.dtype not in _PACKED_4BIT_DTYPES:
            C.check_dtype(B, "B", _PACKED_4BIT_DTYPES)
        eff = _resolve_nested_absmax(absmax, absmax_8bit, absmax_code, absmax_offset)
        C.check_dequantize_4bit(B, eff, blocksize, quant_type, shapeB, A.dtype)
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
        # decoding is shared by enough rows; the fused kernel serves decoding (<= 32 rows). The
        # weight is a temporary in this thread's reused buffer (see _scratch).
        # The reused buffer only where nothing can keep it: a direct call (not through torch.ops,
        # which runs below autograd) with gradients on would save it for backward.
        keep = torch.is_grad_enabled() and (A.requires_grad or (bias is not None and bias.requires_grad))
        # torch has no fast f16 GEMM on the CPU (4096x4096, 128 rows: 89 ms in f16, 28 ms in f32):
        # f16 runs in f32, the weight unrounded (the reference rounds it to f16; the difference is
        # inside the f16 tolerance), the bias rounded to f16 as the reference's.
        f16 = A.dtype == torch.float16
        W = (torch.empty if keep else scratch)(list(shapeB), dtype=torch.float32 if f16 else A.dtype)
        _dequantize_4bit_into(B, eff, blocksize, quant_type, W)
        b = None if bias is None else bias.to(A.dtype)
        if f16:
            return torch.nn.functional.linear(A.float(), W, None if b is None else b.float()).to(torch.float16)
        return torch.nn.functional.linear(A, W, b)
    out = torch.empty((*A.shape[:-1], n), dtype=A.dtype)
    if rows and n:
        _gemm_4bit_into(A, B, shapeB, eff, _decode_table(quant_type), blocksize, bias, out)
    return out


# ---- LLM.int8() -------------------------------------------------------------------------------


def int8_vectorwise_quant(
    A: torch.Tensor, threshold: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Row-wise absmax int8 quantization with outlier columns (``|A| >= threshold``)."""
    if not (A.dtype in C.FLOAT_DTYPES and A.dim() >= 1 and threshold >= 0.0 and A.is_cpu):
        C.check_dtype(A, "A", C.FLOAT_DTYPES)
        C.check(A.dim() >= 1, "bitsandbytes: A must have at least one dimension")
        if not (threshold >= 0.0):
            raise ValueError(f"bitsandbytes: threshold must be >= 0, got {threshold}")
        _on_cpu(A=A)
    A = A.contiguous()
    cols = A.shape[-1]
    rows = C.int8_rows(A)
    out = torch.empty(A.shape, dtype=torch.int8)
    filled = rows and cols  # the kernel writes every statistic and flag
    row_stats = (torch.empty if filled else torch.zeros)(rows, dtype=torch.float32)
    flags = (torch.empty if filled else torch.zeros)(cols, dtype=torch.uint8) if threshold > 0.0 else None
    flagged = 0
    if filled:
        flagged = _C.int8_vectorwise_quant(
            A.data_ptr(),
            DTYPE_CODE[A.dtype],
            rows,
            cols,
            float(threshold),
            out.data_ptr(),
            row_stats.data_ptr(),
            flags.data_ptr() if flags is not None else 0,
            _nt(),
        )
    if flags is None:
        return out, row_stats, None
    # Finding the flagged columns costs more than the quantization of a decoded token's row.
    outlier_cols = torch.argwhere(flags).view(-1) if flagged else torch.empty(0, dtype=torch.int64)
    return out, row_stats, outlier_cols


def int8_double_quant(
    A: torch.Tensor, threshold: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Row-wise and column-wise int8 quantization; outlier columns are zero in both. The column
    part is the native row quantization of the transpose (the same formula per column), with the
    outlier elements masked out of the column maxima first (their columns are zeroed after)."""
    CA, row_stats, outlier_cols = int8_vectorwise_quant(A, threshold)
    cols = A.shape[-1]
    rows2d = A.reshape(-1, cols) if A.dim() != 2 else A
    outliers = outlier_cols is not None and outlier_cols.numel() > 0
    src = rows2d.masked_fill(rows2d.float().abs() >= threshold, 0.0) if outliers else rows2d
    CAt_t, col_stats, _ = int8_vectorwise_quant(src.t().contiguous(), 0.0)
    CAt = CAt_t.t().contiguous()
    if outliers:
        CAt[:, outlier_cols] = 0
    return CA, CAt.view(A.shape), row_stats, col_stats, outlier_cols


def _check_int8_matmul(A: torch.Tensor, B: torch.Tensor) -> None:
    C.check_dtype(A, "A", (torch.int8,))
    C.check_dtype(B, "B", (torch.int8,))
    if B.dim() != 2:
        raise ValueError(f"bitsandbytes: B must be 2-D [N, K], got shape {tuple(B.shape)}")
    if A.shape[-1] != B.shape[1]:
        raise ValueError(f"bitsandbytes: A's last dimension ({A.shape[-1]}) must equal B.shape[1] ({B.shape[1]})")
    _on_cpu(A=A, B=B)


def _int8_matmul_into(A: torch.Tensor, B: torch.Tensor, out: torch.Tensor) -> None:
    A, B = A.contiguous(), B.contiguous()
    k = B.shape[1]
    rows = A.numel() // k if k else out.numel() // max(B.shape[0], 1)
    if k == 0:
        out.zero_()
        return
    if out.numel():
        _C.int8_linear_matmul(A.data_ptr(), B.data_ptr(), rows, B.shape[0], k, out.data_ptr(), _nt())


def int8_linear_matmul(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Exact ``A @ B.T`` of int8 matrices with int32 accumulation (VNNI / AVX2 kernels)."""
    _check_int8_matmul(A, B)
    out = torch.empty((*A.shape[:-1], B.shape[0]), dtype=torch.int32)
    _int8_matmul_into(A, B, out)
    return out


def int8_linear_matmul_out(A: torch.Tensor, B: torch.Tensor, out: torch.Tensor) -> None:
    """``int8_linear_matmul`` into a preallocated int32 ``out``."""
    _check_int8_matmul(A, B)
    shape = (*A.shape[:-1], B.shape[0])
    C.check_out(out, shape, torch.int32)
    _on_cpu(out=out)
    if out.is_contiguous():
        _int8_matmul_into(A, B, out)
    else:
        out.copy_(int8_linear_matmul(A, B))


def int8_mm_dequant(
    A: torch.Tensor,
    row_stats: torch.Tensor,
    col_stats: torch.Tensor,
    dtype: torch.dtype | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``A * row_stats[:, None] * col_stats[None, :] / 127**2 (+ bias)`` in ``dtype`` (default f16)."""
    rows, n = C.check_int8_mm_dequant(A, row_stats, col_stats, dtype, bias)
    if bias is not None:
        C.check_dtype(bias, "bias", C.FLOAT_DTYPES)
    dtype = dtype or torch.float16
    _on_cpu(A=A, row_stats=row_stats, col_stats=col_stats, bias=bias)
    A, row_stats, col_stats = A.contiguous(), row_stats.contiguous(), col_stats.contiguous()
    out = torch.empty(A.shape, dtype=dtype)
    if out.numel():
        _int8_mm_dequant_into(A, row_stats, col_stats, rows, n, bias, out)
    return out


def _int8_mm_dequant_into(
    A: torch.Tensor,
    row_stats: torch.Tensor,
    col_stats: torch.Tensor,
    rows: int,
    n: int,
    bias: torch.Tensor | None,
    out: torch.Tensor,
) -> None:
    """The native dequantization of int32 ``A`` (rows x n) into ``out``; A and the statistics
    contiguous, every argument checked."""
    bias_ptr, bias_code = 0, 0
    if bias is not None:
        bias = bias.contiguous()
        bias_ptr, bias_code = bias.data_ptr(), DTYPE_CODE[bias.dtype]
    _C.int8_mm_dequant(
        A.data_ptr(),
        row_stats.data_ptr(),
        col_stats.data_ptr(),
        rows,
        n,
        bias_ptr,
        bias_code,
        out.data_ptr(),
        DTYPE_CODE[out.dtype],
        _nt(),
    )


_INT8_CODE: list[torch.Tensor] = []


def int8_vectorwise_dequant(A: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
    """``A * stats[row] / 127`` as f32: the native block-wise dequantization with one block per row
    and the code book of the int8 values (``float(a) * stats[row]``, one rounding), then one
    in-place scaling by 1/127: the reference's two roundings, bit for bit, in two passes over a
    single output instead of its three passes and two outputs."""
    rows, cols = C.check_int8_vectorwise_dequant(A, stats)
    _on_cpu(A=A, stats=stats)
    out = torch.empty(A.shape, dtype=torch.float32)
    if out.numel():
        if not _INT8_CODE:
            _INT8_CODE.append(torch.arange(256, dtype=torch.uint8).view(torch.int8).float())
        _dequantize_blockwise_into(A.contiguous().view(torch.uint8), stats.float(), _INT8_CODE[0], cols, out)
        out.mul_(INV_127)
    return out


def int8_scaled_mm(
    A: torch.Tensor,
    B: torch.Tensor,
    row_stats: torch.Tensor,
    col_stats: torch.Tensor,
    bias: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """int8 GEMM and fused dequantization (+ bias), native end to end."""
    if not _int8_scaled_mm_args_ok(A, B, row_stats, col_stats, bias, dtype):
        return int8_mm_dequant(int8_linear_matmul(A, B), row_stats, col_stats, dtype=dtype or torch.float16, bias=bias)
    # Every check of the two ops passed in one test: their natives directly (a decoding model makes
    # this call per layer and token, with cold caches in which each Python step and allocation
    # costs microseconds; bench/cpu_glue.py). A fresh int32 tensor costs less here than the
    # reused buffer of _scratch, whose slice and view are two more tensor objects.
    n, k = B.shape
    acc = torch.empty((*A.shape[:-1], n), dtype=torch.int32)
    _int8_matmul_into(A, B, acc)
    out = torch.empty(acc.shape, dtype=dtype or torch.float16)
    _int8_mm_dequant_into(acc, row_stats.contiguous(), col_stats.contiguous(), A.numel() // k, n, bias, out)
    return out


def _int8_scaled_mm_args_ok(
    A: torch.Tensor,
    B: torch.Tensor,
    row_stats: torch.Tensor,
    col_stats: torch.Tensor,
    bias: torch.Tensor | None,
    dtype: torch.dtype | None,
) -> bool:
    """Whether int8_scaled_mm's arguments pass every check of int8_linear_matmul and then
    int8_mm_dequant, with at least one row and k > 0, tested in one expression; False sends the
    call through those ops, whose checks name the fault."""
    if not (A.dtype == torch.int8 and B.dtype == torch.int8 and B.dim() == 2 and A.dim() >= 1):
        return False
    n, k = B.shape
    return (
        k > 0
        and A.shape[-1] == k
        and A.numel() >= k
        and (dtype is None or dtype in C.FLOAT_DTYPES)
        and row_stats.dtype == torch.float32
        and col_stats.dtype == torch.float32
        and row_stats.numel() == A.numel() // k
        and col_stats.numel() == n
        and A.is_cpu
        and B.is_cpu
        and row_stats.is_cpu
        and col_stats.is_cpu
        and (bias is None or (bias.is_cpu and bias.dtype in C.FLOAT_DTYPES and bias.numel() == n))
    )


def int8_mixed_scaled_mm(
    A: torch.Tensor,
    CA: torch.Tensor,
    CB: torch.Tensor,
    SCA: torch.Tensor,
    SCB: torch.Tensor,
    outlier_cols: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """LLM.int8() with outlier decomposition: native int8 GEMM + dequant, then the few outlier
    columns in A's precision (only those columns of CB are read)."""
    a = A.reshape(-1, A.shape[-1]) if A.dim() != 2 else A
    if outlier_cols is None or outlier_cols.numel() == 0:
        out = int8_scaled_mm(CA, CB, SCA, SCB, bias=bias, dtype=A.dtype)
        return out, a.new_empty(a.shape[0], 0)
    # The weight's outlier columns are copied by the int8 GEMM while it streams each weight row
    # (CB[:, cols] alone would read a cache line per row and column from memory).
    _check_int8_matmul(CA, CB)
    if not (outlier_cols.dim() == 1 and outlier_cols.dtype in (torch.int64, torch.int32)):
        raise ValueError(
            f"bitsandbytes: outlier_cols must be a 1-D int64 tensor, got {outlier_cols.dtype} {tuple(outlier_cols.shape)}"
        )
    _on_cpu(outlier_cols=outlier_cols)
    cols = outlier_cols.to(torch.int64).contiguous()
    CA, CB = CA.contiguous(), CB.contiguous()
    n, k = CB.shape
    acc = torch.empty((*CA.shape[:-1], n), dtype=torch.int32)
    cb_cols = torch.empty((n, cols.numel()), dtype=torch.int8)
    _C.int8_linear_matmul_gather(
        CA.data_ptr(),
        CB.data_ptr(),
        CA.numel() // k if k else 0,
        n,
        k,
        acc.data_ptr(),
        cols.data_ptr(),
        cols.numel(),
        cb_cols.data_ptr(),
        _nt(),
    )
    out = int8_mm_dequant(acc, SCA, SCB, dtype=A.dtype, bias=bias)
    sub_a = a[:, outlier_cols]
    sub_b = (cb_cols * SCB.view(-1, 1) * INV_127).to(A.dtype)
    out2 = out.reshape(-1, out.shape[-1]).addmm(sub_a, sub_b.t())
    return out2.view(out.shape), sub_a


# ---- Optimizers -------------------------------------------------------------------------------

OPTIMIZER_CODE = {"momentum": 0, "rmsprop": 1, "adagrad": 2, "adam": 3, "lion": 4, "ademamix": 5, "lamb": 6, "lars": 7}


def optimizer_update_32bit(
    optimizer_name: str,
    g: torch.Tensor,
    p: torch.Tensor,
    state1: torch.Tensor,
    state2: torch.Tensor | None,
    unorm_vec: torch.Tensor | None,
    max_unorm: float,
    param_norm: float,
    beta1: float,
    beta2: float,
    beta3: float,
    alpha: float,
    eps: float,
    weight_decay: float,
    step: int,
    lr: float,
    gnorm_scale: float,
    skip_zeros: bool = False,
) -> None:
    """One fused optimizer step with f32 states (one pass; two with max_unorm > 0)."""
    C.check_optimizer_common(optimizer_name, g, p, step, lr, eps)
    n = p.numel()
    C.check_optimizer_state(state1, "state1", 2 * n if optimizer_name == "ademamix" else n, torch.float32)
    two = optimizer_name in C.TWO_STATE_OPTIMIZERS
    if two:
        C.check_optimizer_state(state2, "state2", n, torch.float32)
    clip = max_unorm > 0.0
    if clip:
        C.check_optimizer_state(unorm_vec, "unorm_vec", 1, torch.float32)
    _on_cpu(g=g, p=p, state1=state1)
    if n == 0:
        return
    pc = p if p.is_contiguous() else p.contiguous()
    gc = g.contiguous()
    _C.optimizer_update_32bit(
        OPTIMIZER_CODE[optimizer_name],
        gc.data_ptr(),
        pc.data_ptr(),
        DTYPE_CODE[p.dtype],
        state1.data_ptr(),
        state2.data_ptr() if two else 0,
        unorm_vec.data_ptr() if clip else 0,
        n,
        beta1,
        beta2,
        beta3,
        alpha,
        eps,
        weight_decay,
        lr,
        gnorm_scale,
        max_unorm,
        float(param_norm),
        step,
        bool(skip_zeros),
        _nt(),
    )
    if clip:
        unorm_vec.sqrt_()  # the C ABI returns ||u||^2; the op interface holds ||u||
    if pc is not p:
        p.copy_(pc)


def optimizer_update_8bit_blockwise(
    optimizer_name: str,
    g: torch.Tensor,
    p: torch.Tensor,
    state1: torch.Tensor,
    state2: torch.Tensor | None,
    beta1: float,
    beta2: float,
    beta3: float,
    alpha: float,
    eps: float,
    step: int,
    lr: float,
    qmap1: torch.Tensor,
    qmap2: torch.Tensor | None,
    absmax1: torch.Tensor,
    absmax2: torch.Tensor | None,
    weight_decay: float,
    gnorm_scale: float,
    skip_zeros: bool = False,
) -> None:
    """One fused optimizer step with block-wise 8-bit states: dequantize, update and requantize
    in registers, one pass over the parameter."""
    C.check_optimizer_common(optimizer_name, g, p, step, lr, eps)
    n = p.numel()
    two = C.check_optimizer_8bit_states(optimizer_name, n, state1, state2, qmap1, qmap2, absmax1, absmax2)
    _on_cpu(g=g, p=p, state1=state1, qmap1=qmap1, absmax1=absmax1)
    if n == 0:
        return
    pc = p if p.is_contiguous() else p.contiguous()
    gc = g.contiguous()
    q1 = qmap1.contiguous()
    q2 = qmap2.contiguous() if two else None
    _C.optimizer_update_8bit_blockwise(
        OPTIMIZER_CODE[optimizer_name],
        gc.data_ptr(),
        pc.data_ptr(),
        DTYPE_CODE[p.dtype],
        state1.data_ptr(),
        state2.data_ptr() if two else 0,
        q1.data_ptr(),
        q2.data_ptr() if two else 0,
        absmax1.data_ptr(),
        absmax2.data_ptr() if two else 0,
        n,
        beta1,
        beta2,
        beta3,
        alpha,
        eps,
        weight_decay,
        lr,
        gnorm_scale,
        step,
        bool(skip_zeros),
        _nt(),
    )
    if pc is not p:
        p.copy_(pc)


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
    "int8_vectorwise_quant": int8_vectorwise_quant,
    "int8_double_quant": int8_double_quant,
    "int8_linear_matmul": int8_linear_matmul,
    "int8_linear_matmul.out": int8_linear_matmul_out,
    "int8_mm_dequant": int8_mm_dequant,
    "int8_vectorwise_dequant": int8_vectorwise_dequant,
    "int8_scaled_mm": int8_scaled_mm,
    "int8_mixed_scaled_mm": int8_mixed_scaled_mm,
    "optimizer_update_32bit": optimizer_update_32bit,
    "optimizer_update_8bit_blockwise": optimizer_update_8bit_blockwise,
}
