"""The reference backend: pure-PyTorch kernels for every op, on any device.

These kernels define what each op means. Every platform kernel is tested against them, and
they are registered for the ``default`` dispatch key, so they serve any device that has no
platform wheel loaded.
"""

from __future__ import annotations

from collections.abc import Callable

from . import blockwise, fourbit, int8, optimizers, weight_mm

KERNELS: dict[str, Callable] = {
    "quantize_4bit": fourbit.quantize_4bit,
    "dequantize_4bit": fourbit.dequantize_4bit,
    "dequantize_4bit.out": fourbit.dequantize_4bit_out,
    "gemv_4bit": fourbit.gemv_4bit,
    "gemv_4bit.out": fourbit.gemv_4bit_out,
    "gemm_4bit": fourbit.gemm_4bit,
    "quantize_blockwise": blockwise.quantize_blockwise,
    "dequantize_blockwise": blockwise.dequantize_blockwise,
    "dequantize_blockwise.out": blockwise.dequantize_blockwise_out,
    "int8_vectorwise_quant": int8.int8_vectorwise_quant,
    "int8_vectorwise_dequant": int8.int8_vectorwise_dequant,
    "int8_linear_matmul": int8.int8_linear_matmul,
    "int8_linear_matmul.out": int8.int8_linear_matmul_out,
    "int8_mm_dequant": int8.int8_mm_dequant,
    "int8_scaled_mm": int8.int8_scaled_mm,
    "int8_mixed_scaled_mm": int8.int8_mixed_scaled_mm,
    "int8_double_quant": int8.int8_double_quant,
    "optimizer_update_32bit": optimizers.optimizer_update_32bit,
    "optimizer_update_8bit_blockwise": optimizers.optimizer_update_8bit_blockwise,
    "int8_weight_mm": weight_mm.int8_weight_mm,
    "int8_weight_mm_t": weight_mm.int8_weight_mm_t,
    "gemm_4bit_t": weight_mm.gemm_4bit_t,
}
"""Op name (without namespace) -> reference kernel."""
