"""The quantizers of every CPU instruction set against the scalar kernel, bit for bit, on inputs
with NaN, ±inf, all-zero blocks and a partial last block (the vector searches fold NaN into their
compares and group blocks, which the smooth inputs of the conformance suite would not exercise)."""

from __future__ import annotations

import pytest
import torch

import bitsandbytes.functional as F

bitsandbytes_cpu = pytest.importorskip("bitsandbytes_cpu")

VECTOR_ISAS = [i for i in bitsandbytes_cpu.build_info().get("isa_usable", []) if i != "scalar"]


def _special(n: int, dtype: torch.dtype, zero_block: int) -> torch.Tensor:
    x = torch.randn(n, generator=torch.Generator().manual_seed(n)).to(dtype)
    x[3], x[100], x[200] = float("nan"), float("inf"), -float("inf")
    x[zero_block : zero_block + 4096] = 0.0
    return x


def _on(isa: str, fn):
    bitsandbytes_cpu.set_isa(isa)
    try:
        return [t.view(torch.uint8).clone() for t in fn()]
    finally:
        bitsandbytes_cpu.set_isa("auto")


@pytest.mark.skipif(not VECTOR_ISAS, reason="only the scalar kernels are usable on this CPU")
@pytest.mark.parametrize("isa", VECTOR_ISAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("blocksize", [32, 64, 256, 4096])
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_quantize_4bit_matches_scalar(isa, dtype, blocksize, quant_type) -> None:
    x = _special(4096 * 5 + 50, dtype, 8192)
    fn = lambda: torch.ops.bitsandbytes.quantize_4bit(x, blocksize, quant_type, torch.uint8)  # noqa: E731
    assert all(torch.equal(a, b) for a, b in zip(_on("scalar", fn), _on(isa, fn)))


@pytest.mark.skipif(not VECTOR_ISAS, reason="only the scalar kernels are usable on this CPU")
@pytest.mark.parametrize("isa", VECTOR_ISAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("blocksize", [64, 256, 4096])
@pytest.mark.parametrize("signed", [True, False])
def test_blockwise_8bit_matches_scalar(isa, dtype, blocksize, signed) -> None:
    x = _special(4096 * 5 + 50, dtype, 8192)
    code = F.create_dynamic_map(signed=signed)
    quant = lambda: torch.ops.bitsandbytes.quantize_blockwise(x, code, blocksize)  # noqa: E731
    q, a = torch.ops.bitsandbytes.quantize_blockwise(x, code, blocksize)
    deq = lambda: (torch.ops.bitsandbytes.dequantize_blockwise(q, a, code, blocksize, dtype),)  # noqa: E731
    assert all(torch.equal(s, v) for s, v in zip(_on("scalar", quant), _on(isa, quant)))
    assert all(torch.equal(s, v) for s, v in zip(_on("scalar", deq), _on(isa, deq)))
