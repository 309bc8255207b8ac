"""Python glue: validate arguments, allocate outputs, call the native kernels.

Validation uses the op interface's shared checks (``bitsandbytes._checks``), so every platform
raises the same errors, before any native code touches memory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from bitsandbytes import _checks as C

from . import _C

DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
QUANT_CODE = {"fp4": 0, "nf4": 1}


def _on_cpu(**tensors: torch.Tensor) -> None:
    for name, t in tensors.items():
        C.check(t.device.type == "cpu", f"bitsandbytes_cpu: {name} must be on the CPU, got {t.device}", RuntimeError)


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
    _C.quantize_4bit(
        A.data_ptr(), DTYPE_CODE[A.dtype], n, blocksize, QUANT_CODE[quant_type], packed.data_ptr(), absmax.data_ptr()
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
        raw.data_ptr(), absmax.data_ptr(), n, blocksize, QUANT_CODE[quant_type], out.data_ptr(), DTYPE_CODE[out.dtype]
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
    C.check(
        list(out.shape) == list(shape), f"bitsandbytes_cpu: out must have shape {list(shape)}, got {list(out.shape)}"
    )
    C.check(out.dtype == dtype, f"bitsandbytes_cpu: out must have dtype {dtype}, got {out.dtype}", TypeError)
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
    _C.quantize_blockwise(
        A.data_ptr(), DTYPE_CODE[A.dtype], code.data_ptr(), n, blocksize, out.data_ptr(), absmax.data_ptr()
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
        A.data_ptr(), code.data_ptr(), absmax.data_ptr(), n, blocksize, out.data_ptr(), DTYPE_CODE[out.dtype]
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
    C.check(out.shape == A.shape, f"bitsandbytes_cpu: out must have shape {tuple(A.shape)}, got {tuple(out.shape)}")
    C.check(out.dtype == dtype, f"bitsandbytes_cpu: out must have dtype {dtype}, got {out.dtype}", TypeError)
    _on_cpu(A=A, out=out)
    if out.is_contiguous():
        _dequantize_blockwise_into(A, absmax, code, blocksize, out)
    else:
        out.copy_(dequantize_blockwise(A, absmax, code, blocksize, dtype))


KERNELS: dict[str, Callable] = {
    "quantize_4bit": quantize_4bit,
    "dequantize_4bit": dequantize_4bit,
    "dequantize_4bit.out": dequantize_4bit_out,
    "quantize_blockwise": quantize_blockwise,
    "dequantize_blockwise": dequantize_blockwise,
    "dequantize_blockwise.out": dequantize_blockwise_out,
}
