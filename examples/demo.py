"""A small demo: store a layer's weight in 4 bits and in 8 bits, and compute with it.

Run after installing bitsandbytes (e.g. `nox -s demo`). Prints memory, error and timings.
"""

from __future__ import annotations

import time

import torch

import bitsandbytes

ops = torch.ops.bitsandbytes


def main() -> None:
    torch.manual_seed(0)
    out_features, in_features = 1024, 4096
    weight = torch.randn(out_features, in_features, dtype=torch.bfloat16) * 0.02
    x = torch.randn(4, in_features, dtype=torch.bfloat16)
    dense = x @ weight.t()
    dense_bytes = weight.numel() * weight.element_size()
    print(
        f"bitsandbytes {bitsandbytes.__version__}; quantize_4bit served by {bitsandbytes.implementation('quantize_4bit', 'cpu')}"
    )
    print(f"dense bf16 weight {tuple(weight.shape)}: {dense_bytes / 2**20:.2f} MiB")

    for quant_type in ("nf4", "fp4"):
        t0 = time.perf_counter()
        packed, absmax = ops.quantize_4bit(weight, 64, quant_type, torch.uint8)
        t1 = time.perf_counter()
        w4 = ops.dequantize_4bit(packed, absmax, 64, quant_type, list(weight.shape), torch.bfloat16)
        t2 = time.perf_counter()
        y = ops.gemm_4bit(x, packed, list(weight.shape), absmax, 64, quant_type)
        stored = packed.numel() + absmax.numel() * 4
        rel = ((w4.float() - weight.float()).norm() / weight.float().norm()).item()
        out_err = ((y.float() - dense.float()).norm() / dense.float().norm()).item()
        print(
            f"{quant_type}: {stored / 2**20:.2f} MiB ({stored * 8 / weight.numel():.2f} bits/weight), "
            f"weight error {rel:.3%}, output error {out_err:.3%}, "
            f"quantize {1e3 * (t1 - t0):.1f} ms, dequantize {1e3 * (t2 - t1):.1f} ms"
        )

    code = bitsandbytes.backends.reference.codebooks.dynamic_map()
    q8, absmax8 = ops.quantize_blockwise(weight, code, 256)
    w8 = ops.dequantize_blockwise(q8, absmax8, code, 256, torch.bfloat16)
    rel8 = ((w8.float() - weight.float()).norm() / weight.float().norm()).item()
    print(f"8-bit block-wise: {(q8.numel() + absmax8.numel() * 4) / 2**20:.2f} MiB, weight error {rel8:.3%}")

    # LLM.int8(): row-wise int8 weights and activations, the outlier feature kept in 16 bit.
    x_out = x.clone()
    x_out[:, 7] = 9.0
    CA, SCA, cols = ops.int8_vectorwise_quant(x_out, 6.0)
    CB, SCB, _ = ops.int8_vectorwise_quant(weight)
    y8, _ = ops.int8_mixed_scaled_mm(x_out, CA, CB, SCA, SCB, cols, None)
    ref = x_out.float() @ weight.float().t()
    err8 = ((y8.float() - ref).norm() / ref.norm()).item()
    print(f"LLM.int8() matmul with {len(cols)} outlier feature(s): output error {err8:.3%}")


if __name__ == "__main__":
    main()
