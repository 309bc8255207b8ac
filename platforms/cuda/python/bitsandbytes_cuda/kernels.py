"""Python glue: validate arguments, allocate outputs, call the native CUDA kernels.

Every kernel runs on the caller's current stream of the tensors' device
(``torch.cuda.current_stream(device).cuda_stream``); the native library makes that device
current around the launch. Validation uses the op interface's shared checks
(``bitsandbytes._checks``), so every platform raises the same errors before native code runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from bitsandbytes import _checks as C
from bitsandbytes.backends.reference.fourbit import decode_nested_absmax

from . import _C, paged

DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
QUANT_CODE = {"fp4": 0, "nf4": 1}
OPTIMIZER_IDS = {"momentum": 0, "rmsprop": 1, "adagrad": 2, "adam": 3, "lion": 4, "ademamix": 5, "lamb": 6, "lars": 7}
"""C ABI ids (``bnb_optimizer``); lamb/lars share adam/momentum's math, their clip is max_unorm."""

# Decode tables of the 4-bit types (FP4 code 8 decodes to -0.0), per device.
_NF4 = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)  # fmt: skip
_FP4 = (
    0.0, 0.0625 / 12, 8 / 12, 12 / 12, 4 / 12, 6 / 12, 2 / 12, 3 / 12,
    -0.0, -0.0625 / 12, -8 / 12, -12 / 12, -4 / 12, -6 / 12, -2 / 12, -3 / 12,
)  # fmt: skip
_TABLES: dict[tuple[str, torch.device], torch.Tensor] = {}


def _decode_table(quant_type: str, device: torch.device) -> torch.Tensor:
    key = (quant_type, device)
    table = _TABLES.get(key)
    if table is None:
        values = _NF4 if quant_type == "nf4" else _FP4
        table = _TABLES[key] = torch.tensor(values, dtype=torch.float32, device=device)
    return table


def _stream(t: torch.Tensor) -> int:
    return torch.cuda.current_stream(t.device).cuda_stream


_DEVICE_TYPE = "cuda"
"""The device type every tensor must have (a ROCm torch calls its GPUs ``cuda`` too)."""


def _on_cuda(**tensors: torch.Tensor | None) -> torch.device:
    """Check that every given tensor is on one CUDA device, or in paged memory (a paged optimizer's
    states), and return the device.

    A negated view (``tensor.is_neg()``, e.g. ``z.conj().imag``) is refused too: its memory holds
    the values before negation, which a kernel reading ``data_ptr()`` would take as they are (a
    silent sign error), and ``.contiguous()`` keeps the bit when the view is already dense.
    """
    device = None
    for name, t in tensors.items():
        if t is None or (t.device.type == "cpu" and getattr(t, "is_paged", False) and paged.holds(t)):
            continue  # paged (managed) memory: the kernels address it from any GPU
        C.check(
            t.device.type == _DEVICE_TYPE,
            f"bitsandbytes_cuda: {name} must be on a CUDA device, got {t.device}",
            RuntimeError,
        )
        if device is None:
            device = t.device
        C.check(
            t.device == device,
            f"bitsandbytes_cuda: all tensors must be on one device, {name} is on {t.device}, not {device}",
            RuntimeError,
        )
        C.check(
            not t.is_neg(),
            f"bitsandbytes_cuda: {name} is a negated view (is_neg()); pass {name}.resolve_neg()",
        )
    C.check(
        device is not None,
        f"bitsandbytes_cuda: none of {', '.join(n for n, t in tensors.items() if t is not None) or 'the arguments'} "
        "is on a CUDA device (paged memory alone does not say which GPU runs the kernel)",
        RuntimeError,
    )
    return device


def _check_has_dim(A: torch.Tensor, name: str = "A") -> None:
    """``A`` has a last dimension (a 0-d tensor would fail later as an IndexError naming nothing)."""
    C.check(A.dim() >= 1, f"bitsandbytes: {name} must have at least one dimension, got a 0-d tensor")


def _bytes(t: torch.Tensor) -> torch.Tensor:
    """A packed tensor's bytes, contiguous and flat (a 0-d f32 tensor holds 4 of them too)."""
    t = t.contiguous()
    return t if t.dtype == torch.uint8 else t.reshape(-1).view(torch.uint8)


def _ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


# ---- 4-bit ----------------------------------------------------------------------------------


def quantize_4bit(
    A: torch.Tensor, blocksize: int, quant_type: str, quant_storage: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """4-bit quantization (NF4/FP4) of an f32/f16/bf16 tensor."""
    C.check_quantize_4bit(A, blocksize, quant_type, quant_storage)
    device = _on_cuda(A=A)
    A = A.contiguous()
    n = A.numel()
    packed = torch.empty((n + 1) // 2, dtype=torch.uint8, device=device)
    absmax = torch.empty(C.num_blocks(n, blocksize), dtype=torch.float32, device=device)
    if n:
        _C.quantize_4bit(
            A.data_ptr(), DTYPE_CODE[A.dtype], n, blocksize, QUANT_CODE[quant_type], packed.data_ptr(),
            absmax.data_ptr(), _stream(A),
        )  # fmt: skip
    return packed.view(quant_storage).reshape(-1, 1), absmax


def _dequantize_4bit_into(
    A: torch.Tensor, absmax: torch.Tensor, blocksize: int, quant_type: str, out: torch.Tensor
) -> None:
    n = out.numel()
    if n == 0:
        return
    raw = _bytes(A)
    absmax = absmax.contiguous()
    _C.dequantize_4bit(
        raw.data_ptr(), absmax.data_ptr(), n, blocksize, QUANT_CODE[quant_type], out.data_ptr(),
        DTYPE_CODE[out.dtype], _stream(out),
    )  # fmt: skip


def dequantize_4bit(
    A: torch.Tensor, absmax: torch.Tensor, blocksize: int, quant_type: str, shape: Sequence[int], dtype: torch.dtype
) -> torch.Tensor:
    """4-bit dequantization into a new tensor of ``shape`` and ``dtype``."""
    C.check_dequantize_4bit(A, absmax, blocksize, quant_type, shape, dtype)
    device = _on_cuda(A=A, absmax=absmax)
    out = torch.empty(list(shape), dtype=dtype, device=device)
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
    """4-bit dequantization into ``out``."""
    C.check_dequantize_4bit(A, absmax, blocksize, quant_type, shape, dtype)
    C.check_out(out, shape, dtype)
    _on_cuda(A=A, absmax=absmax, out=out)
    if out.is_contiguous() and not C.may_overlap_any(out, A, absmax):
        _dequantize_4bit_into(A, absmax, blocksize, quant_type, out)
    else:
        out.copy_(dequantize_4bit(A, absmax, blocksize, quant_type, shape, dtype))


def _gemm_4bit_native(
    A: torch.Tensor,
    B: torch.Tensor,
    shapeB: Sequence[int],
    absmax: torch.Tensor,
    code: torch.Tensor,
    blocksize: int,
    bias: torch.Tensor | None,
    device: torch.device,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The fused kernel; every argument checked, every tensor on ``device`` (the callers' _on_cuda)."""
    N, K = int(shapeB[0]), int(shapeB[1])
    shape = (*A.shape[:-1], N)
    # An out sharing memory with an input would be written while the kernel still reads it.
    direct = out is not None and out.is_contiguous() and not C.may_overlap_any(out, A, B, absmax, code, bias)
    result = out if direct else torch.empty(shape, dtype=A.dtype, device=device)
    m = math.prod(A.shape[:-1])  # rows, also where K = 0 (an empty sum: the bias)
    if m == 0 or N == 0:
        return result
    if K == 0:
        result.zero_()
        if bias is not None:
            result += bias
        if out is not None and result is not out:
            out.copy_(result)
        return result
    A = A.contiguous()
    raw = _bytes(B)
    absmax = absmax.contiguous().float()
    code = code.contiguous().float()
    bias = bias.contiguous() if bias is not None else None
    _C.gemm_4bit(
        A.data_ptr(), DTYPE_CODE[A.dtype], m, N, K, raw.data_ptr(), absmax.data_ptr(), code.data_ptr(), blocksize,
        _ptr(bias), result.data_ptr(), _stream(A),
    )  # fmt: skip
    if out is not None and result is not out:
        out.copy_(result)
    return result


def gemv_4bit(
    A: torch.Tensor, B: torch.Tensor, shapeB: Sequence[int], absmax: torch.Tensor, code: torch.Tensor, blocksize: int
) -> torch.Tensor:
    """``A @ dequant(B).T`` read straight from the packed weights (batch 1 and small batches)."""
    _check_has_dim(A)
    C.check_gemv_4bit(A, B, shapeB, absmax, code, blocksize)
    _on_cuda(A=A, B=B, absmax=absmax, code=code)
    if blocksize not in C.FOUR_BIT_BLOCKSIZES:  # the kernel takes the 4-bit block sizes only
        from bitsandbytes.backends.reference.fourbit import gemv_4bit as reference_gemv_4bit

        return reference_gemv_4bit(A, B, shapeB, absmax, code, blocksize)
    return _gemm_4bit_native(A, B, shapeB, absmax, code, blocksize, None, A.device)


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
    _check_has_dim(A)
    C.check_gemv_4bit(A, B, shapeB, absmax, code, blocksize)
    shape = (*A.shape[:-1], shapeB[0])
    C.check_out(out, shape, A.dtype)
    _on_cuda(A=A, B=B, absmax=absmax, code=code, out=out)  # before either path: out's device too
    if blocksize not in C.FOUR_BIT_BLOCKSIZES:
        out.copy_(gemv_4bit(A, B, shapeB, absmax, code, blocksize))
        return
    _gemm_4bit_native(A, B, shapeB, absmax, code, blocksize, None, A.device, out=out)


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
    """``A @ dequant(B).T + bias`` with an optionally nested absmax, without dequantizing B."""
    _check_has_dim(A)
    C.check(len(shapeB) == 2, f"bitsandbytes: shapeB must have 2 dimensions, got {list(shapeB)}")
    C.check(
        A.shape[-1] == shapeB[1],
        f"bitsandbytes: A's last dimension ({A.shape[-1]}) must equal shapeB[1] ({shapeB[1]})",
    )
    C.check_dtype(A, "A", C.FLOAT_DTYPES)
    C.check_dtype(B, "B", (torch.uint8, torch.bfloat16, torch.float16, torch.float32))
    C.check_dtype(absmax, "absmax", (torch.float32,))
    C.check_blocksize_4bit(blocksize)
    C.check_quant_type(quant_type)
    C.check_4bit_weight(list(shapeB), B, blocksize, absmax, absmax_8bit, absmax_code, absmax_offset)
    device = _on_cuda(A=A, B=B, absmax=absmax, absmax_8bit=absmax_8bit, bias=bias)
    if absmax_8bit is not None:
        absmax = decode_nested_absmax(absmax, absmax_8bit, absmax_code, absmax_offset, dequantize_blockwise)
    if bias is not None:
        C.check(
            bias.dim() == 1 and bias.shape[0] == shapeB[0],
            f"bitsandbytes: bias must have shape ({shapeB[0]},), got {tuple(bias.shape)}",
        )
        bias = bias.to(A.dtype)
    return _gemm_4bit_native(A, B, shapeB, absmax, _decode_table(quant_type, device), blocksize, bias, device)


# ---- block-wise 8-bit -----------------------------------------------------------------------


def quantize_blockwise(A: torch.Tensor, code: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-wise 8-bit quantization against a sorted 256-entry code book."""
    C.check_quantize_blockwise(A, code, blocksize)
    device = _on_cuda(A=A, code=code)
    A = A.contiguous()
    code = code.contiguous()
    n = A.numel()
    out = torch.empty(A.shape, dtype=torch.uint8, device=device)
    absmax = torch.empty(C.num_blocks(n, blocksize), dtype=torch.float32, device=device)
    if n:
        # A block size >= n is one block of n (block_width): the native size is an int64, and a
        # larger Python int would not convert (or would overflow the kernel's block count).
        _C.quantize_blockwise(
            A.data_ptr(), DTYPE_CODE[A.dtype], code.data_ptr(), n, C.block_width(n, blocksize), out.data_ptr(),
            absmax.data_ptr(), _stream(A),
        )  # fmt: skip
    return out, absmax


def _dequantize_blockwise_into(
    A: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, blocksize: int, out: torch.Tensor
) -> None:
    n = A.numel()
    if n == 0:
        return
    A, absmax, code = A.contiguous(), absmax.contiguous(), code.contiguous()
    _C.dequantize_blockwise(
        A.data_ptr(), code.data_ptr(), absmax.data_ptr(), n, C.block_width(n, blocksize), out.data_ptr(),
        DTYPE_CODE[out.dtype], _stream(out),
    )  # fmt: skip


def dequantize_blockwise(
    A: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, blocksize: int, dtype: torch.dtype
) -> torch.Tensor:
    """Block-wise 8-bit dequantization."""
    C.check_dequantize_blockwise(A, absmax, code, blocksize, dtype)
    device = _on_cuda(A=A, absmax=absmax, code=code)
    out = torch.empty(A.shape, dtype=dtype, device=device)
    _dequantize_blockwise_into(A, absmax, code, blocksize, out)
    return out


def dequantize_blockwise_out(
    A: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, blocksize: int, dtype: torch.dtype, out: torch.Tensor
) -> None:
    """Block-wise 8-bit dequantization into ``out``."""
    C.check_dequantize_blockwise(A, absmax, code, blocksize, dtype)
    C.check_out(out, A.shape, dtype)
    _on_cuda(A=A, absmax=absmax, code=code, out=out)
    if out.is_contiguous() and not C.may_overlap_any(out, A, absmax, code):
        _dequantize_blockwise_into(A, absmax, code, blocksize, out)
    else:
        out.copy_(dequantize_blockwise(A, absmax, code, blocksize, dtype))


# ---- LLM.int8() -----------------------------------------------------------------------------


def int8_vectorwise_quant(
    A: torch.Tensor, threshold: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Row-wise absmax int8 quantization; columns holding ``|A| >= threshold`` are outliers."""
    C.check_dtype(A, "A", C.FLOAT_DTYPES)
    C.check(A.dim() >= 1, "bitsandbytes: A must have at least one dimension")
    C.check(threshold >= 0.0, f"bitsandbytes: threshold must be >= 0, got {threshold}")
    device = _on_cuda(A=A)
    cols = A.shape[-1]
    rows = C.int8_rows(A)
    A = A.contiguous()
    out = torch.empty(A.shape, dtype=torch.int8, device=device)
    row_stats = torch.zeros(rows, dtype=torch.float32, device=device)
    flags = torch.zeros(cols, dtype=torch.uint8, device=device) if threshold > 0.0 else None
    if rows and cols:
        _C.int8_vectorwise_quant(
            A.data_ptr(), DTYPE_CODE[A.dtype], rows, cols, float(threshold), out.data_ptr(), row_stats.data_ptr(),
            _ptr(flags), _stream(A),
        )  # fmt: skip
    else:
        out.zero_()
    outlier_cols = torch.argwhere(flags).view(-1) if flags is not None else None
    return out, row_stats, outlier_cols


def _int8_matmul_into(A: torch.Tensor, B: torch.Tensor, out: torch.Tensor) -> None:
    K = A.shape[-1]
    N = B.shape[0]
    m = A.numel() // K if K else out.numel() // max(N, 1)
    if out.numel() == 0:
        return
    if K == 0:
        out.zero_()
        return
    A, B = A.contiguous(), B.contiguous()
    _C.int8_linear_matmul(A.data_ptr(), B.data_ptr(), m, N, K, out.data_ptr(), _stream(A))


def _check_int8_matmul(A: torch.Tensor, B: torch.Tensor) -> torch.device:
    _check_has_dim(A)
    C.check_dtype(A, "A", (torch.int8,))
    C.check_dtype(B, "B", (torch.int8,))
    C.check(B.dim() == 2, f"bitsandbytes: B must be 2-D [N, K], got shape {tuple(B.shape)}")
    C.check(
        A.shape[-1] == B.shape[1],
        f"bitsandbytes: A's last dimension ({A.shape[-1]}) must equal B.shape[1] ({B.shape[1]})",
    )
    return _on_cuda(A=A, B=B)


def int8_linear_matmul(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Exact ``A @ B.T`` of int8 matrices in int32 (cuBLASLt, or the built-in kernel)."""
    device = _check_int8_matmul(A, B)
    out = torch.empty((*A.shape[:-1], B.shape[0]), dtype=torch.int32, device=device)
    _int8_matmul_into(A, B, out)
    return out


def int8_linear_matmul_out(A: torch.Tensor, B: torch.Tensor, out: torch.Tensor) -> None:
    """``int8_linear_matmul`` into a preallocated int32 ``out``."""
    _check_int8_matmul(A, B)
    shape = (*A.shape[:-1], B.shape[0])
    C.check_out(out, shape, torch.int32)
    _on_cuda(A=A, B=B, out=out)
    if out.is_contiguous() and not C.may_overlap_any(out, A, B):
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
    """``A * row_stats[:, None] * col_stats[None, :] / 127**2 (+ bias)`` in ``dtype`` (default f16), fused."""
    m, n = C.check_int8_mm_dequant(A, row_stats, col_stats, dtype, bias)
    dtype = dtype or torch.float16
    device = _on_cuda(A=A, row_stats=row_stats, col_stats=col_stats, bias=bias)
    if bias is not None:
        if bias.dtype not in DTYPE_CODE:
            bias = bias.float()
        bias = bias.contiguous()
    out = torch.empty(A.shape, dtype=dtype, device=device)
    if m and n:
        A, row_stats, col_stats = A.contiguous(), row_stats.contiguous(), col_stats.contiguous()
        _C.int8_mm_dequant(
            A.data_ptr(), row_stats.data_ptr(), col_stats.data_ptr(), m, n, _ptr(bias),
            DTYPE_CODE[bias.dtype] if bias is not None else 0, out.data_ptr(), DTYPE_CODE[dtype], _stream(A),
        )  # fmt: skip
    return out


# ---- optimizers -----------------------------------------------------------------------------


def _with_contiguous_param(p: torch.Tensor, fn: Callable[[torch.Tensor], None]) -> None:
    if p.is_contiguous():
        fn(p)
    else:
        tmp = p.contiguous()
        fn(tmp)
        p.copy_(tmp)


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
    """One fused optimizer step with f32 states, in place (one kernel; two with max_unorm > 0)."""
    C.check_optimizer_common(optimizer_name, g, p, step, lr, eps)
    n = p.numel()
    two, clip = C.check_optimizer_32bit_states(optimizer_name, n, state1, state2, unorm_vec, max_unorm)
    _on_cuda(g=g, p=p, state1=state1, state2=state2 if two else None, unorm_vec=unorm_vec if clip else None)
    if not (p.is_contiguous() and g.is_contiguous()):  # the kernel gets copies: the C entry point
        # compares their pointers, so the originals' memory is checked here
        C.check_optimizer_32bit_no_alias(g, p, state1, state2 if two else None, unorm_vec if clip else None)
    if n == 0:
        if clip:
            unorm_vec.zero_()  # the norm of an empty update
        return
    h = _C.OptimizerHparams(
        beta1, beta2, beta3, alpha, eps, weight_decay, lr, gnorm_scale, max_unorm if clip else 0.0, param_norm, step,
        skip_zeros,
    )  # fmt: skip
    gc = g.contiguous()

    def run(pc: torch.Tensor) -> None:
        _C.optimizer_update_32bit(
            OPTIMIZER_IDS[optimizer_name], gc.data_ptr(), pc.data_ptr(), DTYPE_CODE[p.dtype], state1.data_ptr(),
            _ptr(state2) if two else 0, _ptr(unorm_vec) if clip else 0, n, h, _stream(pc),
        )  # fmt: skip

    _with_contiguous_param(p, run)
    if clip:
        unorm_vec.sqrt_()  # type: ignore[union-attr]  # the C ABI leaves ||u||^2, the op ||u||


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
    """One fused optimizer step with block-wise 8-bit states (blocks of 256), in place."""
    C.check_optimizer_common(optimizer_name, g, p, step, lr, eps)
    n = p.numel()
    two = C.check_optimizer_8bit_states(optimizer_name, n, state1, state2, qmap1, qmap2, absmax1, absmax2)
    if not two:
        state2 = qmap2 = absmax2 = None
    _on_cuda(g=g, p=p, state1=state1, state2=state2, qmap1=qmap1, qmap2=qmap2, absmax1=absmax1, absmax2=absmax2)
    if not (p.is_contiguous() and g.is_contiguous()):  # as in optimizer_update_32bit
        C.check_optimizer_8bit_no_alias(
            g, p, state1, state2 if two else None, qmap1, qmap2 if two else None, absmax1, absmax2 if two else None
        )
    if n == 0:
        return
    h = _C.OptimizerHparams(beta1, beta2, beta3, alpha, eps, weight_decay, lr, gnorm_scale, 0.0, 0.0, step, skip_zeros)
    gc = g.contiguous()
    q1 = qmap1.contiguous()
    q2 = qmap2.contiguous() if qmap2 is not None else None

    def run(pc: torch.Tensor) -> None:
        _C.optimizer_update_8bit_blockwise(
            OPTIMIZER_IDS[optimizer_name], gc.data_ptr(), pc.data_ptr(), DTYPE_CODE[p.dtype], state1.data_ptr(),
            _ptr(state2), q1.data_ptr(), _ptr(q2), absmax1.data_ptr(), _ptr(absmax2), n, h, _stream(pc),
        )  # fmt: skip

    _with_contiguous_param(p, run)


KERNELS: dict[str, Callable] = {
    "quantize_4bit": quantize_4bit,
    "dequantize_4bit": dequantize_4bit,
    "dequantize_4bit.out": dequantize_4bit_out,
    "gemv_4bit": gemv_4bit,
    "gemv_4bit.out": gemv_4bit_out,
    "gemm_4bit": gemm_4bit,
    "quantize_blockwise": quantize_blockwise,
    "dequantize_blockwise": dequantize_blockwise,
    "dequantize_blockwise.out": dequantize_blockwise_out,
    "int8_vectorwise_quant": int8_vectorwise_quant,
    "int8_linear_matmul": int8_linear_matmul,
    "int8_linear_matmul.out": int8_linear_matmul_out,
    "int8_mm_dequant": int8_mm_dequant,
    "optimizer_update_32bit": optimizer_update_32bit,
    "optimizer_update_8bit_blockwise": optimizer_update_8bit_blockwise,
}
"""Op name -> CUDA kernel. The composite ops (int8_scaled_mm, ...) reach these through torch.ops."""
