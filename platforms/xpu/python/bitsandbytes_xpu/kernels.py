"""Op name -> XPU kernel (Triton kernels behind thin glue): what ``register()`` binds for the
``xpu`` device and what ``host_kernels()`` hands to the conformance suite.

Importing this module imports Triton (and, with ``TRITON_INTERPRET=1``, makes every kernel run
in Triton's CPU interpreter); the package's ``__init__`` imports it only from ``register()`` and
``host_kernels()``.
"""

from __future__ import annotations

from collections.abc import Callable

from . import int8, matmul4, optim, quant

KERNELS: dict[str, Callable] = {
    "quantize_4bit": quant.quantize_4bit,
    "dequantize_4bit": quant.dequantize_4bit,
    "dequantize_4bit.out": quant.dequantize_4bit_out,
    "quantize_blockwise": quant.quantize_blockwise,
    "dequantize_blockwise": quant.dequantize_blockwise,
    "dequantize_blockwise.out": quant.dequantize_blockwise_out,
    "gemv_4bit": matmul4.gemv_4bit,
    "gemv_4bit.out": matmul4.gemv_4bit_out,
    "gemm_4bit": matmul4.gemm_4bit,
    "int8_vectorwise_quant": int8.int8_vectorwise_quant,
    "int8_vectorwise_dequant": int8.int8_vectorwise_dequant,
    "int8_double_quant": int8.int8_double_quant,
    "int8_linear_matmul": int8.int8_linear_matmul,
    "int8_linear_matmul.out": int8.int8_linear_matmul_out,
    "int8_mm_dequant": int8.int8_mm_dequant,
    "int8_scaled_mm": int8.int8_scaled_mm,
    "int8_mixed_scaled_mm": int8.int8_mixed_scaled_mm,
    "optimizer_update_32bit": optim.optimizer_update_32bit,
    "optimizer_update_8bit_blockwise": optim.optimizer_update_8bit_blockwise,
}
